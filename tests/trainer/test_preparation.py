"""Base models prepared in the background (status and progress in /v1/models), lesson timings, warm merges."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from support.trainer_harness import TrainerProcess, chat_file
from tests.trainer.test_journey import JOB_TIMEOUT_S, client, upload, wait_for
from trainer.api import GENERATOR
from trainer.config import Settings
from trainer.server import LazyGenerator, create_app
from trainer.serving import ModelPool


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/v1"


async def _until(check: Callable[[], Any], timeout: float = JOB_TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)
    return result


async def test_models_answer_while_base_model_prepares(tmp_path: Path, tiny_model: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """During a download /v1/models still answers, with status preparing and its progress; then ready at 1.0."""
    halfway, release = threading.Event(), threading.Event()

    def slow_fetch(source: str, report: Callable[[float], None]) -> str:
        for fraction in (0.1, 0.3, 0.5625):  # 0.5625 of the download is 45% of the preparation
            report(fraction)
        halfway.set()
        assert release.wait(JOB_TIMEOUT_S)
        report(1.0)
        return source

    def build(self: LazyGenerator) -> Any:
        from trainer.serving import Generator

        pool = ModelPool(self.settings.base_models, "cpu", 2, 1, fetch=slow_fetch)
        return Generator(pool, 1, 1)

    monkeypatch.setattr(LazyGenerator, "_build", build)
    caplog.set_level(logging.INFO, logger="trainer.serving")
    key = "test-key-for-preparation"
    settings = Settings(data_dir=tmp_path / "data", base_models={"tiny": str(tiny_model)}, device="cpu", api_key=key)
    runner, base_url = await _serve(create_app(settings))
    try:
        from openai import AsyncOpenAI

        api = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)
        assert await asyncio.to_thread(halfway.wait, JOB_TIMEOUT_S)
        preparing = (await api.models.list()).data[0]
        assert preparing.id == "tiny" and preparing.status == "preparing" and preparing.progress == 0.45
        assert (await api.models.retrieve("tiny")).status == "preparing"
        release.set()

        async def ready() -> Any:
            model = (await api.models.list()).data[0]
            return model if model.status == "ready" else None

        done = await _until(ready)
        assert done.progress == 1.0 and done.languages == [] and done.lesson_seconds is None
        logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Preparing base model tiny")]
        assert logged[0] == "Preparing base model tiny: 8%" and logged[-1] == "Preparing base model tiny: 100%"
        assert "Preparing base model tiny: 45%" in logged and 4 <= len(logged) <= 11
    finally:
        release.set()
        await runner.cleanup()


async def test_failed_base_model_says_so(tmp_path: Path, tiny_model: Path) -> None:
    """A base model that can't be loaded is listed with status failed; the others still get ready."""
    pool = ModelPool({"broken": str(tmp_path / "missing"), "tiny": str(tiny_model)}, "cpu", 2, 1)
    await asyncio.to_thread(pool.prepare_all)
    assert pool.preparations["broken"].as_dict()["status"] == "failed"
    assert pool.preparations["tiny"].as_dict() == {"status": "ready", "progress": 1.0}
    # The model that loaded had its forward pass timed (the queue's first guess of its training speed); not the other.
    assert set(pool.forward_seconds) == {"tiny"} and 0 < pool.forward_seconds["tiny"] < 1


async def test_succeeded_job_is_timed_and_merged_in_background(trainer_server: TrainerProcess) -> None:
    """After a job succeeds the base model lists how long a 40-example, 3-epoch file takes, and the new model is
    merged without waiting for a chat (the trainer logs it ready)."""
    api = client(trainer_server)
    base = (await api.models.retrieve("tiny"))
    assert base.lesson_seconds is None
    job = await api.fine_tuning.jobs.create(model="tiny", training_file=await upload(api, chat_file(16)),
                                            hyperparameters={"n_epochs": 2, "batch_size": 4})
    done = await wait_for(api, job.id, {"succeeded", "failed", "cancelled"}, timeout=240)  # a busy CI machine
    assert done.status == "succeeded", done.error

    async def warmed() -> bool:
        return f"Fine-tuned model from {job.id} is loaded and ready to chat" in trainer_server.log()

    await _until(warmed)
    timed = await api.models.retrieve("tiny")
    assert isinstance(timed.lesson_seconds, int) and timed.lesson_seconds >= 1
    assert "A 40-example, 3-epoch file on tiny takes about" in trainer_server.log()
    reply = await api.chat.completions.create(model=done.fine_tuned_model, max_tokens=5, temperature=0,
                                              messages=[{"role": "user", "content": "Hi"}])
    assert reply.usage.completion_tokens <= 5


async def test_a_restarted_trainer_loads_the_newest_models_again(tmp_path: Path, tiny_model: Path) -> None:
    """After a restart the trainer loads the newest fine-tuned models still on disk in the background, as many as a
    base's stack keeps, the newest last (kept when the memory holds fewer): a class's chats find them loaded instead of
    thirty read at once. A deleted model, one whose files are gone and one of a base no longer served are skipped."""
    from tests.trainer.test_serving import make_adapter
    from trainer.store import Store

    settings = Settings(data_dir=tmp_path / "data", base_models={"tiny": str(tiny_model)}, device="cpu",
                        api_key="test-key-for-restart", adapter_cache=3)
    settings.data_dir.mkdir(parents=True)
    store = Store(settings.data_dir / "trainer.db")
    base = ModelPool({"tiny": str(tiny_model)}, "cpu", 2, 1).base("tiny")[0]
    made = []
    for index, (model, files, deleted) in enumerate([("tiny", True, False), ("tiny", True, False),
                                                      ("tiny", True, True), ("tiny", False, False),
                                                      ("gone", True, False), ("tiny", True, False),
                                                      ("tiny", True, False)]):
        job_id = f"ftjob-{index}"
        store.add_job(id=job_id, model=model, base_source="x", training_file="file-x", hyperparameters={}, seed=0)
        store.update_job(job_id, status="succeeded", fine_tuned_model=f"ft:{model}:{index}", model_deleted=int(deleted))
        if files:
            make_adapter(base, settings.final_adapter(job_id), seed=index)
        made.append(settings.final_adapter(job_id))
    store.close()
    app = create_app(settings)
    runner, _ = await _serve(app)
    try:
        generator = app[GENERATOR]

        async def loaded() -> list[Path] | None:
            pool = generator.pool
            stack = pool.stacks.get("tiny") if pool is not None else None
            return stack.loaded if stack is not None and len(stack.loaded) == 3 else None

        assert await _until(loaded) == [made[1], made[5], made[6]]  # the newest three that can be served, newest last
    finally:
        await runner.cleanup()


def _event(seq: int, at: int, message: str, step: int | None = None) -> dict[str, Any]:
    data = f'{{"step": {step}}}' if step is not None else None
    return {"seq": seq, "created_at": at, "message": message, "type": "metrics" if step else "message", "data": data}


def test_lesson_seconds_scales_step_time_to_forty_examples_three_epochs() -> None:
    """Start-up and wrap-up are kept; time per example is scaled to 120 examples; resumed jobs don't count."""
    from trainer.timing import lesson_seconds

    job = {"finished_at": 150, "hyperparameters": '{"batch_size": 2}'}
    events = [_event(1, 100, "Fine-tuning job started"), _event(2, 112, "Step 1", 1), _event(3, 140, "Step 8", 8)]
    # 4 s per step of 2 examples = 2 s per example; 8 s start-up (12 - one step), 10 s wrap-up; 120 examples.
    assert lesson_seconds(job, events, 4) == 8 + 10 + 240
    resumed = [*events, _event(4, 141, "Fine-tuning job resumed from its last checkpoint")]
    assert lesson_seconds(job, resumed, 4) is None
    assert lesson_seconds(job, events[:2], 4) is None


def test_download_progress_counts_bytes_written_not_xet_transfer_bytes() -> None:
    """The silent progress bar handed to huggingface_hub reports each written chunk; Xet's network bar is ignored."""
    from trainer.serving import _Progress

    seen: list[int] = []
    bar_class = type("Bar", (_Progress,), {"callback": staticmethod(seen.append)})
    written = bar_class(total=100, desc="model.safetensors: reconstructing file", name="huggingface_hub.xet_get")
    written.update(40)
    written.update(60)
    transfer = bar_class(total=100, desc="model.safetensors: downloading bytes", name="huggingface_hub.xet_get.transfer")
    transfer.update(70)
    written.close()
    transfer.close()
    assert seen == [40, 60]


def test_hub_model_offline_and_not_cached_fails_preparation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no network and nothing cached, preparing a hub model fails (status failed), it does not hang."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    pool = ModelPool({"qwen": "Qwen/Qwen2.5-0.5B-Instruct"}, "cpu", 1, 1)
    pool.prepare_all()
    assert pool.preparations["qwen"].status == "failed"


async def test_token_count_at_start_does_not_stop_preparation(tmp_path: Path, tiny_model: Path) -> None:
    """A /tokenize that arrives while a fresh trainer is still importing its model stack (the bot's dataset check
    at a lesson's start) shares the preparation's tokenizer instead of loading one beside it: the base model still
    gets ready, and a stack that fails to load says failed rather than preparing for ever."""
    server = TrainerProcess(tmp_path / "data", tiny_model).start()
    try:
        api = client(server)
        counted = await api.post("/tokenize", cast_to=object, body={
            "model": "tiny", "conversations": [[{"role": "user", "content": "Hi"}]]})
        assert counted["counts"][0] > 0

        async def settled() -> Any:
            model = await api.models.retrieve("tiny")
            return model if model.status != "preparing" else None

        assert (await _until(settled)).status == "ready", server.log()[-3000:]
        assert server.log().count("Chat template of") == 1  # one tokenizer load, shared
    finally:
        server.stop()


async def test_model_stack_that_cannot_load_says_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When torch or transformers cannot even be imported, /v1/models says failed, not preparing for ever."""
    def broken(self: LazyGenerator) -> Any:
        raise ImportError("cannot import name 'AutoModel' from 'transformers'")

    monkeypatch.setattr(LazyGenerator, "_build", broken)
    generator = LazyGenerator(Settings(data_dir=tmp_path, base_models={"tiny": "unused"}, device="cpu"))
    assert generator.status("tiny") == {"status": "preparing", "progress": 0.0}
    generator.start()
    try:
        async def failed() -> bool:
            return generator.status("tiny")["status"] == "failed"

        await _until(failed)
    finally:
        await generator.close()


def test_token_count_waiting_for_a_tokenizer_goes_before_the_model_load(tiny_model: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A /tokenize that waits while the preparation loads its tokenizer gets it before the preparation goes on to
    load the weights (a minute for a real model): the student's file check does not wait for the model."""
    import trainer.serving

    tokenizer_loading, release_tokenizer = threading.Event(), threading.Event()
    model_loading, release_model = threading.Event(), threading.Event()
    real_tokenizer, real_model = trainer.serving.load_tokenizer, trainer.serving.load_model

    def slow_tokenizer(*args: Any, **kwargs: Any) -> Any:
        tokenizer_loading.set()
        assert release_tokenizer.wait(JOB_TIMEOUT_S)
        return real_tokenizer(*args, **kwargs)

    def held_model(*args: Any, **kwargs: Any) -> Any:  # a minute's load, held until the test lets it go
        model_loading.set()
        assert release_model.wait(JOB_TIMEOUT_S)
        return real_model(*args, **kwargs)

    monkeypatch.setattr(trainer.serving, "load_tokenizer", slow_tokenizer)
    monkeypatch.setattr(trainer.serving, "load_model", held_model)
    pool = ModelPool({"tiny": str(tiny_model)}, "cpu", 1, 1)
    counted: list[object] = []
    counting = threading.Thread(target=lambda: counted.append(pool.tokenizer("tiny")))
    preparation_let_go, count_let_go = threading.Event(), threading.Event()

    class WideningLock:
        """The pool's own lock, widening the moment found under load: the preparation gives up its place in line for
        the tokenizer, and lets the count give up its own before it goes on where it can; the count, done, gives a
        model load the chance to go first. Where a count that has its tokenizer could still be made to wait for the
        model, this makes it so; where it cannot, each wait ends after a second."""

        def __init__(self) -> None:
            self._lock, self.uses = threading.Lock(), collections.Counter[threading.Thread]()

        def __enter__(self) -> None:
            me = threading.current_thread()
            if me is counting and self.uses[me] == 1:
                assert preparation_let_go.wait(JOB_TIMEOUT_S)
            self._lock.acquire()

        def __exit__(self, *exc: object) -> None:
            me = threading.current_thread()
            self.uses[me] += 1
            self._lock.release()
            if self.uses[me] == 2 and me is preparing:  # a caller's second use of the lock is letting go
                preparation_let_go.set()
                count_let_go.wait(1)
            elif self.uses[me] == 2 and me is counting:
                count_let_go.set()
                model_loading.wait(1)

    preparing = threading.Thread(target=pool.prepare_all)
    monkeypatch.setattr(pool, "_lock", WideningLock())
    preparing.start()
    assert tokenizer_loading.wait(JOB_TIMEOUT_S)
    counting.start()
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while pool._tokenizer_callers < 2:  # the preparation's own tokenizer load, and the count waiting for it
        assert time.monotonic() < deadline
        time.sleep(0.01)
    release_tokenizer.set()
    # The count gets its tokenizer while the model load is still held: it never waits for the model. (Were the load
    # first, it would hold the loading lock and this join would run out.)
    counting.join(JOB_TIMEOUT_S)
    assert not counting.is_alive() and counted and counted[0] is not None
    release_model.set()
    preparing.join(JOB_TIMEOUT_S)
    assert model_loading.is_set()
    assert pool.preparations["tiny"].status == "ready"


@pytest.mark.parametrize("lanes", [1, 2])
def test_the_workers_trial_of_a_lesson_is_the_first_guess_over_the_forward_pass(tmp_path: Path, tiny_model: Path,
                                                                                lanes: int) -> None:
    """A base model the worker has measured is guessed at the trial's seconds per token (the trial stepped a job in
    each lane, as a class trains), whatever the forward pass said; a model not measured keeps the forward's guess
    (None before it loads)."""
    generator = LazyGenerator(Settings(data_dir=tmp_path, base_models={"tiny": str(tiny_model), "other": "elsewhere"},
                                       device="cpu", torch_threads=2, train_lanes=lanes))
    generator.trials[str(tiny_model)] = 0.004
    assert generator.training_guess("tiny") == 0.004
    assert generator.training_guess("other") is None


@pytest.mark.parametrize(("precision", "lanes"), [("float32", 1), ("bfloat16", 1), ("bfloat16", 2)])
async def test_the_queues_first_guess_is_the_forward_pass_scaled_as_training_multiplies(
        tmp_path: Path, tiny_model: Path, precision: str, lanes: int) -> None:
    """Before any job, the queue's guess of a base model's training seconds per token is its forward pass timed at
    load times the ratio measured for the arithmetic training will use (float32, or bfloat16 matmuls: faster), less
    where the worker trains a class in lanes side by side."""
    from trainer.timing import LANES_GAIN, TRAIN_OVER_FORWARD, TRAIN_OVER_FORWARD_BFLOAT16

    generator = LazyGenerator(Settings(data_dir=tmp_path, base_models={"tiny": str(tiny_model)}, device="cpu",
                                       train_precision=precision, torch_threads=2, train_lanes=lanes))
    assert generator.training_guess("tiny") is None  # nothing timed before the model stack loads
    generator.start()
    try:
        async def ready() -> bool:
            return generator.status("tiny")["status"] == "ready"

        await _until(ready)
        forward = generator.pool.forward_seconds["tiny"]
        ratio = TRAIN_OVER_FORWARD_BFLOAT16 if precision == "bfloat16" else TRAIN_OVER_FORWARD
        assert generator.training_guess("tiny") == pytest.approx(forward * ratio / (LANES_GAIN if lanes > 1 else 1))
        assert generator.training_guess("other") is None
    finally:
        await generator.close()
