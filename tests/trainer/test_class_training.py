"""Training a class: several jobs in one batched pass (grouped.py) and the long-lived worker that runs them.

In-process on the tiny model: the worker's loop is driven turn by turn against a real store, so every outcome
(a bad file, a cancel, a pause) lands at a known step without waiting on a process.
"""

from __future__ import annotations

import io
import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from support.trainer_harness import TINY_RATE_MULTIPLIER, chat_file
from trainer import grouped
from trainer.config import STATE_FILE, Settings
from trainer.modeling import load_tokenizer
from trainer.store import Store
from trainer.training import TrainSpec, encode_file, train
from trainer.worker import Controls, LongLivedWorker

TOLERANCE = 1e-4  # float rounding of different batch shapes; a wrong gradient or data order is off by far more
# bfloat16 matmuls round to 8 bits of mantissa: on the tiny model the same job's losses in another batch shape differ
# by ~2e-3, against float32 training by ~7e-3; one step's loss differs from the next by 0.2-0.6, so a wrong gradient
# or data order is off by far more.
BF16_TOLERANCE = 0.03
MAX_LEN = 96


class Losses:
    """A reporter that keeps each step's loss."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def step(self, metrics: dict[str, Any], trained_tokens: int, seconds_per_step: float) -> None:
        self.losses.append(metrics["train_loss"])

    def checkpoint(self, epoch: int, step: int, path: Path, metrics: dict[str, Any], final: bool) -> None:
        pass


def spec_for(model: Path, examples: list[Any], pad_id: int, out: Path, seed: int, **changes: Any) -> TrainSpec:
    """A job's training spec with the tiny model's small settings."""
    values: dict[str, Any] = {"source": str(model), "device": "cpu", "train": examples, "valid": [], "pad_id": pad_id,
                              "n_epochs": 2, "batch_size": 3, "learning_rate": 1e-2, "seed": seed, "lora_r": 4,
                              "lora_alpha": 8, "out_dir": out, **changes}
    return TrainSpec(**values)


@pytest.fixture(scope="module")
def files(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[list[Any]]:
    """Three students' encoded files of different sizes and questions."""
    tokenizer = load_tokenizer(str(tiny_model))
    folder = tmp_path_factory.mktemp("class-files")
    sets = []
    for index in range(3):
        path = folder / f"train{index}.jsonl"
        path.write_bytes(chat_file(8 + 3 * index, start=index))
        sets.append(encode_file(tokenizer, path, MAX_LEN))
    return sets


@pytest.fixture(scope="module")
def alone(tiny_model: Path, files: list[list[Any]], tmp_path_factory: pytest.TempPathFactory) -> list[list[float]]:
    """Each student's step losses with the job trained alone by train(), seeds 7, 8, 9."""
    torch.set_num_threads(1)
    pad_id = load_tokenizer(str(tiny_model)).pad_token_id
    folder = tmp_path_factory.mktemp("alone")
    losses = []
    for index, examples in enumerate(files):
        reported = Losses()
        train(spec_for(tiny_model, examples, pad_id, folder / str(index), 7 + index), reported)
        losses.append(reported.losses)
    return losses


def assert_as_alone(alone: list[list[float]], reported: list[Losses]) -> None:
    """Each job reported, step by step, the losses it has trained alone."""
    for solo, losses in zip(alone, reported, strict=True):
        assert len(losses.losses) == len(solo)
        assert max(abs(a - b) for a, b in zip(solo, losses.losses, strict=True)) < TOLERANCE


def class_runs(model: Path, files: list[list[Any]],
               out: Path) -> tuple[grouped.SharedBase, int, list[Losses], list[grouped.JobRun]]:
    """One shared base and each student's job on it, seeded as `alone` seeds them, each reporting its losses."""
    pad_id = load_tokenizer(str(model)).pad_token_id
    base = grouped.SharedBase(str(model), "cpu")
    reported = [Losses() for _ in files]
    runs = [grouped.start_run(base, f"job{index}", spec_for(model, examples, pad_id, out / f"job{index}", 7 + index),
                              reported[index]) for index, examples in enumerate(files)]
    return base, pad_id, reported, runs


def test_group_losses_equal_each_job_trained_alone(tiny_model: Path, files: list[list[Any]], alone: list[list[float]],
                                                   tmp_path: Path) -> None:
    """Three jobs trained in one batched pass report, step by step, the losses train() gives each alone."""
    torch.set_num_threads(1)
    base, pad_id, together, runs = class_runs(tiny_model, files, tmp_path)
    grouped.train_group(base, runs, pad_id, chunk_tokens=200)  # small chunks: rows of one job span several passes
    assert_as_alone(alone, together)
    assert all(run.done and run.result is not None and run.result.stopped is None for run in runs)


def test_jobs_in_threads_through_one_base_train_as_each_alone(tiny_model: Path, files: list[list[Any]],
                                                              alone: list[list[float]], tmp_path: Path) -> None:
    """Three jobs trained at the same time in three threads through one shared base (the worker's lanes) report the
    losses each has alone: every thread's pass routes its own rows to its own job's LoRA."""
    base, pad_id, reported, runs = class_runs(tiny_model, files, tmp_path)
    started = threading.Barrier(len(runs))
    errors: list[BaseException] = []

    def lane(run: grouped.JobRun) -> None:
        torch.set_num_threads(1)
        started.wait(timeout=60)
        try:
            grouped.train_group(base, [run], pad_id)
        except BaseException as error:  # handed to the test's thread
            errors.append(error)

    threads = [threading.Thread(target=lane, args=(run,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and not any(thread.is_alive() for thread in threads)
    assert_as_alone(alone, reported)
    assert all(layer.routes == [] for layer in base.layers)  # this thread's routes: none was left behind


def test_bfloat16_matmuls_train_as_float32_does(tiny_model: Path, files: list[list[Any]], tmp_path: Path) -> None:
    """A base multiplying in bfloat16 converts its linear layers and the embeddings the output layer shares (their
    lookups still float32), and trains a job as the float32 base does: the same losses to bfloat16's rounding, a
    float32 adapter."""
    torch.set_num_threads(1)
    pad_id = load_tokenizer(str(tiny_model)).pad_token_id
    losses: dict[str, list[float]] = {}
    for precision, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
        base = grouped.SharedBase(str(tiny_model), "cpu", matmul_dtype=dtype)
        reported = Losses()
        run = grouped.start_run(base, precision, spec_for(tiny_model, files[0], pad_id, tmp_path / precision, 3),
                                reported)
        grouped.train_group(base, [run], pad_id)
        losses[precision] = reported.losses
    layer = base.layers[0].base
    assert layer.weight.dtype == torch.bfloat16 and not layer.weight.requires_grad
    head, embeddings = base.model.get_output_embeddings(), base.model.get_input_embeddings()
    assert isinstance(head, grouped.CastLinear) and head.weight.dtype == torch.bfloat16
    assert head.weight.data_ptr() == embeddings.weight.data_ptr()  # converted in place, not copied
    assert embeddings(torch.tensor([[1, 2]])).dtype == torch.float32
    assert all(tensor.dtype == torch.float32 for tensor in run.adapter.parameters())
    assert run.result is not None
    saved = load_file(str(run.result.adapter_dir / grouped.ADAPTER_WEIGHTS))
    assert {tensor.dtype for tensor in saved.values()} == {torch.float32}
    assert len(losses["bfloat16"]) == len(losses["float32"])
    assert max(abs(a - b) for a, b in zip(losses["float32"], losses["bfloat16"], strict=True)) < BF16_TOLERANCE
    assert losses["bfloat16"][-1] < losses["bfloat16"][0]  # it learned


def test_group_adapter_loads_in_peft_as_the_solo_one_does(tiny_model: Path, files: list[list[Any]],
                                                          tmp_path: Path) -> None:
    """The adapter a group saves loads with PeftModel.from_pretrained and answers as the solo adapter does."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    pad_id = load_tokenizer(str(tiny_model)).pad_token_id
    solo = train(spec_for(tiny_model, files[0], pad_id, tmp_path / "alone", 3), Losses())
    base = grouped.SharedBase(str(tiny_model), "cpu")
    runs = [grouped.start_run(base, f"job{index}", spec_for(tiny_model, files[index], pad_id,
                                                             tmp_path / f"group{index}", 3 + index), Losses())
            for index in range(2)]
    grouped.train_group(base, runs, pad_id)
    assert runs[0].result is not None
    ids = torch.tensor([files[0][0].input_ids])
    answers = []
    for folder in (solo.adapter_dir, runs[0].result.adapter_dir):
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model)), str(folder))
        with torch.no_grad():
            answers.append(model(input_ids=ids).logits)
    assert torch.allclose(answers[0], answers[1], atol=1e-4)
    saved = json.loads((runs[0].result.adapter_dir / "adapter_config.json").read_text())
    assert saved["r"] == 4 and saved["lora_alpha"] == 8 and saved["peft_type"] == "LORA"


# The long-lived worker, driven turn by turn against a real store.

@pytest.fixture
def class_store(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """A trainer data folder and its store, with the worker's settings in the environment."""
    env = {"TRAINER_DATA_DIR": str(tmp_path / "data"), "TRAINER_BASE_MODELS": f"tiny={tiny_model}",
           "TRAINER_MAX_SEQ_LEN": str(MAX_LEN), "TRAINER_TORCH_THREADS": "1", "TRAINER_DEVICE": "cpu",
           "TRAINER_LORA_R": "4", "TRAINER_LORA_ALPHA": "8",
           "TRAINER_TRAIN_PRECISION": "float32"}  # exact comparisons on any CPU; bfloat16 where a test says so
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    store = Store(tmp_path / "data" / "trainer.db")
    try:
        yield store
    finally:
        store.close()


_NUMBERS = itertools.count(1)


def add_running_job(store: Store, model: Path, content: bytes, seed: int, epochs: int = 2) -> str:
    """A job as the scheduler hands it over: its file recorded, its status running."""
    folder = Settings.from_env().data_dir / "files"
    folder.mkdir(parents=True, exist_ok=True)
    number = next(_NUMBERS)
    file_id = f"file-{number}"
    (folder / file_id).write_bytes(content)
    store.add_file(file_id, "train.jsonl", "fine-tune", len(content), folder / file_id)
    job_id = f"ftjob-{number:08d}{0:016d}"  # the model name takes the first 8 characters
    store.add_job(id=job_id, model="tiny", base_source=str(model), training_file=file_id, validation_file=None,
                  hyperparameters={"n_epochs": epochs, "batch_size": 2,
                                   "learning_rate_multiplier": TINY_RATE_MULTIPLIER},
                  suffix=None, seed=seed, metadata=None)
    store.update_job(job_id, status="running")
    return job_id


def step_losses(store: Store, job_id: str) -> list[float]:
    """The training loss of each reported step."""
    return [metrics["train_loss"] for metrics in store.metrics(job_id)]


def new_worker(controls: Controls) -> tuple[LongLivedWorker, list[dict[str, Any]]]:
    """A long-lived worker whose reports are kept in a list."""
    said: list[dict[str, Any]] = []
    return LongLivedWorker("cpu", said.append, controls), said


def handed_over(store: Store, model: Path, count: int) -> tuple[list[str], Controls, LongLivedWorker,
                                                                 list[dict[str, Any]]]:
    """`count` students' jobs of 6 examples, handed over together to a new long-lived worker."""
    jobs = [add_running_job(store, model, chat_file(6, start=i), seed=i + 1) for i in range(count)]
    controls = Controls()
    worker, said = new_worker(controls)
    for job_id in jobs:
        controls.give("train", job_id)
    return jobs, controls, worker, said


def counted_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The sources of the base models loaded for training from now on, in order (the load itself still happens)."""
    loads: list[str] = []
    real = grouped.SharedBase.__init__

    def counted(self: grouped.SharedBase, source: str, *args: Any, **kwargs: Any) -> None:
        loads.append(source)
        real(self, source, *args, **kwargs)

    monkeypatch.setattr(grouped.SharedBase, "__init__", counted)
    return loads


def test_worker_bad_file_fails_only_its_own_job(class_store: Store, tiny_model: Path) -> None:
    """A file that cannot be read by the time it trains fails its job; the other jobs of the group succeed."""
    jobs, _, worker, said = handed_over(class_store, tiny_model, 3)
    bad = class_store.file(class_store.job(jobs[1])["training_file"])  # type: ignore[index]
    Path(bad["path"]).write_bytes(b"{not json\n")  # type: ignore[index]
    while worker.turn():
        pass
    statuses = [class_store.job(job_id)["status"] for job_id in jobs]  # type: ignore[index]
    assert statuses == ["succeeded", "failed", "succeeded"]
    failed = json.loads(class_store.job(jobs[1])["error"])  # type: ignore[index]
    assert failed["code"] == "server_error" and "start the job again" in failed["message"]
    assert sorted(report["job"] for report in said if report["event"] == "done") == sorted(jobs)


def test_worker_cancel_of_one_job_leaves_the_group_to_succeed(class_store: Store, tiny_model: Path) -> None:
    """Cancelling one job mid-group stops its reports; the others train on to success with every step reported."""
    jobs, controls, worker, said = handed_over(class_store, tiny_model, 3)
    worker.turn()
    worker.turn()
    class_store.update_job(jobs[0], status="cancelled")  # what the scheduler records, then tells the worker
    controls.give("cancel", jobs[0])
    while worker.turn():
        pass
    assert [len(step_losses(class_store, job_id)) for job_id in jobs] == [2, 6, 6]
    assert [class_store.job(job_id)["status"] for job_id in jobs] == [  # type: ignore[index]
        "cancelled", "succeeded", "succeeded"]
    assert class_store.last_checkpoint(jobs[0]) is None
    assert [report["job"] for report in said if report["event"] == "done"][0] == jobs[0]


def test_worker_trains_job_after_job_with_the_base_loaded_once(class_store: Store, tiny_model: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A second job handed over after the first ended trains on the same loaded base: no new load."""
    loads = counted_loads(monkeypatch)
    controls = Controls()
    worker, _ = new_worker(controls)
    for seed in (1, 2):
        job_id = add_running_job(class_store, tiny_model, chat_file(6, start=seed), seed=seed)
        controls.give("train", job_id)
        while worker.turn():
            pass
        assert class_store.job(job_id)["status"] == "succeeded"  # type: ignore[index]
    assert loads == [str(tiny_model)]


@pytest.mark.parametrize(("precision", "tolerance", "lanes"), [
    ("float32", TOLERANCE, 1), ("bfloat16", BF16_TOLERANCE, 1),
    ("float32", TOLERANCE, 2),  # the two jobs side by side in two threads, one thread each
])
def test_worker_job_in_a_group_matches_it_alone_and_survives_pause_and_resume(
        class_store: Store, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, precision: str, tolerance: float,
        lanes: int) -> None:
    """A job paused mid-epoch in a group (or a lane) and resumed later reports the same losses as the job trained
    alone."""
    monkeypatch.setenv("TRAINER_TRAIN_PRECISION", precision)
    monkeypatch.setenv("TRAINER_TORCH_THREADS", str(lanes))
    monkeypatch.setenv("TRAINER_TRAIN_LANES", str(lanes))
    alone = add_running_job(class_store, tiny_model, chat_file(7), seed=5, epochs=3)
    controls = Controls()
    worker, _ = new_worker(controls)
    controls.give("train", alone)
    while worker.turn():
        pass
    reference = step_losses(class_store, alone)
    assert len(reference) == 12

    paused = add_running_job(class_store, tiny_model, chat_file(7), seed=5, epochs=3)
    other = add_running_job(class_store, tiny_model, chat_file(9, start=4), seed=6, epochs=3)
    controls.give("train", paused)
    controls.give("train", other)
    for _ in range(6):  # mid-epoch: an epoch is 4 steps
        worker.turn()
    class_store.update_job(paused, status="paused")
    controls.give("pause", paused)
    worker.turn()
    assert class_store.job(paused)["status"] == "paused"  # type: ignore[index]
    assert class_store.last_checkpoint(paused)["step"] == 7  # type: ignore[index]
    adapters = Settings.from_env().adapters_dir
    assert (adapters(paused) / "ckpt-step-7" / STATE_FILE).is_file()  # what the resume needs
    class_store.update_job(paused, status="running")  # resumed: the scheduler hands it over again
    controls.give("train", paused)
    while worker.turn():
        pass
    assert class_store.job(paused)["status"] == "succeeded"  # type: ignore[index]
    assert class_store.job(other)["status"] == "succeeded"  # type: ignore[index]
    resumed = step_losses(class_store, paused)
    assert len(resumed) == len(reference)
    assert max(abs(a - b) for a, b in zip(reference, resumed, strict=True)) < tolerance
    # Succeeded jobs never resume: every checkpoint keeps its adapter (a model to chat with), not the resume state.
    for job_id in (alone, paused, other):
        checkpoints = sorted(adapters(job_id).glob("ckpt-step-*"))
        assert len(checkpoints) >= 3 and (adapters(job_id) / "final" / grouped.ADAPTER_WEIGHTS).is_file()
        assert all((folder / grouped.ADAPTER_WEIGHTS).is_file() for folder in checkpoints)
        assert not list(adapters(job_id).glob(f"*/{STATE_FILE}"))


def test_worker_lanes_train_each_job_as_alone_and_a_failing_step_fails_only_its_job(
        class_store: Store, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With two threads and two lanes the worker steps its jobs side by side in two threads, each job reporting the
    losses it has trained alone; a job whose step fails is failed alone, the lanes' other jobs succeed."""
    contents = [(chat_file(6, start=index), index + 1) for index in range(3)]
    controls = Controls()
    worker, _ = new_worker(controls)
    assert worker.lanes == 1  # TRAINER_TORCH_THREADS=1: one lane
    reference = []
    for content, seed in contents:
        job_id = add_running_job(class_store, tiny_model, content, seed=seed)
        controls.give("train", job_id)
        while worker.turn():
            pass
        reference.append(step_losses(class_store, job_id))

    monkeypatch.setenv("TRAINER_TORCH_THREADS", "2")
    monkeypatch.setenv("TRAINER_TRAIN_LANES", "2")
    jobs = [add_running_job(class_store, tiny_model, content, seed=seed) for content, seed in contents]
    broken = add_running_job(class_store, tiny_model, chat_file(6, start=5), seed=9)
    lanes: list[tuple[str, list[str], int]] = []  # each lane's step: its thread, its jobs, its passes' tokens
    real = grouped.group_step

    def spied(base: grouped.SharedBase, runs: list[grouped.JobRun], pad_id: int,
              chunk_tokens: int) -> list[grouped.StepOutcome]:
        lanes.append((threading.current_thread().name, [run.job_id for run in runs], chunk_tokens))
        if any(run.job_id == broken for run in runs):
            raise RuntimeError("a step that fails")
        return real(base, runs, pad_id, chunk_tokens)

    monkeypatch.setattr(grouped, "group_step", spied)
    controls = Controls()
    worker, said = new_worker(controls)
    assert worker.lanes == 2
    for job_id in [*jobs, broken]:
        controls.give("train", job_id)
    while worker.turn():
        pass
    assert [class_store.job(job_id)["status"] for job_id in jobs] == ["succeeded"] * 3  # type: ignore[index]
    assert class_store.job(broken)["status"] == "failed"  # type: ignore[index]
    assert "a training step failed" in json.loads(class_store.job(broken)["error"])["message"]  # type: ignore[index]
    for job_id, solo in zip(jobs, reference, strict=True):
        losses = step_losses(class_store, job_id)
        assert len(losses) == len(solo)
        assert max(abs(a - b) for a, b in zip(solo, losses, strict=True)) < TOLERANCE
    threads = {thread for thread, _, _ in lanes}
    assert len(threads) == 2 and any(name.startswith("lane") for name in threads)
    # Two lanes share one pass's bound on activations: half of it each.
    assert {chunk for thread, _, chunk in lanes if thread.startswith("lane")} == {grouped.GROUP_CHUNK_TOKENS // 2}
    assert sorted(report["job"] for report in said if report["event"] == "done") == sorted([*jobs, broken])


def test_jobs_handed_over_while_the_base_loads_start_cold(class_store: Store, tiny_model: Path) -> None:
    """Jobs handed over together to a worker that loads their base all wait for the load: each says so (the queue
    counts their start-up as a cold one); a job handed over once the base is loaded starts warm."""
    from trainer.timing import LOADING_MESSAGE

    def loaded(job_id: str) -> bool:
        return any(row["message"] == LOADING_MESSAGE for row in class_store.events(job_id, 100, None).rows)

    together, controls, worker, _ = handed_over(class_store, tiny_model, 2)
    worker.turn()
    later = add_running_job(class_store, tiny_model, chat_file(6, start=3), seed=4)
    controls.give("train", later)
    while worker.turn():
        pass
    assert [loaded(job_id) for job_id in [*together, later]] == [True, True, False]
    assert not controls.handed  # each hand-over forgotten once read


@pytest.mark.parametrize("lanes", [1, 2])
def test_worker_measures_a_base_models_training_and_keeps_it_loaded_for_the_first_job(
        class_store: Store, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, lanes: int) -> None:
    """Asked to measure a base model before any job, the worker trains a few steps of the calibration lesson (a job
    in each of its lanes, as a class trains) and tells its seconds per token, recording nothing; the class's first job
    then finds the model loaded (it starts warm), and a model that cannot be measured leaves the worker training."""
    from trainer.timing import LOADING_MESSAGE

    monkeypatch.setenv("TRAINER_TORCH_THREADS", str(lanes))  # a lane a thread

    loads = counted_loads(monkeypatch)
    trims: list[int] = []
    monkeypatch.setattr("trainer.worker.malloc_trim", lambda: trims.append(len(said)))
    controls = Controls()
    worker, said = new_worker(controls)
    assert worker.lanes == lanes
    data_dir = Settings.from_env().data_dir
    before = sorted(data_dir.rglob("*"))
    controls.listen(io.StringIO(json.dumps({"op": "measure", "source": str(data_dir / "no-such-model")}) + "\n"
                                + json.dumps({"op": "measure", "source": str(tiny_model)}) + "\n"))
    controls.closed = False  # listen() marks stdin closed at its end; this worker goes on
    assert not worker.turn()
    assert len(trims) == 1  # idle after the practice run: what its steps freed goes back to the system
    speeds = [report for report in said if report["event"] == "speed"]
    assert [report["source"] for report in speeds] == [str(tiny_model)]  # the missing model: none, and no crash
    assert 0 < speeds[0]["seconds_per_token"] < 60 and speeds[0]["seconds"] > 0
    assert sorted(data_dir.rglob("*")) == before  # nothing saved, nothing recorded
    assert class_store.jobs_with_status("running") == []
    job_id = add_running_job(class_store, tiny_model, chat_file(6, start=1), seed=1)
    controls.give("train", job_id)
    controls.give("measure", str(tiny_model))  # asked while a job trains: its own steps are measured instead
    while worker.turn():
        pass
    assert class_store.job(job_id)["status"] == "succeeded"  # type: ignore[index]
    assert not any(row["message"] == LOADING_MESSAGE for row in class_store.events(job_id, 100, None).rows)
    assert loads.count(str(tiny_model)) == 1
    assert len([report for report in said if report["event"] == "speed"]) == 1
    assert len(trims) == 2 and trims[1] == len(said)  # and again once its last job ended, not at every step


@pytest.mark.parametrize(("scales", "ranks"), [((2.0, 2.0, 2.0), (4, 4, 4)), ((2.0, 0.5, 1.0), (4, 4, 8))])
def test_lora_layer_adds_each_jobs_own_product_to_its_rows(scales: tuple[float, float, float],
                                                           ranks: tuple[int, int, int]) -> None:
    """An adapted layer carrying three jobs' rows adds to each run of rows that job's own x @ A.T * scale @ B.T, and
    hands each job's A and B the gradient that job's rows give them (also for LoRAs of different scales and
    ranks)."""
    torch.manual_seed(0)
    layer = grouped.MultiLoraLinear(torch.nn.Linear(12, 10))
    x = torch.randn(6, 5, 12)  # 6 rows of 5 positions: job 0 has rows 0-1, job 1 rows 2-4, job 2 row 5
    pairs = [(torch.randn(r, 12, requires_grad=True), torch.randn(10, r, requires_grad=True)) for r in ranks]
    spans = [(0, 2), (2, 5), (5, 6)]
    layer.routes = [(start, end, a, b, scale) for (start, end), (a, b), scale in zip(spans, pairs, scales)]
    together = layer(x)
    together.sum().backward()
    together_grads = [_take_grad(tensor) for pair in pairs for tensor in pair]
    for (start, end), (a, b), scale in zip(spans, pairs, scales):
        alone = layer.base(x[start:end]) + ((x[start:end] @ a.t()) * scale) @ b.t()
        assert torch.allclose(together[start:end], alone, atol=1e-5)
        alone.sum().backward()
    alone_grads = [_take_grad(tensor) for pair in pairs for tensor in pair]
    assert all(torch.allclose(one, other, atol=1e-4) for one, other in zip(together_grads, alone_grads, strict=True))


def _take_grad(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor's gradient, which must be there, taken off it for the next backward."""
    assert tensor.grad is not None
    grad, tensor.grad = tensor.grad, None
    return grad
