"""Many LoRA adapters over one base model: stacked per adapted Linear, picked per batch row, never merged.

Each adapted Linear keeps A (slots, in, r) and B (slots, r, out) with the adapter's scale folded into B; slot 0 is
the zero adapter (the base model itself). A forward hook adds each row's x @ A[slot] @ B[slot] to the Linear's
output, so requests for different adapters share one forward. The rows are taken in order of their slots: a run of
rows on ascending slots (a class whose adapters were loaded together) multiplies by a view of the stacks, a run on
one slot by that slot's matrices, and the base model's rows add nothing; only a batch scattered over many slots
gathers each row's A and B (a copy of megabytes per layer and step, which cost a third of a class's decode step).
A run's slots may have gaps (the slots of chats that ended, or of other classes' models) as long as at most half its
view is gaps: its rows are placed among zero rows for the gaps, which costs reading the gaps' matrices, less than
the gather's copy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

log = logging.getLogger(__name__)

ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
# peft names a layer's weights base_model.model.<module>.lora_A.weight / .lora_B.weight.
PEFT_PREFIX = "base_model.model."
# A batch in more runs than this (rows sorted by slot) gathers every row's A and B instead: each run is a few small
# matrix products per layer, and past a handful of runs their overhead costs more than the gather's copy.
MAX_RUNS = 4

Rows = slice | torch.Tensor  # batch rows: a slice when they are consecutive, else their indices
Slots = slice | int  # a view of ascending slots, one row each at most, or one slot for every row of the run
Places = torch.Tensor | None  # where a run's rows sit in its view of slots, when the view has gaps
Plan = int | list[tuple[Rows, Slots, Places]] | torch.Tensor  # one slot for every row, runs, or a gather


class AdapterError(Exception):
    """An adapter folder this server cannot serve (missing files, or layers other than Linear ones)."""


@dataclass
class AdapterWeights:
    """One adapter read from disk: per module name, A (r, in) and B (out, r) as peft saved them, and the scale."""

    path: Path
    layers: dict[str, tuple[torch.Tensor, torch.Tensor, float]]

    @property
    def rank(self) -> int:
        """The largest rank among its layers."""
        return max((a.shape[0] for a, _, _ in self.layers.values()), default=0)


def read_adapter(path: Path) -> AdapterWeights:
    """Read an adapter saved by peft (adapter_config.json + adapter_model.safetensors) into plain tensors.

    The thread that loads it into a stack reads it (LoraStack.acquire: the engine's, or a warm-up's). A reader thread
    beside the engine's held Python's lock 11-14 ms a file while a class's first round ran, and kept the read copies
    (560 MB for 30 adapters) until the chats ended. The stack transposes and scales each matrix as it copies it in
    (LoraStack._write)."""
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text("utf-8"))
        tensors = load_file(str(path / ADAPTER_WEIGHTS))
    except (OSError, ValueError, SafetensorError) as error:
        raise AdapterError(f"the adapter in {path} could not be read: {error}") from error
    alpha, alpha_pattern = float(config.get("lora_alpha", 8)), config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora"))
    layers: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            if not key.endswith(".lora_B.weight"):
                raise AdapterError(f"the adapter in {path} has weights this server can't stack: {key}")
            continue
        name = key.removesuffix(".lora_A.weight").removeprefix(PEFT_PREFIX)
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        rank = a.shape[0]
        module_alpha = float(next((v for k, v in alpha_pattern.items() if name.endswith(k)), alpha))
        scale = module_alpha / (math.sqrt(rank) if rslora else rank)
        layers[name] = (a, b, scale)  # as peft computes it: x @ A.T @ B.T * scale
    if not layers:
        raise AdapterError(f"the adapter in {path} has no LoRA layers")
    return AdapterWeights(path, layers)


def read_ahead(path: Path) -> None:
    """Ask the system to bring an adapter's file into memory, so loading it later reads memory, not the disk (where
    the system can: posix_fadvise; it returns at once). A file that is not there is left to the load to report."""
    if not hasattr(os, "posix_fadvise"):
        return
    with contextlib.suppress(OSError), (path / ADAPTER_WEIGHTS).open("rb") as stream:
        os.posix_fadvise(stream.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)


class _Layer:
    """The stacked adapters of one Linear."""

    def __init__(self, linear: nn.Linear, capacity: int, rank: int, like: torch.Tensor) -> None:
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # A and B replaced together, in one assignment: a warm-up in another thread may grow them mid-forward.
        # Left unwritten (memory pages the system hands out when first touched): a slot is zeroed and written when
        # an adapter is loaded into it, and no batch reads a slot that holds no adapter; slot 0 is the zero adapter.
        self.stacks = (like.new_empty(capacity, self.in_features, rank), like.new_empty(capacity, rank, self.out_features))
        self.a[0].zero_()
        self.b[0].zero_()

    @property
    def a(self) -> torch.Tensor:
        """A of every slot: (slots, in, r)."""
        return self.stacks[0]

    @property
    def b(self) -> torch.Tensor:
        """B of every slot, scale folded in: (slots, r, out)."""
        return self.stacks[1]

    def resize(self, capacity: int, rank: int) -> None:
        """Grow or shrink to capacity slots of rank r, keeping the slots that remain."""
        keep, r = min(capacity, self.a.shape[0]), min(rank, self.a.shape[2])
        a = self.a.new_empty(capacity, self.in_features, rank)  # slots past `keep` are written before they are read
        b = self.b.new_empty(capacity, rank, self.out_features)
        if rank > r:  # a larger rank: the kept adapters' extra rows and columns are zero
            a[:keep, :, r:] = 0
            b[:keep, r:, :] = 0
        a[:keep, :, :r] = self.a[:keep, :, :r]
        b[:keep, :r, :] = self.b[:keep, :r, :]
        self.stacks = (a, b)


class LoraStack:
    """The adapters of one base model, loaded into slots, least recently used evicted first within a budget.

    Slots in use by a running or admitted request are pinned and never evicted. An adapter is read from its folder
    as it is loaded, under the stack's lock, by the thread that loads it (the engine's, or a warm-up)."""

    def __init__(self, model: nn.Module, max_adapters: int, budget_bytes: int) -> None:
        self.model, self.max_adapters, self.budget_bytes = model, max(1, max_adapters), budget_bytes
        self.slots: OrderedDict[Path, int] = OrderedDict()  # adapter folder -> slot, least recently used first
        self.pins: dict[int, int] = {}  # slot -> requests using it
        self._layers: dict[str, _Layer] = {}
        self._hooks: list[Any] = []
        self._capacity, self._rank = 1, 0  # slot 0 is the base model
        self._rows = threading.local()  # the slot of each row in the engine thread's current forward
        self._lock = threading.RLock()  # the engine loads and evicts; a deletion or a warm-up may come from elsewhere

    @property
    def nbytes(self) -> int:
        """Bytes the loaded adapters (and the zero adapter) take in the stacks; the slots not yet written take none."""
        return self.slot_bytes() * (len(self.slots) + 1)

    @property
    def loaded(self) -> list[Path]:
        """Adapter folders in the stack, least recently used first."""
        return list(self.slots)

    def slot_bytes(self, rank: int | None = None) -> int:
        """Bytes one slot takes in every stacked layer (at the given rank, else the stack's own)."""
        return self._bytes([(layer.in_features, layer.out_features) for layer in self._layers.values()],
                           rank if rank is not None else self._rank)

    def _bytes(self, sizes: list[tuple[int, int]], rank: int) -> int:
        """Bytes one slot takes in layers of these (in, out) sizes at a rank."""
        element = next(self.model.parameters()).element_size()
        return sum((inputs + outputs) * rank * element for inputs, outputs in sizes)

    def acquire(self, path: Path) -> int | None:
        """Pin an adapter's slot, loading it (evicting unpinned ones) when needed; None when every slot is pinned."""
        with self._lock:
            if path in self.slots:
                self.slots.move_to_end(path)
                slot = self.slots[path]
            else:
                weights = read_adapter(path)
                found = self._free_slot(weights)
                if found is None:
                    return None
                slot = found
                self._write(slot, weights)
                self.slots[path] = slot
                log.info("Loaded adapter %s into slot %d (%d adapters, %.0f MB)", path.parent.name, slot,
                         len(self.slots), self.nbytes / 1e6)
            self.pins[slot] = self.pins.get(slot, 0) + 1
            return slot

    def release(self, slot: int) -> None:
        """Unpin a slot one request used."""
        if slot == 0:
            return
        with self._lock:
            self.pins[slot] -= 1
            if not self.pins[slot]:
                del self.pins[slot]

    def forget(self, folder: Path) -> None:
        """Drop adapters from a folder (a deleted model): their slots are free for others at once."""
        with self._lock:
            for path in [path for path in self.slots if path.is_relative_to(folder)]:
                del self.slots[path]

    def compact(self) -> None:
        """Shrink the stacks to the adapters still loaded (when nothing runs), so memory follows what is in use."""
        with self._lock:
            if not self.pins and self._layers:
                self._compact()

    def _compact(self) -> None:
        used = sorted(self.slots.values())
        capacity = max(1, _pow2(len(used) + 1))
        if capacity >= self._capacity:
            return
        order = torch.tensor([0, *used], device=next(iter(self._layers.values())).a.device)
        for layer in self._layers.values():
            layer.stacks = (layer.a.index_select(0, order), layer.b.index_select(0, order))
            layer.resize(capacity, self._rank)
        renumber = {old: new for new, old in enumerate(used, start=1)}
        self.slots = OrderedDict((path, renumber[slot]) for path, slot in self.slots.items())
        self._capacity = capacity

    @contextlib.contextmanager
    def rows(self, slots: list[int]) -> Iterator[None]:
        """Within this block, this thread's forward passes add each row's adapter (slots: one per batch row)."""
        self._rows.plan = _plan(slots, self.device) if self._layers else None
        try:
            yield
        finally:
            self._rows.plan = None

    @property
    def device(self) -> torch.device:
        """Where the base model (and so the stacks) lives."""
        return next(self.model.parameters()).device

    def _hook(self, name: str) -> Any:
        def add_adapter(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
            plan: Plan | None = getattr(self._rows, "plan", None)
            if plan is None:
                return None
            a, b = self._layers[name].stacks
            x = args[0]
            if isinstance(plan, int):  # every row on one adapter: out += (x @ A) @ B, in place
                _add_one(output, x, a[plan], b[plan])
                return output
            rows = x.reshape(x.shape[0], -1, x.shape[-1])
            out = output.view(x.shape[0], -1, output.shape[-1])
            if isinstance(plan, torch.Tensor):  # scattered over many slots: gather each row's A and B
                out.baddbmm_(torch.bmm(rows, a[plan]), b[plan])
                return output
            for run, slots, places in plan:
                xs = rows[run] if isinstance(run, slice) else rows.index_select(0, run)
                if places is not None:  # zero rows for the view's gaps
                    assert isinstance(slots, slice)
                    spread = xs.new_zeros(slots.stop - slots.start, *xs.shape[1:]).index_copy_(0, places, xs)
                    delta = torch.bmm(torch.bmm(spread, a[slots]), b[slots]).index_select(0, places)
                elif isinstance(run, slice):  # the run's outputs are one block: added to it in place
                    block = out[run]
                    if isinstance(slots, int):
                        _add_one(block, xs, a[slots], b[slots])
                    else:
                        block.baddbmm_(torch.bmm(xs, a[slots]), b[slots])
                    continue
                elif isinstance(slots, int):
                    delta = (xs @ a[slots]) @ b[slots]
                else:
                    delta = torch.bmm(torch.bmm(xs, a[slots]), b[slots])
                if isinstance(run, slice):
                    out[run] += delta
                else:
                    out.index_add_(0, run, delta)
            return output
        return add_adapter

    def _limit(self, slot_bytes: int | None = None) -> int:
        """How many adapters the budget and the count allow (at least one), at the stack's slot size or the one
        given."""
        size = self.slot_bytes() if slot_bytes is None else slot_bytes
        return min(self.max_adapters, max(1, self.budget_bytes // max(1, size)))

    def _free_slot(self, weights: AdapterWeights) -> int | None:
        self._ensure_layers(weights)
        taken = set(self.slots.values()) | set(self.pins)  # a deleted model's slot stays taken while it answers
        limit = self._limit()
        if len(self.slots) < limit:
            for slot in range(1, self._capacity):
                if slot not in taken:
                    return slot
            if self._capacity - 1 < limit:
                # Straight to the most the budget allows, in one copy: the new slots' memory is only taken when an
                # adapter is written into them (a class arriving at once would otherwise copy the stack per doubling).
                self._resize(limit + 1, self._rank)
                return self._free_slot(weights)
        for path, slot in self.slots.items():  # least recently used first
            if slot not in self.pins:
                del self.slots[path]
                log.info("Evicted adapter %s from slot %d", path.parent.name, slot)
                return slot
        return None

    def _ensure_layers(self, weights: AdapterWeights) -> None:
        if not self._layers:
            # The first adapter: the stacks are made at once with room for as many as the budget holds (made small
            # and grown at once, they cost a class's first chat 0.3 s more); a slot takes memory once written.
            size = self._bytes([(a.shape[1], b.shape[0]) for a, b, _ in weights.layers.values()], weights.rank)
            self._capacity = max(self._capacity, self._limit(size) + 1)
        if weights.rank > self._rank:
            self._resize(self._capacity, weights.rank)
        for name in weights.layers:
            if name in self._layers:
                continue
            try:
                module = self.model.get_submodule(name)
            except AttributeError:
                raise AdapterError(f"the adapter in {weights.path} adapts {name}, which the base model lacks") from None
            if not isinstance(module, nn.Linear):
                raise AdapterError(f"the adapter in {weights.path} adapts {name}, which is not a Linear layer")
            layer = self._layers[name] = _Layer(module, self._capacity, self._rank, next(self.model.parameters()))
            for slot in set(self.slots.values()) | set(self.pins):  # adapters loaded before leave this layer alone
                layer.a[slot].zero_()
                layer.b[slot].zero_()
            self._hooks.append(module.register_forward_hook(self._hook(name)))

    def _resize(self, capacity: int, rank: int) -> None:
        for layer in self._layers.values():
            layer.resize(capacity, rank)
        self._capacity, self._rank = capacity, rank

    def _write(self, slot: int, weights: AdapterWeights) -> None:
        """Write an adapter into a slot: its matrices, zeros where it has none (a layer it leaves alone, a smaller
        rank). Each byte is written once: zeroing the slot first doubled a class's loading, on the engine's thread."""
        for name, layer in self._layers.items():
            if name not in weights.layers:
                layer.a[slot].zero_()
                layer.b[slot].zero_()
                continue
            a, b, scale = weights.layers[name]
            if a.shape[1] != layer.in_features or b.shape[0] != layer.out_features:
                raise AdapterError(f"the adapter in {weights.path} does not fit {name} of the base model")
            rank = a.shape[0]
            layer.a[slot, :, :rank] = a.t()
            torch.mul(b.t(), scale, out=layer.b[slot, :rank, :])  # the scale folded into B, as it is copied
            if rank < layer.a.shape[2]:
                layer.a[slot, :, rank:].zero_()
                layer.b[slot, rank:, :].zero_()


def _add_one(out: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out += (x @ a) @ b in place, for rows that all add one adapter (out contiguous, as a Linear's output is)."""
    out.view(-1, out.shape[-1]).addmm_((x @ a).view(-1, a.shape[-1]), b)


def _plan(slots: list[int], device: torch.device) -> Plan | None:
    """How a batch adds its rows' adapters: None for the base alone, one slot, runs of rows, or a gather."""
    distinct = set(slots)
    if distinct == {0}:
        return None
    if len(distinct) == 1:
        return slots[0]
    order = sorted(range(len(slots)), key=slots.__getitem__)
    ordered = [slots[row] for row in order]
    runs: list[tuple[Rows, Slots, Places]] = []
    start = 0
    while start < len(order):
        slot, end = ordered[start], start + 1
        if end < len(order) and ordered[end] == slot:  # rows sharing one adapter
            while end < len(order) and ordered[end] == slot:
                end += 1
            if slot:  # the base model's rows add nothing
                runs.append((_rows(order[start:end], device), slot, None))
        else:  # rows on ascending slots, one each (a row starting a shared run begins the next run), gaps <= half
            while (end < len(order) and ordered[end] > ordered[end - 1]
                   and (end + 1 == len(order) or ordered[end + 1] != ordered[end])
                   and ordered[end] - slot + 1 <= 2 * (end + 1 - start)):
                end += 1
            view = slice(slot, ordered[end - 1] + 1)
            places = None if view.stop - view.start == end - start else \
                torch.tensor([s - slot for s in ordered[start:end]], device=device)
            runs.append((_rows(order[start:end], device), view, places))
        start = end
    if len(runs) > MAX_RUNS:
        return torch.tensor(slots, device=device)
    return runs


def _rows(rows: list[int], device: torch.device) -> Rows:
    """Batch rows as a slice when they are consecutive (no copy of their inputs), else as an index."""
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return slice(rows[0], rows[0] + len(rows))
    return torch.tensor(rows, device=device)


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()
