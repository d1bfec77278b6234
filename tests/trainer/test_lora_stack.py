"""The adapter stack adds each row's own adapter whatever shape the batch takes: one slot, runs of consecutive slots,
runs sharing a slot, base rows among them, or rows scattered over many slots (the gather)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model

from trainer import lora_stack
from trainer.lora_stack import LoraStack, _plan
from trainer.serving import ModelPool

from .test_serving import adapters, make_adapter, pool  # noqa: F401  (module fixtures)


def logits(stack: LoraStack, ids: torch.Tensor, slots: list[int]) -> torch.Tensor:
    """The last position's logits of a batch whose rows add the given slots' adapters."""
    with torch.inference_mode(), stack.rows(slots):
        result: torch.Tensor = stack.model(input_ids=ids).logits[:, -1, :].clone()
    return result


@pytest.mark.parametrize("slots", [[2, 2, 2, 2], [3, 1, 2, 0], [0, 2, 2, 1, 0, 3], [1, 0, 0, 3, 3, 1],
                                   [3, 2, 1, 3, 2, 1], [3, 1], [0, 3, 1, 0]])
def test_every_batch_shape_equals_each_row_alone(pool: ModelPool, adapters: list[Path],  # noqa: F811
                                                 slots: list[int]) -> None:
    """A batch gives each row what that row gets alone, by runs and by the gather alike."""
    model, _ = pool.base("tiny")
    stack = LoraStack(model, max_adapters=8, budget_bytes=1 << 30)
    assert [stack.acquire(path) for path in adapters] == [1, 2, 3]
    ids = torch.randint(3, 100, (len(slots), 5), generator=torch.Generator().manual_seed(len(slots)))
    alone = torch.cat([logits(stack, ids[row:row + 1], [slot]) for row, slot in enumerate(slots)])
    batched = logits(stack, ids, slots)
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lora_stack, "MAX_RUNS", 0)  # every mixed batch gathers
        torch.testing.assert_close(logits(stack, ids, slots), alone, rtol=1e-4, atol=1e-5)
    row = next(row for row, slot in enumerate(slots) if slot)
    assert not torch.allclose(alone[row], logits(stack, ids[row:row + 1], [0])[0]), "the adapter changed nothing"


def test_plan_takes_runs_of_consecutive_and_shared_slots() -> None:
    """Rows sorted by slot: ascending slots one row each are one run on a slice of the stacks (gaps placed, up to
    half the slice), rows sharing a slot one run on that slot, base rows no run; too many runs gather."""
    cpu = torch.device("cpu")

    def plain(plan: object) -> object:
        return plan if not isinstance(plan, list) else [
            tuple(part.tolist() if isinstance(part, torch.Tensor) else part for part in run) for run in plan]

    assert _plan([0, 0], cpu) is None
    assert _plan([5, 5, 5], cpu) == 5
    assert plain(_plan([1, 2, 3], cpu)) == [(slice(0, 3), slice(1, 4), None)]
    assert plain(_plan([3, 1, 2], cpu)) == [([1, 2, 0], slice(1, 4), None)]
    assert plain(_plan([0, 4, 4, 1, 0, 2], cpu)) == [([3, 5], slice(1, 3), None), (slice(1, 3), 4, None)]
    # The class's chats that ended left gaps: still one run, its rows placed in the slice.
    assert plain(_plan([1, 3, 5, 7, 9, 11], cpu)) == [(slice(0, 6), slice(1, 12), [0, 2, 4, 6, 8, 10])]
    assert plain(_plan([2, 3, 6, 7], cpu)) == [(slice(0, 4), slice(2, 8), [0, 1, 4, 5])]
    # More gap than rows starts a new run; past MAX_RUNS runs, the gather.
    assert plain(_plan([1, 9], cpu)) == [(slice(0, 1), slice(1, 2), None), (slice(1, 2), slice(9, 10), None)]
    scattered = _plan([1, 5, 9, 13, 17, 21], cpu)
    assert isinstance(scattered, torch.Tensor) and scattered.tolist() == [1, 5, 9, 13, 17, 21]


def test_a_layer_new_to_the_stack_leaves_earlier_adapters_unchanged(pool: ModelPool, tmp_path: Path) -> None:
    """An adapter on more layers than the ones loaded before adds those layers; the earlier adapters' rows stay what
    they were (their slots in the new layers are zero, not whatever the new memory held)."""
    base, _ = pool.base("tiny")
    torch.manual_seed(7)
    narrow = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in narrow.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.3)
    narrow.save_pretrained(str(tmp_path / "narrow" / "final"))
    wide = make_adapter(base, tmp_path / "wide" / "final", seed=11)
    stack = LoraStack(base, max_adapters=8, budget_bytes=1 << 30)
    ids = torch.randint(3, 100, (2, 5), generator=torch.Generator().manual_seed(3))
    first = stack.acquire(tmp_path / "narrow" / "final")
    assert first is not None
    before = logits(stack, ids, [first, 0])
    second = stack.acquire(wide)
    assert second is not None
    torch.testing.assert_close(logits(stack, ids, [first, second])[0], before[0])


@pytest.mark.parametrize("damage", [
    lambda data: data[:5],
    lambda data: (10 ** 9).to_bytes(8, "little") + data[8:],
    lambda data: data[:-7],
    lambda data: data[:8] + b"[" + data[9:],
    lambda data: data.replace(b"data_offsets", b"data_offsetz", 1),
])
def test_a_damaged_adapter_file_fails_its_own_chat_with_what_is_wrong(
        pool: ModelPool, adapters: list[Path], tmp_path: Path, damage: Any) -> None:  # noqa: F811
    """A cut or garbled adapter file is an AdapterError naming the folder and what is wrong (the chat's error), never
    a crash or tensors made of whatever follows the file."""
    folder = tmp_path / "ftjob-damaged" / "final"
    folder.mkdir(parents=True)
    for name in (lora_stack.ADAPTER_CONFIG, lora_stack.ADAPTER_WEIGHTS):
        data = (adapters[0] / name).read_bytes()
        (folder / name).write_bytes(damage(data) if name == lora_stack.ADAPTER_WEIGHTS else data)
    with pytest.raises(lora_stack.AdapterError, match="could not be read") as raised:
        lora_stack.read_adapter(folder)
    assert str(folder) in str(raised.value)


def test_a_chat_asks_the_system_to_read_its_new_model_ahead(adapters: list[Path], tmp_path: Path,  # noqa: F811
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """While a chat's prompt is prepared, its adapter file is asked into memory (posix_fadvise WILLNEED), so the
    engine's thread that loads it reads memory, not the disk; a folder that is gone is left to the load to report."""
    if not hasattr(lora_stack.os, "posix_fadvise"):
        pytest.skip("no posix_fadvise on this system")
    asked: list[tuple[int, int, int]] = []
    monkeypatch.setattr(lora_stack.os, "posix_fadvise", lambda fd, offset, length, advice: asked.append(
        (offset, length, advice)))
    lora_stack.read_ahead(adapters[0])
    lora_stack.read_ahead(tmp_path / "ftjob-gone" / "final")
    assert asked == [(0, 0, lora_stack.os.POSIX_FADV_WILLNEED)]
