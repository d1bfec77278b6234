"""Chat generation: base models loaded once, fine-tuned ones as stacked LoRA adapters, every chat of a base model
decoded in one continuously batched engine (trainer.batching), tokens streamed as they come."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trainer.batching import Engine, FrequencyPenalty, Request
from trainer.heap import keep_for_good, limit_malloc_arenas
from trainer.cpu_share import cpu_threads
from trainer.lora_stack import LoraStack, read_ahead
from trainer.packed import pack_linears
from trainer.modeling import (
    control_token_ids,
    load_model,
    load_tokenizer,
    render_chat,
    resolve_device,
    set_threads,
    turn_end_ids,
)
from trainer.training import chat_messages, forward_seconds_per_token, longest_token

log = logging.getLogger(__name__)
__all__ = ["Busy", "Generated", "Generator", "ModelPool", "PromptTooLong", "Target", "limit_malloc_arenas"]


@dataclass(frozen=True)
class Target:
    """What a model name resolves to: a base model, plus an adapter folder for fine-tuned ones."""

    base: str
    adapter: Path | None


@dataclass
class Generated:
    """Counts and the reason generation stopped, filled in when the stream ends."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"


@dataclass
class Preparation:
    """How far a base model is from answering: status preparing, ready or failed, and progress from 0 to 1."""

    status: str = "preparing"
    progress: float = 0.0
    logged: int = -1  # the last tenth logged

    def as_dict(self) -> dict[str, Any]:
        """The fields /v1/models adds to a base model."""
        return {"status": self.status, "progress": round(self.progress, 2)}


# Download shares of the progress; the rest is reading the tokenizer and the weights.
DOWNLOAD_SHARE, TOKENIZER_SHARE = 0.8, 0.9
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


class _Progress(tqdm):  # type: ignore[type-arg]  # generic only in types-tqdm: tqdm[Any] fails at runtime
    """A silent progress bar that hands each downloaded byte count to a callback."""

    callback: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Xet downloads show a second bar of network bytes beside the bytes written: count only the latter.
        name, desc = str(kwargs.pop("name", None) or ""), str(kwargs.get("desc") or "")
        self.counts = not name.endswith(".transfer") and not desc.endswith("downloading bytes")
        kwargs["file"] = io.StringIO()
        super().__init__(*args, **kwargs)

    def update(self, n: float | None = 1) -> bool | None:
        if n and self.counts and type(self).callback is not None:
            type(self).callback(int(n))
        return super().update(n)


def download(source: str, report: Any) -> str:
    """Fetch a hub model's files into the Hugging Face cache, reporting the fraction downloaded; return its folder.

    Local folders and GGUF files are returned as they are. Files already in the cache count as downloaded.
    """
    if source.endswith(".gguf") or Path(source).exists():
        return source
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        planned = snapshot_download(source, allow_patterns=HUB_FILES, dry_run=True)
    except Exception:  # offline (or the Hub is down): a model already in the cache still loads
        log.warning("Could not reach the Hugging Face Hub for %s; trying the local cache", source)
        local = snapshot_download(source, allow_patterns=HUB_FILES, local_files_only=True)
        report(1.0)
        return str(local)
    total = sum(info.file_size or 0 for info in planned if info.will_download) or 1
    done = 0

    def add(count: int) -> None:
        nonlocal done
        done += count
        report(min(1.0, done / total))

    progress = type("Progress", (_Progress,), {"callback": staticmethod(add)})
    for info in planned:
        if info.will_download:
            hf_hub_download(source, info.filename, tqdm_class=progress)
    report(1.0)
    return str(snapshot_download(source, allow_patterns=HUB_FILES, local_files_only=True))


_FrequencyPenalty = FrequencyPenalty  # its name before the batching engine moved it


class ModelPool:
    """Load each base model once, with a stack of its fine-tuned models' LoRA adapters (never merged copies)."""

    def __init__(self, sources: dict[str, str], device: str, cache_size: int, threads: int,
                 cache_dir: Path | None = None, fetch: Any = download, weights_dir: Path | None = None,
                 adapter_budget_mb: int = 1024) -> None:
        self.sources, self.device, self.cache_size = sources, resolve_device(device), cache_size
        self.cache_dir, self.fetch, self.weights_dir = cache_dir, fetch, weights_dir
        self.adapter_budget_bytes = adapter_budget_mb * 1024 * 1024
        # On a CPU the chat engines run on `threads` threads each (Engine), every other thread of the server on one:
        # loading, the first guess of training's speed and reading adapters (modeling.use_threads_here says why).
        self.threads = cpu_threads(threads) if self.device == "cpu" else 1
        self.threads_configured = bool(threads)
        if self.device == "cpu":
            set_threads(1)
        self.preparations = {name: Preparation() for name in sources}
        self._tokenizers: dict[str, PreTrainedTokenizerBase] = {}
        self._local: dict[str, str] = {}
        self._bases: dict[str, tuple[PreTrainedModel, PreTrainedTokenizerBase]] = {}
        self.stacks: dict[str, LoraStack] = {}
        self.forward_seconds: dict[str, float] = {}  # by base model, timed as it loads on a CPU (the queue's guess)
        self._lock = threading.Lock()
        # One download or load at a time: transformers imports its parts lazily and not thread-safely, and a
        # tokenizer asked for (a token count) while its model loads is the one that load uses, not a second one.
        # A token count waiting for a tokenizer goes before the next model load: seconds, not a minute.
        self._loading = threading.Condition()
        self._tokenizer_callers = 0

    def _report(self, name: str, progress: float) -> None:
        preparation = self.preparations[name]
        preparation.progress = max(preparation.progress, min(1.0, progress))
        tenth = int(preparation.progress * 10)
        if tenth > preparation.logged:  # a few INFO lines, not one per chunk
            preparation.logged = tenth
            log.info("Preparing base model %s: %d%%", name, int(preparation.progress * 100))

    def prepare_all(self) -> None:
        """Download and load every base model (at start, in the background); failures are logged.

        Every tokenizer comes first: token counts for any model are ready in seconds, before the slower weights."""
        for load in (self.tokenizer, self.base):
            for name in self.sources:
                if self.preparations[name].status == "failed":
                    continue
                try:
                    load(name)
                except Exception:  # boundary: one model that can't load must not stop the others
                    log.exception("Base model %s could not be prepared", name)

    def tokenizer(self, name: str) -> PreTrainedTokenizerBase:
        """Return a base model's tokenizer, downloading the model on first use."""
        if name not in self._tokenizers:
            with self._lock:
                self._tokenizer_callers += 1
            with self._loading:
                try:
                    with self._failing(name):
                        self._load_tokenizer(name)
                finally:
                    # Still holding the loading lock: a model load may take it the moment it is free, for a minute,
                    # and this count has its tokenizer already.
                    with self._lock:
                        self._tokenizer_callers -= 1
                    self._loading.notify_all()
        return self._tokenizers[name]

    def base(self, name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """Return a base model and its tokenizer, downloading and loading them on first use."""
        if name not in self._bases:
            with self._loading, self._failing(name):
                self._loading.wait_for(lambda: self._tokenizer_callers == 0)
                if name not in self._bases:
                    tokenizer = self._load_tokenizer(name)
                    model = load_model(self._local[name], self.device, cache_dir=self.weights_dir).eval()
                    ends = turn_end_ids(tokenizer) | _eos_ids(model, tokenizer)
                    model.generation_config.eos_token_id = sorted(ends)
                    # A reply may end its turn, never write another control token.
                    model.generation_config.suppress_tokens = sorted(control_token_ids(tokenizer) - ends)
                    pack_linears(model)  # served, never trained: its layers multiply faster packed
                    if self.device == "cpu":
                        self.forward_seconds[name] = forward_seconds_per_token(model)
                    self.stacks[name] = LoraStack(model, self.cache_size, self.adapter_budget_bytes)
                    self._bases[name] = (model, tokenizer)
                    keep_for_good()  # served until the server stops: out of the collector's full collections
                    self._report(name, 1.0)
                    self.preparations[name].status = "ready"
        return self._bases[name]

    def _load_tokenizer(self, name: str) -> PreTrainedTokenizerBase:
        """Download the model and load its tokenizer, once; the caller holds the loading lock."""
        if name not in self._tokenizers:
            self.preparations[name].status = "preparing"
            self._local[name] = self.fetch(self.sources[name], lambda f: self._report(name, f * DOWNLOAD_SHARE))
            self._report(name, DOWNLOAD_SHARE)
            self._tokenizers[name] = load_tokenizer(self._local[name], self.cache_dir)
            self._report(name, TOKENIZER_SHARE)
        return self._tokenizers[name]

    @contextlib.contextmanager
    def _failing(self, name: str) -> Iterator[None]:
        """Mark a base model failed when loading it raises (the error goes on to the caller)."""
        try:
            yield
        except Exception:
            self.preparations[name].status = "failed"
            raise

    def warm(self, target: Target) -> None:
        """Load a fine-tuned model's adapter into its base's stack ahead of its first chat."""
        self.base(target.base)
        if target.adapter is not None:
            stack = self.stacks[target.base]
            slot = stack.acquire(target.adapter)
            if slot is not None:
                stack.release(slot)

    def forget(self, adapter_dir: Path) -> None:
        """Drop the adapters from a folder (its model was deleted) from every stack."""
        for stack in list(self.stacks.values()):
            stack.forget(adapter_dir)


class Busy(Exception):
    """The batch and its waiting line are full; retry_after says in how many seconds a place is likely free."""

    def __init__(self, retry_after: int, waiting: int) -> None:
        super().__init__(f"busy: retry after {retry_after} s")
        self.retry_after, self.waiting = retry_after, waiting


class PromptTooLong(Exception):
    """The rendered prompt has more tokens than the server accepts (at least `tokens` when not exact)."""

    def __init__(self, tokens: int, limit: int, exact: bool = True) -> None:
        super().__init__(f"prompt of {'' if exact else 'at least '}{tokens} tokens is over the limit of {limit}")
        self.tokens, self.limit, self.exact = tokens, limit, exact


class Generator:
    """Chat replies, each base model's decoded together in one continuously batched engine.

    Up to max_rows replies decode in one batch; more wait in a line (max_waiting, or when None as many as the KV
    memory budget holds); beyond that the answer is Busy with an honest retry-after."""

    def __init__(self, pool: ModelPool, max_rows: int = 32, max_waiting: int | None = None, *,
                 max_tokens: int = 512, kv_budget_mb: int = 1024) -> None:
        self.pool, self.max_rows, self.max_waiting, self.max_tokens = pool, max_rows, max_waiting, max_tokens
        self.kv_budget_bytes = kv_budget_mb * 1024 * 1024
        self.engines: dict[str, Engine] = {}
        self._admitted: dict[str, int] = {}
        self._lock = threading.Lock()

    def engine(self, base: str) -> Engine:
        """The engine of a base model, made (and the model loaded) on first use."""
        model, tokenizer = self.pool.base(base)
        with self._lock:
            if base not in self.engines:
                self.engines[base] = Engine(
                    model, tokenizer, self.pool.stacks[base], max_rows=self.max_rows,
                    kv_budget_bytes=self.kv_budget_bytes, eos_ids=_eos_ids(model, tokenizer),
                    suppress_ids=list(model.generation_config.suppress_tokens or []),
                    threads=self.pool.threads, governed=not self.pool.threads_configured)
            return self.engines[base]

    def limit(self, base: str) -> int:
        """How many replies for a base model may be running or waiting at once."""
        engine = self.engines.get(base)
        waiting = self.max_waiting if self.max_waiting is not None else (
            engine.waiting_room(self.max_tokens) if engine is not None else self.max_rows)
        return self.max_rows + waiting

    async def stream(self, target: Target, messages: list[dict[str, Any]], *, max_tokens: int,
                     temperature: float, top_p: float, seed: int | None, stats: Generated,
                     max_prompt_tokens: int | None = None, frequency_penalty: float = 0.0) -> AsyncIterator[str]:
        """Yield the reply's text piece by piece; stats is complete once the iterator ends."""
        admitted = self._admitted.get(target.base, 0)
        if admitted >= self.limit(target.base):
            engine = self.engines.get(target.base)
            raise Busy(engine.retry_after() if engine is not None else 1, admitted)
        self._admitted[target.base] = admitted + 1
        try:
            # Closed with this stream, not whenever the collector gets to it: the row is freed and the counts are in
            # stats before the reply is answered (a client gone, or the reply guard ending the reply).
            async with contextlib.aclosing(self._generate(target, messages, max_tokens, temperature, top_p, seed,
                                                          stats, max_prompt_tokens, frequency_penalty)) as pieces:
                async for piece in pieces:
                    yield piece
        finally:
            self._admitted[target.base] -= 1

    async def _generate(self, target: Target, messages: list[dict[str, Any]], max_tokens: int, temperature: float,
                        top_p: float, seed: int | None, stats: Generated,
                        max_prompt_tokens: int | None = None,
                        frequency_penalty: float = 0.0) -> AsyncGenerator[str, None]:
        loop = asyncio.get_running_loop()
        engine = await asyncio.to_thread(self.engine, target.base)
        tokenizer, stack = engine.tokenizer, engine.stack

        def prepare() -> list[int]:  # off the event loop: rendering the prompt, counting its tokens
            if target.adapter is not None and target.adapter not in stack.slots:
                read_ahead(target.adapter)  # the engine's thread loads it: from memory, not the disk
            prompt = render_chat(tokenizer, chat_messages(tokenizer, messages), True)  # as training rendered it
            # No token stands for more characters than the vocabulary's longest: a prompt that long is over the
            # cap for sure, and is refused without the cost of tokenizing it (megabytes of text take seconds).
            at_least = len(prompt) // (longest_token(tokenizer) + 1)
            if max_prompt_tokens is not None and at_least > max_prompt_tokens:
                raise PromptTooLong(at_least, max_prompt_tokens, exact=False)
            ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
                raise PromptTooLong(len(ids), max_prompt_tokens)
            return ids

        ids = await asyncio.to_thread(prepare)
        stats.prompt_tokens = len(ids)
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def emit(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the event loop has closed: nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, item)

        request = Request(prompt=ids, adapter=target.adapter, max_tokens=max_tokens, temperature=temperature,
                          top_p=top_p, seed=seed, frequency_penalty=frequency_penalty, emit=emit)
        engine.submit(request)
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
            stats.finish_reason = request.finish_reason
        finally:
            engine.cancel(request)  # the client went away: its row or waiting place is freed (a no-op once done)
            # Also for a reply ended early (the reply guard, a client gone): the tokens generated for it so far.
            stats.completion_tokens = len(request.generated)


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
