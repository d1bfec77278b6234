"""Continuous batching: one thread per base model decodes every running chat together, one token per step.

Waiting requests are prefilled together (each yields its first token at once) and their KV caches join the running
batch (left padding, an attention mask and explicit position ids); finished and abandoned rows leave it. Each row
samples with its own settings and seed, and adds its own LoRA adapter (trainer.lora_stack)."""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    DynamicCache,
    LogitsProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TextStreamer,
)

from trainer.cpu_share import FIRST_WINDOW_SECONDS, WINDOW_SECONDS, ThreadGovernor
from trainer.heap import malloc_trim
from trainer.kv_cache import growing_cache
from trainer.lora_stack import LoraStack
from trainer.modeling import use_threads_here
from trainer.shortlist import ShortlistHead

log = logging.getLogger(__name__)

# Before any step is measured, a guess of one decode step's seconds (SmolLM2 on 2 cores, 30 rows: ~0.15 s).
FIRST_STEP_GUESS = 0.2
# Top-k sampling as generate() applies it when the model's generation config leaves it unset.
DEFAULT_TOP_K = 50
# Tokens a waiting request's prompt is assumed to have when sizing the waiting line.
TYPICAL_PROMPT_TOKENS = 256
# Padded prompt tokens prefilled together before the running rows get their next step: a class arriving at once is
# prefilled in a few groups, so the first students read while the last are prefilled (the first one always goes).
PREFILL_TOKENS = 512

Emit = Callable[[Any], None]  # text, an exception, or None at the end


class FrequencyPenalty(LogitsProcessor):
    """OpenAI's frequency_penalty: lower each token's logit by the penalty times how often the reply has used it.

    Only the reply's own tokens count (not the prompt's), as OpenAI defines it; it is what stops a small model
    from looping on one sentence until the length limit."""

    def __init__(self, penalty: float, prompt_length: int) -> None:
        self.penalty, self.prompt_length = penalty, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return penalised(scores, input_ids[:, self.prompt_length:], self.penalty)


def penalised(scores: torch.Tensor, generated: torch.Tensor, penalty: float) -> torch.Tensor:
    """Each row's scores (rows, vocab) lowered by the penalty once for every time its `generated` (rows, n) used a
    token: the one frequency_penalty rule, for generate() (FrequencyPenalty) and for the engine's rows alike."""
    if generated.shape[1] == 0:
        return scores
    return scores.scatter_add(1, generated, torch.full(generated.shape, -penalty, dtype=scores.dtype,
                                                       device=scores.device))


def nucleus(scores: torch.Tensor, temperatures: torch.Tensor, top_ps: torch.Tensor,
            top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's candidates and their probabilities after temperature, top-k and top-p, as generate() keeps them.

    scores: (rows, vocab); returns (rows, k) probabilities and the (rows, k) token ids they belong to."""
    scores = scores / temperatures[:, None]
    k = min(top_k, scores.shape[-1]) if top_k else scores.shape[-1]
    values, candidates = torch.topk(scores, k, dim=-1)  # sorted, most likely first
    # Top-p as TopPLogitsWarper: drop a candidate when it and every less likely one together hold at most 1 - p.
    tail = torch.softmax(values, dim=-1).flip(-1).cumsum(-1).flip(-1)
    dropped = tail <= (1 - top_ps)[:, None]
    dropped[:, 0] = False
    return torch.softmax(values.masked_fill(dropped, float("-inf")), dim=-1), candidates


class _RowStreamer(TextStreamer):
    """Decode one row's tokens into text pieces as TextStreamer does (whole words, whole characters)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, emit: Emit) -> None:
        super().__init__(tokenizer, skip_prompt=False, skip_special_tokens=True)
        self.emit = emit

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.emit(text)


@dataclass(eq=False)
class Request:
    """One chat reply: its prompt ids, adapter, sampling settings; filled in as it runs."""

    prompt: list[int]
    adapter: Path | None
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    frequency_penalty: float
    emit: Emit
    cancelled: bool = False
    slot: int = 0
    generated: list[int] = field(default_factory=list)
    finish_reason: str = "stop"
    streamer: _RowStreamer | None = None
    generator: torch.Generator | None = None

    def cancel(self) -> None:
        """The client went away: the engine drops the request at its next step."""
        self.cancelled = True


class Engine:
    """The running batch of one base model and the thread that decodes it."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, stack: LoraStack, *,
                 max_rows: int, kv_budget_bytes: int, eos_ids: set[int], suppress_ids: list[int],
                 threads: int = 1, governed: bool = False) -> None:
        self.model, self.tokenizer, self.stack = model, tokenizer, stack
        self.max_rows, self.kv_budget_bytes, self.eos_ids = max(1, max_rows), kv_budget_bytes, eos_ids
        self.device = next(model.parameters()).device
        # On a CPU the engine's thread is the server's one thread that runs torch on several cores: `threads`, or
        # when governed one per core the other programs leave free (cpu_share: spinning threads beside a busy core
        # wait for it at every operation).
        self.cpu_threads = threads if self.device.type == "cpu" else 0
        self.governor = ThreadGovernor(threads, first_window=FIRST_WINDOW_SECONDS) \
            if governed and self.cpu_threads > 1 else None
        # Idle, a governed engine still reads the machine every window, so a class's first chats after minutes of
        # training beside it are paced by the last seconds, not by the average since its previous chat (one thread
        # for the first prefill, which took 1.4 s instead of 0.85).
        self.idle_check = WINDOW_SECONDS
        self.threads = 0  # what the engine's thread runs torch on now, set there before its first forward
        output = model.get_output_embeddings()
        self.shortlist = output if isinstance(output, ShortlistHead) else None
        vocab = output.weight.shape[0]
        self._suppress = torch.zeros(vocab, dtype=torch.bool, device=self.device)
        self._suppress[[i for i in suppress_ids if i < vocab]] = True
        top_k = model.generation_config.top_k
        self.top_k = DEFAULT_TOP_K if top_k is None else int(top_k)
        self.kv_token_bytes = _kv_bytes_per_token(model)
        self.step_seconds: float | None = None  # measured, a moving average
        self.waiting: deque[Request] = deque()
        self.rows: list[Request] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # (rows, cache length): 0 on left padding
        self._last: torch.Tensor | None = None  # (rows, 1): each row's latest token
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._dirty = False  # something was freed since the last clean-up

    # Called from other threads
    def submit(self, request: Request) -> None:
        """Put a request in the waiting line; the engine's thread picks it up at its next step."""
        with self._cond:
            self.waiting.append(request)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="chat-engine", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def cancel(self, request: Request) -> None:
        """Remove a request: from the waiting line at once, from the batch at the next step."""
        request.cancel()
        with self._cond:
            if request in self.waiting:
                self.waiting.remove(request)
            self._cond.notify_all()

    def waiting_room(self, max_tokens: int) -> int:
        """How many requests may wait: as many as the KV budget holds at a typical prompt plus max_tokens."""
        need = self.kv_token_bytes * (TYPICAL_PROMPT_TOKENS + max_tokens)
        return max(self.max_rows, self.kv_budget_bytes // max(1, need))

    def retry_after(self) -> int:
        """Seconds until a place is likely to free up: the running row nearest its end, at the measured step time."""
        rows = list(self.rows)
        remaining = min((r.max_tokens - len(r.generated) for r in rows), default=0)
        ahead = len(self.waiting) // self.max_rows  # whole batches that wait before the next place frees
        step = self.step_seconds or FIRST_STEP_GUESS
        largest = max((r.max_tokens for r in rows), default=remaining)
        return max(1, int(step * (remaining + ahead * largest) + 0.999))

    # The engine's thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self.waiting and not self.rows and not self._dirty:
                    if self.governor is None:
                        self._cond.wait()
                    elif not self._cond.wait(self.idle_check):
                        self.governor.choose()
                admitted = self._take_admissible()
            if not admitted and not self.rows:
                # Idle, with memory freed: handed back without the lock, so a request submitted meanwhile (the event
                # loop submits) does not wait for it, and is taken at the next turn.
                self._clean_up()
                continue
            self._pace()
            try:
                admitted = self._with_adapters(admitted)  # outside the lock: loading one reads and copies megabytes
                self._drop_finished()
                if admitted:
                    self._prefill(admitted)
                    self._drop_finished()  # a reply may end at its first token
                if self.rows:
                    self._step()
            except Exception as error:  # boundary: one failing batch ends its own replies, not the engine
                log.exception("Chat generation failed")
                for request in {id(r): r for r in [*self.rows, *admitted]}.values():
                    if request.slot:
                        self.stack.release(request.slot)
                        request.slot = 0
                    request.emit(error)
                self.rows, self._cache, self._mask, self._last = [], None, None, None
                self._dirty = True

    def _pace(self) -> None:
        """Before a round of work: the threads this engine's thread runs torch on, as its governor says now."""
        if not self.cpu_threads:
            return
        threads = self.governor.choose() if self.governor is not None else self.cpu_threads
        if threads != self.threads:
            use_threads_here(threads)
            self.threads = threads

    def _take_admissible(self) -> list[Request]:
        """Take the waiting requests that fit the batch (rows, KV budget, a prefill group), in order; the lock is
        held."""
        for request in [r for r in self.waiting if r.cancelled]:
            self.waiting.remove(request)
        taken: list[Request] = []
        running = sum(1 for r in self.rows if not r.cancelled)
        length = self._mask.shape[1] if self._mask is not None else 0
        longest_rest = max((r.max_tokens - len(r.generated) for r in self.rows), default=0)
        longest_prompt = 0
        for request in list(self.waiting):
            rows = running + len(taken) + 1
            if rows > self.max_rows:
                break
            longest_prompt = max(longest_prompt, len(request.prompt))
            if taken and (len(taken) + 1) * longest_prompt > PREFILL_TOKENS:
                break
            length = max(length, len(request.prompt))
            longest_rest = max(longest_rest, request.max_tokens)
            if rows > 1 and rows * (length + longest_rest) * self.kv_token_bytes > self.kv_budget_bytes:
                break
            self.waiting.remove(request)
            taken.append(request)
        return taken

    def _with_adapters(self, requests: list[Request]) -> list[Request]:
        """Pin each request's adapter slot (loading it); the ones with no free slot go back to the line's front."""
        ready: list[Request] = []
        later: list[Request] = []
        for request in requests:
            if request.adapter is not None:
                try:
                    slot = self.stack.acquire(request.adapter)
                except Exception as error:  # a broken adapter fails its own request only
                    request.emit(error)
                    continue
                if slot is None:  # every slot serves a running chat: wait for one to end
                    later.append(request)
                    continue
                request.slot = slot
            ready.append(request)
        if later:
            with self._cond:
                self.waiting.extendleft(reversed(later))
        return ready

    def _prefill(self, requests: list[Request]) -> None:
        """Run the new prompts together (left padded), sample each one's first token, join them to the batch."""
        longest = max(len(r.prompt) for r in requests)
        ids = torch.full((len(requests), longest), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(requests), longest), dtype=torch.long)
        for row, request in enumerate(requests):
            ids[row, longest - len(request.prompt):] = torch.tensor(request.prompt)
            mask[row, longest - len(request.prompt):] = 1
            request.streamer = _RowStreamer(self.tokenizer, request.emit)
            request.generator = torch.Generator(self.device)
            request.generator.manual_seed(request.seed if request.seed is not None else
                                          int(torch.randint(0, 2**62, (1,)).item()))
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = growing_cache()
        # A model without padding sees no mask at all, exactly as generate() runs one prompt.
        attention = mask if bool((mask == 0).any()) else None
        tokens = self._forward(requests, input_ids=ids, attention_mask=attention, position_ids=_positions(mask),
                               past_key_values=cache)
        self._join(requests, cache, mask, tokens)

    def _join(self, requests: list[Request], cache: DynamicCache, mask: torch.Tensor, tokens: torch.Tensor) -> None:
        if bool((mask == 0).any()):
            # Padding's keys and values may be NaN (a query that may attend to nothing): zero them, or a masked NaN
            # still poisons the softmax's weighted sum.
            keep = mask[:, None, :, None].bool()
            for layer in _layers(cache):
                layer.keys = torch.where(keep, layer.keys, 0.0)
                layer.values = torch.where(keep, layer.values, 0.0)
        if self._cache is None or self._mask is None or self._last is None or not self.rows:
            self._cache, self._mask, self._last = cache, mask, tokens[:, None]
            self.rows = list(requests)
        else:
            length = max(self._mask.shape[1], mask.shape[1])
            for old, new in zip(_layers(self._cache), _layers(cache), strict=True):
                old.keys = torch.cat([_pad_left(old.keys, length), _pad_left(new.keys, length)])
                old.values = torch.cat([_pad_left(old.values, length), _pad_left(new.values, length)])
            self._mask = torch.cat([_pad_left(self._mask, length, dim=1), _pad_left(mask, length, dim=1)])
            self._last = torch.cat([self._last, tokens[:, None]])
            self.rows.extend(requests)
        self._sort_by_slot()
        self._record(requests, tokens)

    def _sort_by_slot(self) -> None:
        """Order the batch's rows by adapter slot (stable), so the stack adds adapters to runs of rows on views of
        its stacks instead of gathering every row's matrices at every step (trainer.lora_stack)."""
        assert self._cache is not None and self._mask is not None and self._last is not None
        order = sorted(range(len(self.rows)), key=lambda row: self.rows[row].slot)
        if order == list(range(len(order))):
            return
        index = torch.tensor(order, device=self.device)
        for layer in _layers(self._cache):
            layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
        self._mask, self._last = self._mask.index_select(0, index), self._last.index_select(0, index)
        self.rows = [self.rows[row] for row in order]

    def _step(self) -> None:
        """One decode step for every row."""
        assert self._cache is not None and self._mask is not None and self._last is not None
        started = time.perf_counter()
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(self.rows), 1)], dim=1)
        positions = (self._mask.sum(dim=1, keepdim=True) - 1)
        tokens = self._forward(self.rows, input_ids=self._last, attention_mask=self._mask, position_ids=positions,
                               past_key_values=self._cache)
        self._last = tokens[:, None]
        self._record(self.rows, tokens)
        seconds = time.perf_counter() - started
        self.step_seconds = seconds if self.step_seconds is None else 0.8 * self.step_seconds + 0.2 * seconds

    def _forward(self, requests: list[Request], **inputs: Any) -> torch.Tensor:
        """One forward of the batch (its last position's logits only) and each row's next token."""
        approximate = self.shortlist.approximate() if self.shortlist is not None else contextlib.nullcontext()
        with torch.inference_mode(), self.stack.rows([r.slot for r in requests]), approximate:
            output = self.model(**inputs, use_cache=True, logits_to_keep=1)
            return self._sample(requests, output.logits[:, -1, :])

    def _sample(self, requests: list[Request], logits: torch.Tensor) -> torch.Tensor:
        """Pick each row's next token by generate()'s rules for that request alone, all rows at once.

        Frequency penalty, temperature, top-k, then top-p within the top k, then a draw from each row's own seeded
        generator. Top-p is applied to the k candidates only, never by sorting the whole vocabulary per row: that
        sort, one row at a time, cost more than the model's own step for a class of 30. A shortlisted output layer's
        bfloat16 logits are first made the float32 layer's wherever the best k may be (trainer/shortlist)."""
        scores = self._scores(requests, logits)
        sampled = [row for row, request in enumerate(requests) if request.temperature > 0]
        if self.shortlist is not None:
            exact = self.shortlist.exact_top(scores, logits.float(), (self.top_k or scores.shape[-1]) if sampled else 1)
            scores = self._scores(requests, exact)
        chosen = scores.argmax(dim=-1)
        if not sampled:
            return chosen
        index = torch.tensor(sampled, device=scores.device)
        temperatures = torch.tensor([requests[row].temperature for row in sampled], device=scores.device)
        top_ps = torch.tensor([requests[row].top_p for row in sampled], device=scores.device)
        probabilities, candidates = nucleus(scores.index_select(0, index), temperatures, top_ps, self.top_k)
        for position, row in enumerate(sampled):
            pick = torch.multinomial(probabilities[position], 1, generator=requests[row].generator)
            chosen[row] = candidates[position, pick[0]]
        return chosen

    def _scores(self, requests: list[Request], logits: torch.Tensor) -> torch.Tensor:
        """The logits as each request ranks them: suppressed tokens at -inf, its frequency penalty applied."""
        scores = logits.float().masked_fill(self._suppress, float("-inf"))
        for row, request in enumerate(requests):
            if request.frequency_penalty and request.generated:
                used = torch.tensor([request.generated], dtype=torch.long, device=scores.device)
                scores[row : row + 1] = penalised(scores[row : row + 1], used, request.frequency_penalty)
        return scores

    def _record(self, requests: list[Request], tokens: torch.Tensor) -> None:
        """Stream each row's new token and mark the rows that are done."""
        for request, token in zip(requests, tokens.tolist(), strict=True):
            request.generated.append(token)
            _streamer(request).put(torch.tensor([token]))
            if token in self.eos_ids:
                request.finish_reason = "stop"
            elif len(request.generated) >= request.max_tokens:
                request.finish_reason = "length"

    def _drop_finished(self) -> None:
        """Finish rows that ended or whose client left, and cut them (and padding no row needs) from the cache."""
        keep: list[int] = []
        for row, request in enumerate(self.rows):
            ended = bool(request.generated) and (request.generated[-1] in self.eos_ids
                                                 or len(request.generated) >= request.max_tokens)
            if ended or request.cancelled:
                if request.slot:
                    self.stack.release(request.slot)
                if ended and request.streamer is not None:
                    _streamer(request).end()
                request.emit(None)
            else:
                keep.append(row)
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[row] for row in keep]
        self._dirty = True
        if not self.rows:
            self._cache, self._mask, self._last = None, None, None
            return
        assert self._cache is not None and self._mask is not None and self._last is not None
        index = torch.tensor(keep, device=self.device)
        mask = self._mask.index_select(0, index)
        start = int((mask.cumsum(dim=1) == 0).sum(dim=1).min())  # columns that are padding in every row left
        for layer in _layers(self._cache):
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
        self._mask, self._last = mask[:, start:], self._last.index_select(0, index)

    def _clean_up(self) -> None:
        """Idle: shrink the adapter stacks, collect garbage and hand freed memory back to the system."""
        self._dirty = False
        self.stack.compact()
        gc.collect()
        malloc_trim()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Each token's position among its row's real tokens (padding gets 0)."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def _layers(cache: DynamicCache) -> list[Any]:
    """The cache's layers (each with .keys and .values of shape (rows, heads, length, head_dim))."""
    return list(cache.layers)


def _streamer(request: Request) -> Any:
    """A request's streamer, as Any: TextStreamer's methods are untyped."""
    assert request.streamer is not None
    return request.streamer


def _pad_left(tensor: torch.Tensor, length: int, dim: int = 2) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _kv_bytes_per_token(model: PreTrainedModel) -> int:
    """Bytes the KV cache holds per token of one row: keys and values of every layer."""
    config = model.config.get_text_config(decoder=True)
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = next(model.parameters()).element_size()
    return int(2 * config.num_hidden_layers * heads * head_dim * element)
