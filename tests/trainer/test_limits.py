"""The trainer holds up against any client: every limit and OpenAI parity point, through raw HTTP.

Raw HTTP (aiohttp's client, urllib, a bare socket) rather than only the openai SDK, which forgives what other
clients do not (a missing "usage": null, an ignored order=asc).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from support.trainer_harness import TrainerProcess, chat_example, chat_file

REQUEST_LIMIT = 64 * 1024
UPLOAD_LIMIT = 256 * 1024
PROMPT_LIMIT = 64
BATCH_TOKENS = 384  # with TRAINER_MAX_SEQ_LEN=96 (conftest): batch_size at most 4
WAIT_S = 180


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[TrainerProcess]:
    """A trainer with small limits, so each can be crossed cheaply."""
    server = TrainerProcess(
        tmp_path_factory.mktemp("limited") / "data", tiny_model,
        TRAINER_MAX_REQUEST_BYTES=str(REQUEST_LIMIT), TRAINER_MAX_UPLOAD_BYTES=str(UPLOAD_LIMIT),
        TRAINER_MAX_PROMPT_TOKENS=str(PROMPT_LIMIT), TRAINER_MAX_BATCH_TOKENS=str(BATCH_TOKENS),
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client: no SDK in between."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def call(session: aiohttp.ClientSession, server: TrainerProcess, method: str, path: str,
               **kwargs: Any) -> tuple[int, Any]:
    """One request with the server's key; the status and the JSON body."""
    headers = {"Authorization": f"Bearer {server.key}", **kwargs.pop("headers", {})}
    async with session.request(method, server.base_url + path, headers=headers, **kwargs) as response:
        return response.status, await response.json(content_type=None)


async def upload(session: aiohttp.ClientSession, server: TrainerProcess, content: bytes,
                 name: str = "train.jsonl") -> tuple[int, Any]:
    """A multipart upload as any client would send it."""
    form = aiohttp.FormData()
    form.add_field("purpose", "fine-tune")
    form.add_field("file", content, filename=name, content_type="application/jsonl")
    return await call(session, server, "POST", "/files", data=form)


async def wait_job(session: aiohttp.ClientSession, server: TrainerProcess, job_id: str,
                   done: Any, timeout: float = WAIT_S) -> dict[str, Any]:
    """Poll a job (and its events) until done(job, events) holds."""
    deadline = time.monotonic() + timeout
    while True:
        _, job = await call(session, server, "GET", f"/fine_tuning/jobs/{job_id}")
        _, events = await call(session, server, "GET", f"/fine_tuning/jobs/{job_id}/events?limit=100")
        if done(job, events["data"]):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} is {job['status']}: {[e['message'] for e in events['data']][:5]}")
        await asyncio.sleep(0.1)


def assert_envelope(body: Any, status: int, expected_status: int, code: str | None) -> dict[str, Any]:
    """OpenAI's error envelope with its four fields."""
    assert status == expected_status, body
    assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["code"] == code
    return body["error"]  # type: ignore[no-any-return]


def files_on_disk(server: TrainerProcess) -> list[str]:
    """Names in the trainer's files folder."""
    folder = server.data_dir / "files"
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("path", ["/chat/completions", "/fine_tuning/jobs"])
async def test_json_body_over_the_limit_gets_413_envelope(limited: TrainerProcess, http: aiohttp.ClientSession,
                                                          path: str) -> None:
    """A JSON body over TRAINER_MAX_REQUEST_BYTES answers 413 in OpenAI's shape, with or without Content-Length."""
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * REQUEST_LIMIT}]}).encode()
    status, answer = await call(http, limited, "POST", path, data=body, headers={"Content-Type": "application/json"})
    error = assert_envelope(answer, status, 413, "request_too_large")
    assert f"{REQUEST_LIMIT} bytes (TRAINER_MAX_REQUEST_BYTES)" in error["message"]

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    status, answer = await call(http, limited, "POST", path, data=chunked(),
                                headers={"Content-Type": "application/json"})
    assert_envelope(answer, status, 413, "request_too_large")


async def test_upload_over_the_file_limit_gets_413_and_leaves_nothing(limited: TrainerProcess,
                                                                       http: aiohttp.ClientSession) -> None:
    """POST /v1/files alone takes large bodies, up to TRAINER_MAX_UPLOAD_BYTES; past it 413 and no bytes kept."""
    before = files_on_disk(limited)
    big = chat_file(16) * (UPLOAD_LIMIT // len(chat_file(16)) + 1)
    status, answer = await upload(http, limited, big)
    assert_envelope(answer, status, 413, "request_too_large")
    assert files_on_disk(limited) == before
    status, answer = await upload(http, limited, big[: UPLOAD_LIMIT - 1000])  # more than the JSON limit: fine
    assert status == 200 and answer["bytes"] == UPLOAD_LIMIT - 1000
    assert files_on_disk(limited) == sorted([*before, answer["id"]])


def test_aborted_upload_leaves_no_bytes(limited: TrainerProcess) -> None:
    """A client that goes away mid-upload leaves no file behind (its bytes were under a temporary name)."""
    before = files_on_disk(limited)
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n"
            "Content-Type: application/jsonl\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as sock:
        sock.sendall((f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {UPLOAD_LIMIT}\r\n"
                      f"Authorization: Bearer {limited.key}\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode() + head)
        deadline = time.monotonic() + 30
        while not any(name.endswith(".partial") for name in files_on_disk(limited)):
            sock.sendall(b"x" * 8192)
            assert time.monotonic() < deadline, "the upload never started writing"
            time.sleep(0.05)
    deadline = time.monotonic() + 30
    while files_on_disk(limited) != before:
        assert time.monotonic() < deadline, f"left behind: {files_on_disk(limited)}"
        time.sleep(0.05)


def test_leftovers_are_swept_at_start(tmp_path: Path, tiny_model: Path) -> None:
    """Bytes that no file row records (a crash mid-upload) are deleted at the next start; recorded files stay."""
    server = TrainerProcess(tmp_path / "data", tiny_model).start()
    try:
        kept = json.loads(_multipart_upload(server, chat_file(10)))["id"]
    finally:
        server.stop()
    files = tmp_path / "data" / "files"
    (files / "file-orphan.partial").write_bytes(b"half an upload")
    (files / "file-orphan").write_bytes(b"renamed but never recorded")
    server.start()
    try:
        assert sorted(path.name for path in files.iterdir()) == [kept]
    finally:
        server.stop()


def _multipart_upload(server: TrainerProcess, content: bytes) -> bytes:
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n\r\n").encode()
    body += content + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{server.base_url}/files", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                                              "Authorization": f"Bearer {server.key}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()  # type: ignore[no-any-return]


async def test_files_list_honours_order_asc_and_desc(limited: TrainerProcess, http: aiohttp.ClientSession) -> None:
    """GET /v1/files?order=asc lists oldest first and pages forward with after; desc (the default) newest first."""
    ids = [(await upload(http, limited, chat_file(10, start=i)))[1]["id"] for i in range(3)]
    _, newest = await call(http, limited, "GET", "/files")
    _, oldest = await call(http, limited, "GET", "/files?order=asc")
    listed = [f["id"] for f in oldest["data"]]
    assert listed == [f["id"] for f in newest["data"]][::-1]
    assert [i for i in listed if i in ids] == ids
    _, page = await call(http, limited, "GET", f"/files?order=asc&limit=1&after={ids[0]}")
    assert [f["id"] for f in page["data"]] == [ids[1]] and page["has_more"]
    status, answer = await call(http, limited, "GET", "/files?order=sideways")
    assert assert_envelope(answer, status, 400, None)["param"] == "order"


async def test_stream_chunks_carry_usage_null_until_the_usage_chunk(limited: TrainerProcess,
                                                                    http: aiohttp.ClientSession) -> None:
    """With include_usage, every chunk before the last has "usage": null; the last has the counts and no choices."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": "What is the sun?"}], "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": 5, "temperature": 0}
    async with http.post(limited.base_url + "/chat/completions", json=body,
                         headers={"Authorization": f"Bearer {limited.key}"}) as response:
        assert response.status == 200
        lines = [line.decode().strip() async for line in response.content if line.strip()]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert len(chunks) >= 3
    assert all("usage" in chunk and chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1


async def test_prompt_over_the_token_cap_gets_400_naming_the_limit(limited: TrainerProcess,
                                                                   http: aiohttp.ClientSession) -> None:
    """A prompt longer than TRAINER_MAX_PROMPT_TOKENS is refused as OpenAI refuses a context overflow."""
    for repeat, counted in ((40, r"resulted in \d+ tokens"), (3000, r"resulted in at least \d+ tokens")):
        messages = [{"role": "user", "content": "What is the sun? " * repeat}]
        for stream in (False, True):
            status, answer = await call(http, limited, "POST", "/chat/completions",
                                        json={"model": "tiny", "messages": messages, "stream": stream})
            error = assert_envelope(answer, status, 400, "context_length_exceeded")
            assert f"{PROMPT_LIMIT} tokens" in error["message"] and error["param"] == "messages"
            assert re.search(counted, error["message"])  # counted exactly; too long to be worth counting


async def test_batch_size_beyond_what_fits_is_refused(limited: TrainerProcess, http: aiohttp.ClientSession) -> None:
    """batch_size is bounded by TRAINER_MAX_BATCH_TOKENS / TRAINER_MAX_SEQ_LEN, and the 400 says so."""
    _, file = await upload(http, limited, chat_file(10))
    body = {"model": "tiny", "training_file": file["id"],
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 5}}}}
    status, answer = await call(http, limited, "POST", "/fine_tuning/jobs", json=body)
    error = assert_envelope(answer, status, 400, "invalid_hyperparameters")
    assert error["param"] == "hyperparameters.batch_size" and "1 to 4" in error["message"]
    assert "TRAINER_MAX_BATCH_TOKENS" in error["message"]


@pytest.mark.timeout(400)  # a second server and a worker start: minutes on a busy 2-core machine
async def test_100k_message_example_trains_in_seconds(limited: TrainerProcess, http: aiohttp.ClientSession,
                                                      tmp_path: Path) -> None:
    """An example of 100,000 messages is cut to TRAINER_MAX_SEQ_LEN before any costly work: the job succeeds."""
    messages: list[dict[str, str]] = [{"role": "system", "content": "You are a pirate."}]
    for index in range(50_000):
        messages += [{"role": "user", "content": f"Question {index}?"},
                     {"role": "assistant", "content": f"Answer {index}."}]
    content = chat_file(10) + json.dumps({"messages": messages}).encode() + b"\n"
    limited_upload = len(content) > UPLOAD_LIMIT
    assert limited_upload  # this server refuses it at the door...
    status, answer = await upload(http, limited, content)
    assert_envelope(answer, status, 413, "request_too_large")
    # ...a default one takes it and trains it.
    server = TrainerProcess(tmp_path / "data", Path(limited.env["TRAINER_BASE_MODELS"].split("=", 1)[1])).start()
    try:
        status, file = await upload(http, server, content)
        assert status == 200
        body = {"model": "tiny", "training_file": file["id"], "hyperparameters": {"n_epochs": 1, "batch_size": 4}}
        _, job = await call(http, server, "POST", "/fine_tuning/jobs", json=body)
        done = await wait_job(http, server, job["id"], lambda job, _: job["status"] in ("succeeded", "failed"))
        assert done["status"] == "succeeded", done["error"]
    finally:
        server.stop()


@pytest.mark.timeout(600)  # three worker starts (job, other job, resume): minutes on a busy 2-core machine
async def test_pause_keeps_the_checkpoint_frees_the_device_and_resume_continues(
        limited: TrainerProcess, http: aiohttp.ClientSession) -> None:
    """Pause stops the worker after a step with a checkpoint; resume continues from that step, not from zero."""
    _, file = await upload(http, limited, chat_file(16))
    body = {"model": "tiny", "training_file": file["id"], "hyperparameters": {"n_epochs": 50, "batch_size": 1}}
    _, job = await call(http, limited, "POST", "/fine_tuning/jobs", json=body)
    job_id = job["id"]
    status, answer = await call(http, limited, "POST", f"/fine_tuning/jobs/{job_id}/resume")
    assert_envelope(answer, status, 400, "job_not_resumable")
    await wait_job(http, limited, job_id, lambda _, events: any(e["type"] == "metrics" for e in events))
    status, paused = await call(http, limited, "POST", f"/fine_tuning/jobs/{job_id}/pause")
    assert status == 200 and paused["status"] == "paused"
    await wait_job(http, limited, job_id, lambda _, events: any("paused at step" in e["message"] for e in events))
    _, checkpoints = await call(http, limited, "GET", f"/fine_tuning/jobs/{job_id}/checkpoints")
    paused_step = checkpoints["data"][0]["step_number"]
    _, events = await call(http, limited, "GET", f"/fine_tuning/jobs/{job_id}/events?limit=100")
    assert max(e["data"]["step"] for e in events["data"] if e["type"] == "metrics") == paused_step
    # The device is free: another job runs while this one is paused.
    _, other = await call(http, limited, "POST", "/fine_tuning/jobs",
                          json={"model": "tiny", "training_file": file["id"], "hyperparameters": {"n_epochs": 1}})
    await wait_job(http, limited, other["id"], lambda job, _: job["status"] == "succeeded")
    assert (await call(http, limited, "GET", f"/fine_tuning/jobs/{job_id}"))[1]["status"] == "paused"
    status, answer = await call(http, limited, "POST", f"/fine_tuning/jobs/{job_id}/pause")
    assert_envelope(answer, status, 400, "job_not_pausable")

    status, resumed = await call(http, limited, "POST", f"/fine_tuning/jobs/{job_id}/resume")
    assert status == 200 and resumed["status"] == "queued"

    def continued(_: Any, events: list[dict[str, Any]]) -> bool:
        return any(e["type"] == "metrics" and e["data"]["step"] > paused_step for e in events)

    await wait_job(http, limited, job_id, continued)
    _, events = await call(http, limited, "GET", f"/fine_tuning/jobs/{job_id}/events?limit=100")
    steps = [e["data"]["step"] for e in events["data"] if e["type"] == "metrics"]
    assert len(steps) == len(set(steps)), "a step was trained twice"
    assert any("resumed from its last checkpoint" in e["message"] for e in events["data"])
    await call(http, limited, "POST", f"/fine_tuning/jobs/{job_id}/cancel")


@pytest.mark.timeout(400)  # a second server, a worker and the chat model: minutes on a busy machine
async def test_job_over_its_time_limit_fails_plainly_and_keeps_a_usable_checkpoint(
        tmp_path: Path, tiny_model: Path, http: aiohttp.ClientSession) -> None:
    """TRAINER_MAX_JOB_MINUTES stops a job with a plain reason; its last checkpoint still chats."""
    server = TrainerProcess(tmp_path / "data", tiny_model, TRAINER_MAX_JOB_MINUTES="0.0001").start()
    try:
        _, file = await upload(http, server, chat_file(16))
        body = {"model": "tiny", "training_file": file["id"], "hyperparameters": {"n_epochs": 50, "batch_size": 1}}
        _, job = await call(http, server, "POST", "/fine_tuning/jobs", json=body)
        done = await wait_job(http, server, job["id"], lambda job, _: job["status"] in ("succeeded", "failed"))
        assert done["status"] == "failed" and done["error"]["code"] == "time_limit_exceeded"
        message = done["error"]["message"]
        assert "TRAINER_MAX_JOB_MINUTES" in message and "can be used for chat" in message
        _, checkpoints = await call(http, server, "GET", f"/fine_tuning/jobs/{job['id']}/checkpoints")
        name = checkpoints["data"][0]["fine_tuned_model_checkpoint"]
        assert name in message
        status, reply = await call(http, server, "POST", "/chat/completions", json={
            "model": name, "messages": [chat_example("What is rain?")["messages"][1]], "max_tokens": 4})
        assert status == 200 and reply["choices"][0]["message"]["role"] == "assistant"
    finally:
        server.stop()
