"""The trainer through the real openai SDK: train a tiny model for real, read its progress, chat with it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import openai
import pytest
from openai import AsyncOpenAI

from support.trainer_harness import TINY_RATE_MULTIPLIER, TrainerProcess, chat_file

JOB_TIMEOUT_S = 60


def client(server: TrainerProcess, key: str | None = None, timeout: float = 120) -> AsyncOpenAI:
    """An SDK client pointed at the trainer (with its key unless told another), without retries.

    The timeout must be longer than the work a request waits for on a busy machine (the first moderation loads the
    word lists and the classifier; a real model's first chat loads and merges it); it costs nothing when answered."""
    return AsyncOpenAI(base_url=server.base_url, api_key=key or server.key, max_retries=0, timeout=timeout)


async def upload(api: AsyncOpenAI, content: bytes, name: str = "train.jsonl") -> str:
    """Upload a training file and return its id."""
    return (await api.files.create(file=(name, content), purpose="fine-tune")).id


async def wait_for(api: AsyncOpenAI, job_id: str, statuses: set[str], timeout: float = JOB_TIMEOUT_S) -> object:
    """Poll a job until it reaches one of the statuses."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = await api.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        await asyncio.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {job.status}")


async def all_events(api: AsyncOpenAI, job_id: str) -> list[object]:
    """Every event of a job, oldest first, paging with limit/after as the SDK does."""
    events = [event async for event in api.fine_tuning.jobs.list_events(job_id, limit=5)]
    return events[::-1]


async def test_job_with_tiny_model_trains_reports_and_chats(trainer_server: TrainerProcess) -> None:
    """A job trains for real: events in OpenAI's order, falling loss, checkpoints, a listed model that streams."""
    api = client(trainer_server)
    training, validation = await upload(api, chat_file(16)), await upload(api, chat_file(10, start=3), "valid.jsonl")
    job = await api.fine_tuning.jobs.create(
        model="tiny", training_file=training, validation_file=validation, suffix="pirate", seed=7,
        metadata={"guild_id": "1", "user_id": "2"},
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": TINY_RATE_MULTIPLIER}}},
    )
    assert job.status == "validating_files" and job.id.startswith("ftjob-")
    done = await wait_for(api, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:tiny:school:pirate:{job.id[6:14]}"
    assert done.trained_tokens and done.trained_tokens > 0 and not (done.error and done.error.code)

    events = await all_events(api, job.id)
    texts = [event.message for event in events]
    assert texts[:5] == [f"Created fine-tuning job: {job.id}", f"Validating training file: {training}",
                         f"Validating validation file: {validation}", "Files validated, moving job to queued state",
                         "Fine-tuning job started"]
    assert texts[-2:] == [f"New fine-tuned model created: {done.fine_tuned_model}", "The job has successfully completed"]
    metrics = [event.data for event in events if event.type == "metrics"]
    assert [m["step"] for m in metrics] == list(range(1, 25)) and all(m["total_steps"] == 24 for m in metrics)
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] * 0.5
    assert "valid_loss" in metrics[-1] and "full_valid_loss" in metrics[-1]
    # The whole validation file, scored at fixed points (twice an epoch of 8 steps, and at each epoch's end), and
    # nowhere else: a line without the zigzag of one batch against another.
    scored = [m for m in metrics if "full_valid_loss" in m]
    assert [m["step"] for m in scored] == [4, 8, 12, 16, 20, 24]
    assert all(m["valid_loss"] == m["full_valid_loss"] for m in scored) and len(scored) == sum(
        "valid_loss" in m for m in metrics)
    assert 0 <= metrics[-1]["train_mean_token_accuracy"] <= 1
    assert sum("Checkpoint created at step" in text for text in texts) == 2

    checkpoints = [c async for c in api.fine_tuning.jobs.checkpoints.list(job.id)]
    assert [c.step_number for c in checkpoints] == [24, 16, 8]
    models = [m.id async for m in api.models.list()]
    assert models == ["tiny", done.fine_tuned_model]
    results = (await api.files.content(done.result_files[0])).text.splitlines()
    assert results[0].startswith("step,train_loss") and len(results) == 25

    stream = await api.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": "What is the sun?"}], stream=True,
        temperature=0, max_tokens=20)
    pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "Ahoy" in "".join(pieces) and len([p for p in pieces if p]) > 1

    checkpoint_reply = await api.chat.completions.create(
        model=checkpoints[-1].fine_tuned_model_checkpoint, messages=[{"role": "user", "content": "Hi"}],
        max_tokens=5)
    assert checkpoint_reply.choices[0].finish_reason in ("stop", "length")
    assert checkpoint_reply.usage.completion_tokens <= 5

    assert (await api.models.delete(done.fine_tuned_model)).deleted
    assert [m.id async for m in api.models.list()] == ["tiny"]
    with pytest.raises(openai.NotFoundError):
        await api.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "Hi"}])


async def test_cancel_while_running_ends_the_worker_at_once(trainer_server: TrainerProcess) -> None:
    """Cancelling a running job answers cancelled and no further step is reported."""
    api = client(trainer_server)
    training = await upload(api, chat_file(16))
    job = await api.fine_tuning.jobs.create(model="tiny", training_file=training,
                                            hyperparameters={"n_epochs": 50, "batch_size": 1})
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not [e async for e in api.fine_tuning.jobs.list_events(job.id, limit=1) if e.type == "metrics"]:
        assert time.monotonic() < deadline, "no step was reported"
        await asyncio.sleep(0.2)
    cancelled = await api.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    steps = len([e for e in await all_events(api, job.id) if e.type == "metrics"])
    await asyncio.sleep(1.0)
    events = await all_events(api, job.id)
    assert len([e for e in events if e.type == "metrics"]) == steps and steps < 800
    assert events[-1].message == "Fine-tuning job cancelled"
    with pytest.raises(openai.BadRequestError):
        await api.fine_tuning.jobs.cancel(job.id)


async def test_too_few_examples_fails_job_with_invalid_n_examples(trainer_server: TrainerProcess) -> None:
    """A file with 7 examples fails the job with OpenAI's invalid_n_examples code before it is queued."""
    api = client(trainer_server)
    training = await upload(api, chat_file(7))
    job = await api.fine_tuning.jobs.create(model="tiny", training_file=training)
    failed = await wait_for(api, job.id, {"failed", "succeeded", "queued", "running"})
    assert failed.status == "failed"
    assert failed.error.code == "invalid_n_examples" and failed.error.param == "training_file"
    assert "7" in failed.error.message and training in failed.error.message
    texts = [e.message for e in await all_events(api, job.id)]
    assert "Fine-tuning job started" not in texts and texts[-1] == failed.error.message


async def test_broken_line_fails_job_with_invalid_file_format_and_line(trainer_server: TrainerProcess) -> None:
    """A line that is not JSON fails the job with invalid_file_format, naming the line."""
    api = client(trainer_server)
    content = chat_file(12).replace(b"\n", b"\n{not json\n", 1)
    job = await api.fine_tuning.jobs.create(model="tiny", training_file=await upload(api, content))
    failed = await wait_for(api, job.id, {"failed", "succeeded", "queued", "running"})
    assert failed.status == "failed" and failed.error.code == "invalid_file_format"
    assert "line 2" in failed.error.message


async def test_kill_after_checkpoint_resumes_and_succeeds(tmp_path: Path, tiny_model: Path) -> None:
    """A server killed mid-job resumes the job from its last epoch checkpoint after a restart."""
    server = TrainerProcess(tmp_path / "data", tiny_model).start()
    try:
        api = client(server)
        job = await api.fine_tuning.jobs.create(model="tiny", training_file=await upload(api, chat_file(16)),
                                                hyperparameters={"n_epochs": 10, "batch_size": 1})
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while not [c async for c in api.fine_tuning.jobs.checkpoints.list(job.id)]:
            assert time.monotonic() < deadline, "no checkpoint was saved"
            await asyncio.sleep(0.1)
        server.kill()  # nine epochs (144 steps) are left: the kill lands mid-job
        server.start()
        done = await wait_for(api, job.id, {"succeeded", "failed", "cancelled"})
        texts = [e.message for e in await all_events(api, job.id)]
        assert done.status == "succeeded", done.error
        assert any(t.startswith("The trainer restarted while this job was running; it will resume") for t in texts)
        steps = [e.data["step"] for e in await all_events(api, job.id) if e.type == "metrics"]
        assert steps[-1] == 160 and 16 in steps
    finally:
        server.stop()


async def test_kill_before_checkpoint_fails_job_honestly(tmp_path: Path, tiny_model: Path) -> None:
    """A server killed before any checkpoint fails the job with a clear error after a restart, never running."""
    server = TrainerProcess(tmp_path / "data", tiny_model).start()
    try:
        api = client(server)
        job = await api.fine_tuning.jobs.create(model="tiny", training_file=await upload(api, chat_file(16)),
                                                hyperparameters={"n_epochs": 50, "batch_size": 1})
        await wait_for(api, job.id, {"running"})
        server.kill()
        server.start()
        failed = await api.fine_tuning.jobs.retrieve(job.id)
        assert failed.status == "failed" and failed.error.code == "trainer_restarted"
        assert failed.error.message.startswith("The trainer restarted while this job was running")
    finally:
        server.stop()
