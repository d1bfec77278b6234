"""Several students' LoRA jobs trained together: one batched pass over one frozen base model per step.

Each adapted Linear computes base(x) once for every row of the step, then adds, for each run of rows that belongs to
one job, that job's own LoRA (x @ A.T @ B.T * alpha/r). Each job keeps its own parameters, AdamW state, learning-rate
schedule, data order, metrics, checkpoints and result: what it computes equals training it alone (train() in
trainer/training.py) up to float rounding, since rows never see each other (attention is within a row) and the sum
of the jobs' losses has, for each job's parameters, exactly that job's gradient.

Rows are bucketed by length: a step's rows (all jobs' batches) are sorted by length and cut into chunks of at most
GROUP_CHUNK_TOKENS padded tokens, each padded to its own longest row; the chunks' gradients accumulate.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel

from trainer.config import CHECKPOINT_PREFIX, FINAL_FOLDER, STATE_FILE
from trainer.modeling import load_model
from trainer.training import (
    IGNORE,
    TURN_END_WEIGHT,
    Encoded,
    Reporter,
    TrainResult,
    TrainSpec,
    adamw,
    batches,
    collate,
    guessed,
    label_weights,
    labelled_logits,
    linear_schedule,
    validation_due,
    validation_metrics,
)

log = logging.getLogger(__name__)

# Padded tokens per forward pass: bounds the activations kept for the backward pass (~1.4 MB a token for
# SmolLM2-135M, so ~1.5 GB) however many jobs are in the group (the worker's lanes share it: each lane's passes take
# their part); on a CPU larger passes were no faster per token.
GROUP_CHUNK_TOKENS = 1024
ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
PEFT_PREFIX = "base_model.model."  # how peft names a wrapped model's modules in a saved adapter

# One run of rows [start, end) and the LoRA that applies to it: A (r x in), B (out x r) and alpha / r.
Route = tuple[int, int, torch.Tensor, torch.Tensor, float]


class MultiLoraLinear(nn.Module):
    """A frozen Linear that adds, to each run of rows, the LoRA of the job those rows belong to.

    The routes are set by the group before each pass, per thread: the worker's lanes (trainer/worker.py) pass
    different jobs through the one shared base at the same time."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self._lanes = threading.local()

    @property
    def routes(self) -> list[Route]:
        """This thread's routes for its next pass (none: the base alone)."""
        routes: list[Route] = getattr(self._lanes, "routes", [])
        return routes

    @routes.setter
    def routes(self, routes: list[Route]) -> None:
        self._lanes.routes = routes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """base(x) plus each row's own job's low-rank update."""
        # A base multiplying in a lower precision (SharedBase's matmul_dtype) takes its input cast down and gives its
        # output back in the model's; otherwise both casts are no-ops.
        out: torch.Tensor = self.base(x.to(self.base.weight.dtype)).to(x.dtype)
        routes = self.routes
        if not routes:
            return out
        # split, not slicing: the backward of one split is one cat, where each slice's backward would fill a
        # zero tensor the size of x and add it (measured: 10% of a step). Adding each job's update in place to its
        # rows of the output was slower still (the backward copies slices). The scale goes on the r-wide product.
        pieces = torch.split(x, [end - start for start, end, _, _, _ in routes]) if len(routes) > 1 else [x]
        parts = [((piece.to(a.dtype) @ a.t()) * scale) @ b.t()
                 for piece, (_, _, a, b, scale) in zip(pieces, routes, strict=True)]
        delta = parts[0] if len(parts) == 1 else torch.cat(parts)
        return out.add_(delta.to(out.dtype))  # the base's backward does not need its own output: add in place


class CastLinear(nn.Module):
    """A frozen Linear that multiplies in a lower precision than the model around it: input cast down, output back.
    Its weight is the Linear's, converted (no copy when it is in that precision already)."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight: torch.Tensor
        self.bias: torch.Tensor | None
        self.register_buffer("weight", linear.weight.detach().to(dtype), persistent=False)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W.T + b in the layer's precision, returned in x's."""
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)


@dataclass
class Adapter:
    """One job's LoRA: an (A, B) pair per adapted module, in the base's module order (peft's parameter order)."""

    pairs: list[tuple[nn.Parameter, nn.Parameter]]
    r: int
    alpha: int

    @property
    def scaling(self) -> float:
        """peft's alpha / r."""
        return self.alpha / self.r

    def parameters(self) -> list[nn.Parameter]:
        """A and B of every module in order, as peft's model.parameters() lists the trainable ones."""
        return [tensor for pair in self.pairs for tensor in pair]


class SharedBase:
    """A base model loaded once, frozen, with every linear layer but the output layer ready to carry many LoRAs.

    With a matmul_dtype (bfloat16 on a CPU that multiplies it natively: trainer.modeling.training_matmul_dtype), the
    frozen linear layers and the output layer multiply in it while the rest (norms, attention, the residual stream,
    the loss) stays in the model's float32, as mixed-precision training does; the LoRAs are float32 either way. A
    lesson's step on 2 cores with AMX: 0.55 s instead of 0.82 (docs/benchmarks.md). The converted layers' weights
    replace the float32 ones (half their memory), embeddings tied to the output layer included.
    """

    def __init__(self, source: str, device: str, cache_dir: Path | None = None,
                 model: PreTrainedModel | None = None, matmul_dtype: torch.dtype | None = None) -> None:
        self.source, self.device = source, device
        self.model = model if model is not None else load_model(source, device, cache_dir=cache_dir)
        self.model.requires_grad_(False)
        self.model.train()  # as peft's training does (no dropout in these models' training anyway)
        output = self.model.get_output_embeddings()
        # peft's target_modules="all-linear": every nn.Linear but the output layer, in module order.
        self.names = [name for name, module in self.model.named_modules()
                      if isinstance(module, nn.Linear) and module is not output]
        self.layers: list[MultiLoraLinear] = []
        for name in self.names:
            parent_name, _, leaf = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            wrapped = MultiLoraLinear(getattr(parent, leaf))
            setattr(parent, leaf, wrapped)
            self.layers.append(wrapped)
        model_dtype = next(self.model.parameters()).dtype
        if matmul_dtype is not None and matmul_dtype != model_dtype:
            self._multiply_in(matmul_dtype, model_dtype, output)

    def _multiply_in(self, dtype: torch.dtype, model_dtype: torch.dtype, output: nn.Module | None) -> None:
        """Convert the frozen linear layers and the output layer to dtype, in place: their products run in it.

        An output layer tied to the input embeddings converts the shared weight (a copy would cost Gemma's 262k x 640
        vocabulary 335 MB more); the embeddings' lookups are then cast back to the model's dtype, so only the matrix
        products see the rounding."""
        for layer in self.layers:
            layer.base.to(dtype)
        if not isinstance(output, nn.Linear):
            return
        embeddings = self.model.get_input_embeddings()
        if embeddings.weight is output.weight:
            embeddings.to(dtype)
            embeddings.register_forward_hook(lambda module, args, looked_up: looked_up.to(model_dtype))
        self.model.set_output_embeddings(CastLinear(output, dtype))

    def new_adapter(self, r: int, alpha: int, seed: int) -> Adapter:
        """Fresh LoRA weights exactly as peft makes them after torch.manual_seed(seed) (A: nn.Linear's uniform
        Kaiming, B: zeros), drawn in the same order from the same generator."""
        torch.manual_seed(seed)
        pairs = []
        for layer in self.layers:
            base = layer.base
            a = nn.Linear(base.in_features, r, bias=False)
            b = nn.Linear(r, base.out_features, bias=False)
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            nn.init.zeros_(b.weight)
            pairs.append((self._param(a.weight.data), self._param(b.weight.data)))
        return Adapter(pairs, r, alpha)

    def load_adapter(self, folder: Path) -> Adapter:
        """Read a peft adapter folder (ours or peft's own save) into trainable LoRA weights."""
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
        tensors = load_file(str(folder / ADAPTER_WEIGHTS))
        pairs = [(self._param(tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"]),
                  self._param(tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"])) for name in self.names]
        return Adapter(pairs, int(config["r"]), int(config["lora_alpha"]))

    def save_adapter(self, adapter: Adapter, folder: Path) -> None:
        """Write a peft adapter folder that PeftModel.from_pretrained loads as it loads peft's own saves."""
        folder.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        for name, (a, b) in zip(self.names, adapter.pairs, strict=True):
            tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a.detach().cpu().contiguous()
            tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b.detach().cpu().contiguous()
        save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        config = LoraConfig(r=adapter.r, lora_alpha=adapter.alpha, lora_dropout=0.0,
                            target_modules=list(self.names), task_type="CAUSAL_LM")  # full names, as peft saves
        config.base_model_name_or_path = getattr(self.model, "name_or_path", None) or None
        config.inference_mode = True  # as peft writes it
        config.save_pretrained(str(folder))

    def _param(self, tensor: torch.Tensor) -> nn.Parameter:
        # peft keeps LoRA weights in float32 even on a bfloat16 base (autocast_adapter_dtype); so do we.
        return nn.Parameter(tensor.to(self.device, dtype=torch.float32).clone(), requires_grad=True)

    def route(self, routes: list[Route]) -> None:
        """Tell every adapted layer which rows of this thread's next pass belong to which job's LoRA."""
        for layer in self.layers:
            layer.routes = routes

    def labelled(self, ids: torch.Tensor, mask: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits at the positions whose next token is labelled, their targets, and the row of each (the logits as
        training.labelled_logits computes them for one job: the output layer only where it counts)."""
        labelled = labels[:, 1:] != IGNORE
        rows = torch.arange(ids.size(0), device=ids.device).unsqueeze(1).expand_as(labelled)[labelled]
        logits, targets = labelled_logits(self.model, ids, mask, labels)
        return logits, targets, rows


@dataclass
class JobRun:
    """One job being trained in a group: its data, LoRA, optimizer, schedule and place in its epochs."""

    job_id: str
    spec: TrainSpec
    reporter: Reporter
    adapter: Adapter
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    total_steps: int
    step: int = 0
    epoch: int = 0
    index: int = 0  # the next batch of this epoch
    trained_tokens: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_batches: list[list[Encoded]] = field(default_factory=list)
    result: TrainResult | None = None  # set when the job has finished or stopped

    @property
    def done(self) -> bool:
        """Whether this run has nothing left to train."""
        return self.result is not None

    def batch(self) -> list[Encoded]:
        """This job's batch for its next step (its own seeded order, as train() takes it)."""
        return self.epoch_batches[self.index]


def start_run(base: SharedBase, job_id: str, spec: TrainSpec, reporter: Reporter) -> JobRun:
    """Prepare one job for group training: fresh LoRA (seeded as train() seeds it) or its last checkpoint."""
    steps_per_epoch = math.ceil(len(spec.train) / spec.batch_size)
    total_steps = steps_per_epoch * spec.n_epochs
    if spec.resume_from is not None:
        adapter = base.load_adapter(spec.resume_from)
    else:
        adapter = base.new_adapter(spec.lora_r, spec.lora_alpha, spec.seed)
    optimizer = adamw(adapter.parameters(), spec.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(total_steps))
    run = JobRun(job_id, spec, reporter, adapter, optimizer, scheduler, total_steps)
    if spec.resume_from is not None:
        # Only tensors and plain values: the RNG state is a tensor, so no pickled code is ever loaded.
        state = torch.load(spec.resume_from / STATE_FILE, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        run.step, run.epoch, run.trained_tokens = state["step"], state["epoch"] + 1, state["trained_tokens"]
        if state.get("batch") is not None:  # stopped mid-epoch (pause, time limit): the rest of that epoch next
            run.epoch, run.index = state["epoch"], state["batch"]
    run.epoch_batches = batches(spec.train, spec.batch_size, spec.seed, run.epoch)
    if run.epoch >= spec.n_epochs:
        _finish(base, run)
    return run


def _save(base: SharedBase, run: JobRun, path: Path, epoch: int, batch: int | None) -> None:
    base.save_adapter(run.adapter, path)
    torch.save({"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(), "step": run.step,
                "epoch": epoch, "batch": batch, "trained_tokens": run.trained_tokens,
                "rng": torch.get_rng_state()}, path / STATE_FILE)


def _finish(base: SharedBase, run: JobRun) -> None:
    final = run.spec.out_dir / FINAL_FOLDER
    base.save_adapter(run.adapter, final)
    run.result = TrainResult(final, run.trained_tokens, run.step, run.history)


def _chunks(rows: list[tuple[int, Encoded]], budget: int) -> list[list[tuple[int, Encoded]]]:
    """Cut rows, sorted by length, into chunks of at most budget padded tokens (one row at least)."""
    ordered = sorted(rows, key=lambda row: len(row[1].input_ids))
    chunks: list[list[tuple[int, Encoded]]] = []
    current: list[tuple[int, Encoded]] = []
    for row in ordered:
        # Sorted ascending: this row is the longest of the chunk, so it sets the chunk's padded width.
        if current and (len(current) + 1) * len(row[1].input_ids) > budget:
            chunks.append(current)
            current = []
        current.append(row)
    if current:
        chunks.append(current)
    return chunks


def _layer_routes(owners: list[int], adapters: Sequence[Adapter]) -> list[list[Route]]:
    """For each adapted layer, each job's run of rows (owners is sorted) with that job's A and B for the layer."""
    spans: list[tuple[int, int, int]] = []
    for row, owner in enumerate(owners):
        if spans and spans[-1][0] == owner:
            spans[-1] = (owner, spans[-1][1], row + 1)
        else:
            spans.append((owner, row, row + 1))
    layers = len(adapters[owners[0]].pairs)
    return [[(begin, end, *adapters[owner].pairs[index], adapters[owner].scaling) for owner, begin, end in spans]
            for index in range(layers)]


def _pass(base: SharedBase, rows: list[tuple[int, Encoded]], adapters: Sequence[Adapter], pad_id: int,
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One padded pass over rows: each labelled position's loss, whether it was guessed, its job and its label; and
    the mask."""
    rows = sorted(rows, key=lambda row: row[0])  # stable: each job's rows together, in their batch order
    owners = [owner for owner, _ in rows]
    ids, mask, labels = collate([example for _, example in rows], pad_id, base.device)
    for layer, routes in zip(base.layers, _layer_routes(owners, adapters), strict=True):
        layer.routes = routes
    try:
        logits, targets, at_rows = base.labelled(ids, mask, labels)
    finally:
        base.route([])
    losses = F.cross_entropy(logits, targets, reduction="none")
    with torch.no_grad():
        correct = guessed(logits, targets)
    return losses, correct, torch.tensor(owners, device=ids.device)[at_rows], targets, mask


def _labelled_weight(example: Encoded, ends: Sequence[int]) -> float:
    """The example's labelled tokens as the objective weighs them (training.label_weights: turn ends count more)."""
    return sum(TURN_END_WEIGHT if label in ends else 1.0 for label in example.labels[1:] if label != IGNORE)


def _labelled_count(example: Encoded) -> int:
    return sum(1 for label in example.labels[1:] if label != IGNORE)


@dataclass(frozen=True)
class StepOutcome:
    """One job's share of a group step."""

    loss: float
    correct: int
    count: int
    tokens: int  # real (unpadded) tokens of the job's batch


def group_step(base: SharedBase, runs: Sequence[JobRun], pad_id: int,
               chunk_tokens: int = GROUP_CHUNK_TOKENS) -> list[StepOutcome]:
    """Forward and backward every job's next batch together, then step each job's own optimizer and schedule."""
    rows = [(owner, example) for owner, run in enumerate(runs) for example in run.batch()]
    counts = [sum(_labelled_count(example) for example in run.batch()) for run in runs]
    # One base model, one family: the same turn ends for every job of the group.
    ends = runs[0].spec.turn_ends if runs else ()
    weighted = [sum(_labelled_weight(example, ends) for example in run.batch()) for run in runs]
    adapters = [run.adapter for run in runs]
    loss_sums = torch.zeros(len(runs), dtype=torch.float64)
    correct = [0] * len(runs)
    tokens = [sum(len(example.input_ids) for example in run.batch()) for run in runs]
    divisors = torch.tensor([max(1.0, total) for total in weighted], dtype=torch.float32, device=base.device)
    for chunk in _chunks(rows, chunk_tokens):
        losses, right, owners, targets, _ = _pass(base, chunk, adapters, pad_id)
        # Each job's objective is the weighted mean over its labelled tokens (turn ends weighted, as
        # training.training_objective), whichever chunks they fell in; the reported loss stays the plain mean.
        (losses * label_weights(targets, ends) / divisors[owners]).sum().backward()
        with torch.no_grad():
            loss_sums.index_add_(0, owners.cpu(), losses.detach().double().cpu())
            for owner, hits in zip(*torch.unique(owners[right], return_counts=True), strict=True):
                correct[int(owner)] += int(hits)
    for run in runs:
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
    return [StepOutcome(float(loss_sums[i]) / max(1, counts[i]), correct[i], counts[i], tokens[i])
            for i in range(len(runs))]


def evaluate(base: SharedBase, adapter: Adapter, examples: Sequence[Encoded], batch_size: int,
             pad_id: int) -> tuple[float, float]:
    """Mean loss and token accuracy of one job's LoRA over examples, batched as training.evaluate batches them."""
    total_loss, total_correct, total_count = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = [(0, example) for example in examples[start : start + batch_size]]
            losses, right, _, _, _ = _pass(base, chunk, [adapter], pad_id)
            count = int(losses.numel())
            # As training.evaluate: each batch's mean loss weighted by its labelled tokens.
            total_loss += float(losses.mean()) * count if count else 0.0
            total_correct += int(right.sum())
            total_count += count
    return total_loss / max(1, total_count), total_correct / max(1, total_count)


def after_step(base: SharedBase, run: JobRun, outcome: StepOutcome, seconds: float) -> None:
    """Record one job's step as train() does: metrics, validation now and then, epoch checkpoints, a stop, the end."""
    spec = run.spec
    run.step += 1
    run.trained_tokens += outcome.tokens
    metrics: dict[str, Any] = {"step": run.step, "train_loss": outcome.loss, "total_steps": run.total_steps,
                               "train_mean_token_accuracy": outcome.correct / max(1, outcome.count)}
    steps_per_epoch = run.total_steps // spec.n_epochs
    if spec.valid and validation_due(run.step, steps_per_epoch, run.total_steps, spec.eval_every):
        metrics.update(validation_metrics(evaluate(base, run.adapter, spec.valid, spec.batch_size, spec.pad_id)))
    run.history.append(metrics)
    run.reporter.step(metrics, run.trained_tokens, seconds)
    last_of_epoch = run.index == len(run.epoch_batches) - 1
    reason = spec.should_stop() if spec.should_stop is not None and run.step < run.total_steps else None
    if reason is not None:
        path = spec.out_dir / f"{CHECKPOINT_PREFIX}{run.step}"
        _save(base, run, path, run.epoch, None if last_of_epoch else run.index + 1)
        run.reporter.checkpoint(run.epoch, run.step, path, metrics, False)
        run.result = TrainResult(path, run.trained_tokens, run.step, run.history, stopped=reason, checkpoint=path)
        return
    if not last_of_epoch:
        run.index += 1
        return
    path = spec.out_dir / f"{CHECKPOINT_PREFIX}{run.step}"
    _save(base, run, path, run.epoch, None)
    run.reporter.checkpoint(run.epoch, run.step, path, metrics, run.epoch == spec.n_epochs - 1)
    run.epoch += 1
    run.index = 0
    if run.epoch >= spec.n_epochs:
        _finish(base, run)
    else:
        run.epoch_batches = batches(spec.train, spec.batch_size, spec.seed, run.epoch)


def train_group(base: SharedBase, runs: list[JobRun], pad_id: int, chunk_tokens: int = GROUP_CHUNK_TOKENS,
                on_step: Callable[[list[JobRun]], None] | None = None) -> None:
    """Train runs together until every one has finished or stopped (tests and benches; the worker steps itself)."""
    while active := [run for run in runs if not run.done]:
        started = time.perf_counter()
        outcomes = group_step(base, active, pad_id, chunk_tokens)
        seconds = time.perf_counter() - started
        for run, outcome in zip(active, outcomes, strict=True):
            after_step(base, run, outcome, seconds)
        if on_step is not None:
            on_step(active)


class Unrecorded(Reporter):
    """The reporter of a run whose steps nobody keeps: the worker's trial of a lesson (LongLivedWorker._measure)."""

    def step(self, metrics: dict[str, Any], trained_tokens: int, seconds_per_step: float) -> None:
        return None

    def checkpoint(self, epoch: int, step: int, path: Path, metrics: dict[str, Any], final: bool) -> None:
        return None
