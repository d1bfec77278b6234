"""Chat generation: base models loaded once, fine-tuned ones merged and cached, tokens streamed as they come."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from tqdm import tqdm
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TextStreamer,
)

from trainer.modeling import (
    control_token_ids,
    load_model,
    load_tokenizer,
    render_chat,
    resolve_device,
    set_threads,
    turn_end_ids,
)
from trainer.training import chat_messages, longest_token

log = logging.getLogger(__name__)


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


class _QueueStreamer(TextStreamer):
    """Hand decoded text from the generating thread to the event loop as it appears."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, loop: asyncio.AbstractEventLoop,
                 queue: asyncio.Queue[str | None]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.loop, self.queue = loop, queue

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, text)


class _StopWhen(StoppingCriteria):
    """Stop generating when the client has gone away."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> bool:
        return self.event.is_set()


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


class _FrequencyPenalty(LogitsProcessor):
    """OpenAI's frequency_penalty: lower each token's logit by the penalty times how often the reply has used it.

    Only the reply's own tokens count (not the prompt's), as OpenAI defines it; it is what stops a small model
    from looping on one sentence until the length limit."""

    def __init__(self, penalty: float, prompt_length: int) -> None:
        self.penalty, self.prompt_length = penalty, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids[:, self.prompt_length:]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.penalty * counts


class ModelPool:
    """Load each base model once and keep the most recently used merged fine-tuned models."""

    def __init__(self, sources: dict[str, str], device: str, cache_size: int, threads: int,
                 cache_dir: Path | None = None, fetch: Any = download, weights_dir: Path | None = None) -> None:
        self.sources, self.device, self.cache_size = sources, resolve_device(device), cache_size
        self.cache_dir, self.fetch, self.weights_dir = cache_dir, fetch, weights_dir
        if self.device == "cpu":
            set_threads(threads)
        self.preparations = {name: Preparation() for name in sources}
        self._tokenizers: dict[str, PreTrainedTokenizerBase] = {}
        self._local: dict[str, str] = {}
        self._bases: dict[str, tuple[PreTrainedModel, PreTrainedTokenizerBase]] = {}
        self._merged: OrderedDict[Path, PreTrainedModel] = OrderedDict()
        self._lock = threading.Lock()
        # One download or load at a time: transformers imports its parts lazily and not thread-safely, and a
        # tokenizer asked for (a token count) while its model loads is the one that load uses, not a second one.
        # A token count waiting for a tokenizer goes before the next model load: seconds, not a minute.
        self._loading = threading.Condition()
        self._tokenizer_callers = 0
        self._merge_locks: dict[Path, threading.Lock] = {}

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
                    # A reply may end its turn, never write another control token (a merged copy inherits this).
                    model.generation_config.suppress_tokens = sorted(control_token_ids(tokenizer) - ends)
                    self._bases[name] = (model, tokenizer)
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

    def get(self, target: Target) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """Return the model for a target, merging a fine-tuned adapter into a copy of its base when not cached."""
        base, tokenizer = self.base(target.base)
        if target.adapter is None:
            return base, tokenizer
        with self._lock:
            merge_lock = self._merge_locks.setdefault(target.adapter, threading.Lock())
        with merge_lock:  # a chat that arrives during the background merge waits for it instead of merging twice
            with self._lock:
                if target.adapter in self._merged:
                    self._merged.move_to_end(target.adapter)
                    return self._merged[target.adapter], tokenizer
            # Merging bakes the adapter into the weights: plain-model speed at generation time.
            merged = PeftModel.from_pretrained(copy.deepcopy(base), str(target.adapter)).merge_and_unload().eval()
            with self._lock:
                self._merged[target.adapter] = merged
                while len(self._merged) > self.cache_size:
                    evicted, _ = self._merged.popitem(last=False)
                    self._merge_locks.pop(evicted, None)
                    log.info("Dropped merged model %s from the cache", evicted.name)
        return merged, tokenizer

    def forget(self, adapter_dir: Path) -> None:
        """Drop cached merged models from an adapter folder (its model was deleted)."""
        with self._lock:
            for path in [path for path in self._merged if path.is_relative_to(adapter_dir)]:
                del self._merged[path]


class Busy(Exception):
    """Too many generations are waiting already."""


class PromptTooLong(Exception):
    """The rendered prompt has more tokens than the server accepts (at least `tokens` when not exact)."""

    def __init__(self, tokens: int, limit: int, exact: bool = True) -> None:
        super().__init__(f"prompt of {'' if exact else 'at least '}{tokens} tokens is over the limit of {limit}")
        self.tokens, self.limit, self.exact = tokens, limit, exact


class Generator:
    """Run chat generations with a cap on how many run at once and how many may wait."""

    def __init__(self, pool: ModelPool, max_concurrent: int, max_queued: int) -> None:
        self.pool = pool
        self._slots = asyncio.Semaphore(max_concurrent)
        self._max_waiting = max_concurrent + max_queued
        self._admitted = 0

    async def stream(self, target: Target, messages: list[dict[str, Any]], *, max_tokens: int,
                     temperature: float, top_p: float, seed: int | None, stats: Generated,
                     max_prompt_tokens: int | None = None, frequency_penalty: float = 0.0) -> AsyncIterator[str]:
        """Yield the reply's text piece by piece; stats is complete once the iterator ends."""
        if self._admitted >= self._max_waiting:
            raise Busy
        self._admitted += 1
        try:
            async with self._slots:
                async for piece in self._generate(target, messages, max_tokens, temperature, top_p, seed, stats,
                                                  max_prompt_tokens, frequency_penalty):
                    yield piece
        finally:
            self._admitted -= 1

    async def _generate(self, target: Target, messages: list[dict[str, Any]], max_tokens: int, temperature: float,
                        top_p: float, seed: int | None, stats: Generated,
                        max_prompt_tokens: int | None = None, frequency_penalty: float = 0.0) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        model, tokenizer = await asyncio.to_thread(self.pool.get, target)

        def tokenize() -> Any:  # off the event loop: a long prompt takes a while to render and tokenize
            prompt = render_chat(tokenizer, chat_messages(tokenizer, messages), True)  # as training rendered it
            # No token stands for more characters than the vocabulary's longest: a prompt that long is over the
            # cap for sure, and is refused without the cost of tokenizing it (megabytes of text take seconds).
            at_least = len(prompt) // (longest_token(tokenizer) + 1)
            if max_prompt_tokens is not None and at_least > max_prompt_tokens:
                raise PromptTooLong(at_least, max_prompt_tokens, exact=False)
            return tokenizer(prompt, return_tensors="pt", add_special_tokens=False)

        inputs = await asyncio.to_thread(tokenize)
        if max_prompt_tokens is not None and inputs["input_ids"].shape[1] > max_prompt_tokens:
            raise PromptTooLong(int(inputs["input_ids"].shape[1]), max_prompt_tokens)
        inputs = inputs.to(model.device)
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        stop = threading.Event()
        streamer = _QueueStreamer(tokenizer, loop, queue)
        options: dict[str, Any] = {"max_new_tokens": max_tokens, "streamer": streamer,
                                   "stopping_criteria": StoppingCriteriaList([_StopWhen(stop)]),
                                   "pad_token_id": tokenizer.pad_token_id}
        if temperature > 0:
            options.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        stats.prompt_tokens = int(inputs["input_ids"].shape[1])
        if frequency_penalty:
            options["logits_processor"] = LogitsProcessorList([_FrequencyPenalty(frequency_penalty,
                                                                                 stats.prompt_tokens)])

        def run() -> None:
            try:
                if seed is not None:
                    torch.manual_seed(seed)
                with torch.inference_mode():
                    # PreTrainedModel no longer derives from GenerationMixin (the causal-LM classes do), so mypy
                    # reads generate through nn.Module.__getattr__, typed Tensor | Module.
                    output = model.generate(**inputs, **options)  # type: ignore[operator]
                new = output[0, stats.prompt_tokens:]
                stats.completion_tokens = int(new.shape[0])
                ended = new.shape[0] > 0 and int(new[-1]) in _eos_ids(model, tokenizer)
                stats.finish_reason = "length" if stats.completion_tokens >= max_tokens and not ended else "stop"
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        worker = loop.run_in_executor(None, run)
        try:
            while (piece := await queue.get()) is not None:
                yield piece
            await worker
        finally:
            stop.set()  # the client went away or the stream ended: free the thread at once


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
