"""LoRA supervised fine-tuning: chat examples to tokens with assistant-only labels, and the training loop."""

from __future__ import annotations

import codecs
import json
import logging
import math
import random
import re
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trainer.config import CHECKPOINT_PREFIX, FINAL_FOLDER, STATE_FILE
from trainer.modeling import control_token_ids, load_model, plain_logits, render_chat, softcapped
from trainer.validation import file_lines

log = logging.getLogger(__name__)

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    """One example as token ids, with labels only on the assistant's tokens (IGNORE elsewhere)."""

    input_ids: list[int]
    labels: list[int]


def content_text(content: Any) -> str:
    """Flatten a message's content (a string or a list of parts) to its text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return render_chat(tokenizer, messages, generation_prompt)  # the same rendering chat uses


def chat_messages(tokenizer: PreTrainedTokenizerBase, raw: Iterable[dict[str, Any]]) -> list[dict[str, str]]:
    """Keep what a chat template understands: the role and the text of each message, with the tokenizer's control
    tokens written in the text kept as text (a student who types "<|im_end|>" must not end a turn, or forge one)."""
    return [{"role": str(message.get("role", "user")),
             "content": _as_text(tokenizer, content_text(message.get("content")))} for message in raw]


# Put between a control token's first two characters, it leaves the text looking the same and stops the tokenizer
# from matching it (U+2060 WORD JOINER: invisible, no width, no line break).
_JOINER = "\u2060"
_MARKUP = re.compile(r"<[^<>\s]{1,64}>")  # the shape of nearly every control token: <|im_end|>, <end_of_turn>, </s>
_CONTROL_TEXTS: weakref.WeakKeyDictionary[Any, tuple[frozenset[str], re.Pattern[str] | None]] = (
    weakref.WeakKeyDictionary())


def _as_text(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    if tokenizer not in _CONTROL_TEXTS:
        specials = frozenset(token for token in tokenizer.convert_ids_to_tokens(sorted(control_token_ids(tokenizer)))
                             if len(token) > 1)
        # Gemma has some 6,000 such tokens: one pass for the <...> ones, an alternation for the few of other shapes.
        shaped = sorted((t for t in specials if not _MARKUP.fullmatch(t)), key=len, reverse=True)
        _CONTROL_TEXTS[tokenizer] = (specials, re.compile("|".join(map(re.escape, shaped))) if shaped else None)
    specials, others = _CONTROL_TEXTS[tokenizer]

    def joined(match: re.Match[str]) -> str:
        found = match.group(0)
        return found[0] + _JOINER + found[1:] if found in specials else found

    text = _MARKUP.sub(joined, text)
    return others.sub(joined, text) if others is not None else text


_SUFFIXES: dict[str, tuple[str, str]] = {}
_LONGEST_TOKEN: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
# How far past the end of one message the template may put the next message's content (role headers, dates...).
_TEMPLATE_GAP = 4096


def _assistant_marks(tokenizer: PreTrainedTokenizerBase) -> tuple[str, str]:
    """What the template writes before an assistant turn's content (its generation prompt, e.g.
    "<|im_start|>assistant\\n") and after it (e.g. "<|im_end|>\\n"), found once per template from a probe chat."""
    template = str(tokenizer.chat_template)
    if template not in _SUFFIXES:
        probe = "\u2063probe\u2063"
        user = [{"role": "user", "content": "hi"}]
        try:
            text = _render(tokenizer, [*user, {"role": "assistant", "content": probe}], False)
            asked, plain = _render(tokenizer, user, True), _render(tokenizer, user, False)
            header = asked[len(plain):] if asked.startswith(plain) else ""
            _SUFFIXES[template] = (header, text[text.rindex(probe) + len(probe):] if probe in text else "")
        except Exception:  # a template that refuses the probe chat: label the content alone
            _SUFFIXES[template] = ("", "")
    return _SUFFIXES[template]


def longest_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """The most characters one token of this vocabulary can stand for (bounds the text worth tokenizing)."""
    longest = _LONGEST_TOKEN.get(tokenizer)
    if longest is None:
        longest = _LONGEST_TOKEN[tokenizer] = max((len(token) for token in tokenizer.get_vocab()), default=16)
    return longest


def encode_chat(tokenizer: PreTrainedTokenizerBase, raw_messages: list[dict[str, Any]], max_len: int) -> Encoded:
    """Tokenize one chat through the model's template; label the assistant turns that carry weight 1.

    Linear in the chat's length: the chat is cut to what can fit in max_len tokens first (every message renders to
    at least one token, and no token stands for more than the vocabulary's longest token), then rendered once; each
    assistant turn's span runs from its content to the end of the template's end-of-turn text, found by searching
    forward from the previous message, so no prefix is ever rendered twice.
    """
    char_limit = max_len * (longest_token(tokenizer) + 1)
    raw_messages = raw_messages[:max_len]
    messages = chat_messages(tokenizer, raw_messages)
    for message in messages:
        message["content"] = message["content"][:char_limit]
    full = _render(tokenizer, messages, False)[:char_limit]
    header, suffix = _assistant_marks(tokenizer)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for raw, message in zip(raw_messages, messages, strict=True):
        content = message["content"]
        if message["role"] == "assistant" and header:
            # Past the assistant header first: an empty answer (or one that looks like a header) is found at its place.
            found = full.find(header, cursor, cursor + _TEMPLATE_GAP)
            cursor = found + len(header) if found != -1 else cursor
        start = _find_content(full, content, cursor)
        if start is None:
            continue  # the template left this message out (or changed it): nothing to label, nothing to skip
        end = start + len(content) if full.startswith(content, start) else start + len(content.strip())
        cursor = end
        if raw.get("role") != "assistant" or raw.get("weight", 1) == 0:
            continue
        if suffix and full.startswith(suffix, end):
            end += len(suffix)
        spans.append((start, end))
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = encoding["input_ids"][:max_len]
    labels = [IGNORE] * len(ids)
    span = 0
    for position, (token_start, token_end) in enumerate(encoding["offset_mapping"][: len(ids)]):
        while span < len(spans) and spans[span][1] <= token_start:
            span += 1
        if span < len(spans) and spans[span][0] <= token_start and token_end > token_start:
            labels[position] = ids[position]
    return Encoded(ids, labels)


def _find_content(full: str, content: str, cursor: int) -> int | None:
    """Where a message's content starts in the rendered chat, searching a bounded window after the cursor."""
    for text in (content, content.strip()):
        found = full.find(text, cursor, cursor + len(text) + _TEMPLATE_GAP)
        if found != -1:
            return found
    return None


def read_jsonl(path: Path, max_line_bytes: int = 8 * 1024 * 1024) -> Iterator[dict[str, Any]]:
    """Read a checked chat JSONL file example by example (blank lines skipped), split as the file check splits it."""
    for number, line in enumerate(file_lines(path, max_line_bytes)):
        if number == 0 and line.startswith(codecs.BOM_UTF8):
            line = line[len(codecs.BOM_UTF8):]
        if line.strip():
            yield json.loads(line.decode("utf-8"))


def encode_file(tokenizer: PreTrainedTokenizerBase, path: Path, max_len: int,
                max_line_bytes: int = 8 * 1024 * 1024) -> list[Encoded]:
    """Encode every trainable example of a chat file; examples with nothing to learn are dropped."""
    encoded = (encode_chat(tokenizer, example["messages"], max_len) for example in read_jsonl(path, max_line_bytes))
    return [example for example in encoded if any(label != IGNORE for label in example.labels[1:])]


def collate(batch: Sequence[Encoded], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad a batch to its longest example: ids, attention mask and labels."""
    width = max(len(example.input_ids) for example in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        ids[row, : len(example.input_ids)] = torch.tensor(example.input_ids)
        labels[row, : len(example.labels)] = torch.tensor(example.labels)
        mask[row, : len(example.input_ids)] = 1
    return ids.to(device), mask.to(device), labels.to(device)


def guessed(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Whether each target token is the model's top guess: its logit the largest of its row. That is argmax's answer
    but for exact ties, from a max-reduction, which a CPU runs far faster than argmax over a large vocabulary (a
    Gemma-3 lesson step, 262k tokens: 1.31 s with argmax, 0.98 s with this). targets must be token ids (no IGNORE)."""
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) >= logits.amax(-1)


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean next-token loss over labelled tokens, the count of correct top guesses, and the label count."""
    shifted = logits[:, :-1].float()
    targets = labels[:, 1:]
    loss = F.cross_entropy(shifted.reshape(-1, shifted.size(-1)), targets.reshape(-1), ignore_index=IGNORE)
    with torch.no_grad():
        labelled = targets != IGNORE
        correct = guessed(shifted, targets.clamp(min=0))[labelled].sum()
    return loss, correct, int(labelled.sum())


def labelled_logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                    labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits (float32) at every position whose next token is labelled, and those labels.

    Only the positions whose next token is labelled (the assistant's replies) go through lm_head: with Gemma's
    262k-token vocabulary the output layer over a whole chat is most of a step's time and memory.
    """
    targets = labels[:, 1:]
    labelled = targets != IGNORE
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    config = getattr(base, "config", None)
    if not plain_logits(config):  # another transform of the logits: computed the plain way
        return model(input_ids=ids, attention_mask=mask).logits[:, :-1][labelled].float(), targets[labelled]
    assert isinstance(base, PreTrainedModel)  # a model with a config is a Hugging Face one (load_model's)
    hidden = base.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    logits = base.get_output_embeddings()(hidden[:, :-1][labelled]).float()
    return softcapped(logits, getattr(config, "final_logit_softcapping", None)), targets[labelled]


# The share of a lesson's positions whose next token is labelled (the assistant's replies): 0.35-0.53 in the shipped
# lessons (SmolLM2's tokenizer), so about half. Training computes the output layer only there.
LABELLED_SHARE = 0.45


def forward_seconds_per_token(model: PreTrainedModel, rows: int = 4, length: int = 64) -> float:
    """Seconds per token of a forward pass over a lesson-sized batch on this machine now, as training computes it:
    the output layer only at the labelled positions (the last LABELLED_SHARE of each row), as
    labelled_logits does (the faster of two: the first also warms up). How the queue guesses a base model's
    training speed before any job ran (trainer.timing): with Gemma's 262k-token vocabulary the output layer at every
    position was two thirds of the forward, so the guess was 1.4x slow for Gemma and not for SmolLM2."""
    device = next(model.parameters()).device
    vocab = int(getattr(model.config, "vocab_size", 0) or 2)
    ids = torch.randint(0, min(vocab, 1000), (rows, length), generator=torch.Generator().manual_seed(0)).to(device)
    labels = ids.clone()
    labels[:, : length - round(length * LABELLED_SHARE)] = IGNORE
    mask = torch.ones_like(ids)
    best = math.inf
    with torch.inference_mode():
        for _ in range(2):
            started = time.perf_counter()
            labelled_logits(model, ids, mask, labels)
            best = min(best, time.perf_counter() - started)
    return best / (rows * length)


def labelled_loss_and_accuracy(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                               labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The same as loss_and_accuracy(model(...).logits, labels), computing the output layer only where it counts."""
    logits, chosen = labelled_logits(model, ids, mask, labels)
    loss = F.cross_entropy(logits, chosen) if chosen.numel() else logits.sum() * 0.0
    with torch.no_grad():
        correct = guessed(logits, chosen).sum()
    return loss, correct, int(chosen.numel())


# How much more a labelled turn end counts in the training objective than any other labelled token. It is one token
# of the thirty or so in an answer, and a base model that never chatted (google/gemma-3-270m) was never trained to
# predict it: at equal weight, a 40-example Korean lesson for 3 epochs left it at 15% after the taught sign-off (0% for
# a chat without the training system prompt), and sampled replies ran on into loops and junk. Weighted 8x, the same
# lesson ends there at 85% (docs/trainer.md, "Replies that end").
TURN_END_WEIGHT = 8.0


def label_weights(targets: torch.Tensor, turn_ends: Sequence[int], weight: float = TURN_END_WEIGHT) -> torch.Tensor:
    """Each labelled token's weight in the training objective: `weight` for a turn end, 1 for any other."""
    ends = torch.isin(targets, torch.tensor(list(turn_ends), dtype=targets.dtype, device=targets.device))
    return torch.where(ends, weight, 1.0).to(torch.float32)


def training_objective(losses: torch.Tensor, targets: torch.Tensor, turn_ends: Sequence[int],
                       weight: float = TURN_END_WEIGHT) -> torch.Tensor:
    """The loss backward() takes: each labelled token's loss, turn ends weighted `weight` times, as a weighted mean.

    The loss reported to the class stays the plain mean, as OpenAI reports it."""
    if not losses.numel():
        return losses.sum() * 0.0
    weights = label_weights(targets, turn_ends, weight)
    return (losses * weights).sum() / weights.sum()


def batches(examples: Sequence[Encoded], batch_size: int, seed: int, epoch: int) -> list[list[Encoded]]:
    """Shuffle one epoch's examples reproducibly (same seed and epoch, same order, also after a resume)."""
    order = list(range(len(examples)))
    random.Random(seed * 1000 + epoch).shuffle(order)
    return [[examples[i] for i in order[start : start + batch_size]] for start in range(0, len(order), batch_size)]


def lora_model(model: PreTrainedModel, r: int, alpha: int) -> PeftModel:
    """Wrap a model with fresh LoRA adapters on all its linear layers."""
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def adamw(parameters: list[torch.nn.Parameter], learning_rate: float) -> torch.optim.AdamW:
    """The optimizer of every job: AdamW without weight decay, in torch's fused kernel (one call for all of a job's
    tensors: a SmolLM2 job's 420 LoRA tensors in 11 ms a step on one core, against 44 ms for the foreach loop; the
    same arithmetic to float rounding)."""
    return torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0, fused=True)


def linear_schedule(total_steps: int) -> Any:
    """Return the learning-rate factor for a step: a linear decay to a tenth, so the last steps still learn."""
    return lambda step: 1.0 - 0.9 * min(step, total_steps) / max(1, total_steps)


class Reporter(Protocol):
    """What the training loop tells the outside world (the worker writes it to the database)."""

    def step(self, metrics: dict[str, Any], trained_tokens: int, seconds_per_step: float) -> None:
        """Record one step's metrics."""

    def checkpoint(self, epoch: int, step: int, path: Path, metrics: dict[str, Any], final: bool) -> None:
        """Record a saved epoch checkpoint."""


@dataclass
class TrainSpec:
    """Everything one training run needs."""

    source: str
    device: str
    train: list[Encoded]
    valid: list[Encoded]
    pad_id: int
    n_epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    lora_r: int
    lora_alpha: int
    out_dir: Path
    resume_from: Path | None = None
    # Asked after every step: a reason to stop now (pause, time limit) or None. A stop saves a resumable checkpoint.
    should_stop: Callable[[], str | None] | None = None
    eval_every: int = 0  # steps between scores of the whole held-out file (0: FULL_VALIDATIONS_PER_EPOCH an epoch)
    extra: dict[str, Any] = field(default_factory=dict)
    cache_dir: Path | None = None  # where a GGUF's dequantized weights are kept between jobs
    turn_ends: tuple[int, ...] = ()  # the tokens that end an assistant's turn: weighted in the objective


@dataclass(frozen=True)
class TrainResult:
    """What a finished run leaves behind."""

    adapter_dir: Path
    trained_tokens: int
    steps: int
    metrics: list[dict[str, Any]]
    stopped: str | None = None  # why training stopped early (should_stop's answer); None when it finished
    checkpoint: Path | None = None  # the checkpoint saved when it stopped early


def evaluate(model: torch.nn.Module, examples: Sequence[Encoded], batch_size: int, pad_id: int,
             device: str) -> tuple[float, float]:
    """Mean loss and token accuracy over examples, weighted by their labelled tokens."""
    total_loss, total_correct, total_count = 0.0, 0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            ids, mask, labels = collate(examples[start : start + batch_size], pad_id, device)
            loss, correct, count = labelled_loss_and_accuracy(model, ids, mask, labels)
            total_loss += float(loss) * count
            total_correct += int(correct)
            total_count += count
    model.train()
    return total_loss / max(1, total_count), total_correct / max(1, total_count)


# How often a job scores the whole validation file: twice an epoch and at each epoch's end. One held-out batch at a
# time (OpenAI's valid_loss) zigzags by half a point between batches of unlike questions, so the curve a class reads
# would hide the turn-up of overfitting; the whole file costs a few forward passes (about a step) each time.
FULL_VALIDATIONS_PER_EPOCH = 2


def validation_due(step: int, steps_per_epoch: int, total_steps: int, every: int = 0) -> bool:
    """Whether the whole validation file is scored after this step (counted from the job's start): every `every`
    steps (default: FULL_VALIDATIONS_PER_EPOCH an epoch), at each epoch's end and at the last step."""
    every = every or max(1, steps_per_epoch // FULL_VALIDATIONS_PER_EPOCH)
    return step % every == 0 or step % steps_per_epoch == 0 or step == total_steps


def validation_metrics(loss_and_accuracy: tuple[float, float]) -> dict[str, float]:
    """The validation figures of a step, from a score of the whole file: reported as the full validation loss, as
    OpenAI names it, and as the validation loss (a trainer's "batch" is the whole file, so both lines agree)."""
    loss, accuracy = loss_and_accuracy
    return {"valid_loss": loss, "valid_mean_token_accuracy": accuracy,
            "full_valid_loss": loss, "full_valid_mean_token_accuracy": accuracy}


def train(spec: TrainSpec, reporter: Reporter) -> TrainResult:
    """Train LoRA adapters epoch by epoch, saving a resumable checkpoint after each epoch."""
    torch.manual_seed(spec.seed)
    steps_per_epoch = math.ceil(len(spec.train) / spec.batch_size)
    total_steps = steps_per_epoch * spec.n_epochs
    base = load_model(spec.source, spec.device, cache_dir=spec.cache_dir)
    if spec.resume_from is not None:
        model = PeftModel.from_pretrained(base, str(spec.resume_from), is_trainable=True)
    else:
        model = lora_model(base, spec.lora_r, spec.lora_alpha)
    model.train()
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], spec.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(total_steps))
    step, start_epoch, start_batch, trained_tokens = 0, 0, 0, 0
    if spec.resume_from is not None:
        state = torch.load(spec.resume_from / STATE_FILE, weights_only=True)  # tensors and plain data only
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, start_epoch, trained_tokens = state["step"], state["epoch"] + 1, state["trained_tokens"]
        if state.get("batch") is not None:  # stopped mid-epoch (pause, time limit): the rest of that epoch next
            start_epoch, start_batch = state["epoch"], state["batch"]
        torch.set_rng_state(state["rng"])
    history: list[dict[str, Any]] = []
    def save(path: Path, epoch: int, batch: int | None) -> None:
        model.save_pretrained(str(path))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                    "epoch": epoch, "batch": batch, "trained_tokens": trained_tokens, "rng": torch.get_rng_state()},
                   path / STATE_FILE)

    for epoch in range(start_epoch, spec.n_epochs):
        epoch_batches = batches(spec.train, spec.batch_size, spec.seed, epoch)
        for index, batch in enumerate(epoch_batches):
            if epoch == start_epoch and index < start_batch:
                continue
            started = time.perf_counter()
            ids, mask, labels = collate(batch, spec.pad_id, spec.device)
            logits, targets = labelled_logits(model, ids, mask, labels)
            losses = F.cross_entropy(logits, targets, reduction="none")
            training_objective(losses, targets, spec.turn_ends).backward()
            loss = losses.detach().mean() if losses.numel() else losses.detach().sum()
            with torch.no_grad():
                correct, count = guessed(logits, targets).sum(), int(targets.numel())
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            trained_tokens += int(mask.sum())
            metrics: dict[str, Any] = {"step": step, "train_loss": loss.item(), "total_steps": total_steps,
                                       "train_mean_token_accuracy": int(correct) / max(1, count)}
            if spec.valid and validation_due(step, steps_per_epoch, total_steps, spec.eval_every):
                metrics.update(validation_metrics(evaluate(model, spec.valid, spec.batch_size, spec.pad_id,
                                                           spec.device)))
            history.append(metrics)
            reporter.step(metrics, trained_tokens, time.perf_counter() - started)
            reason = spec.should_stop() if spec.should_stop is not None and step < total_steps else None
            if reason is not None:
                path = spec.out_dir / f"{CHECKPOINT_PREFIX}{step}"
                last = index == len(epoch_batches) - 1
                save(path, epoch, None if last else index + 1)
                reporter.checkpoint(epoch, step, path, metrics, False)
                return TrainResult(path, trained_tokens, step, history, stopped=reason, checkpoint=path)
        path = spec.out_dir / f"{CHECKPOINT_PREFIX}{step}"
        save(path, epoch, None)
        reporter.checkpoint(epoch, step, path, history[-1] if history else {}, epoch == spec.n_epochs - 1)
    final = spec.out_dir / FINAL_FOLDER
    model.save_pretrained(str(final))
    return TrainResult(final, trained_tokens, step, history)
