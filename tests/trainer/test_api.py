"""The trainer's API contract without training: auth, error envelopes, paging, files and models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from support.trainer_harness import TrainerProcess, chat_file
from tests.trainer.test_journey import client, upload

KEY = "test-key-not-secret"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[TrainerProcess]:
    """A trainer that requires a bearer token, shared by this module's tests (each uses its own ids)."""
    server = TrainerProcess(tmp_path_factory.mktemp("keyed") / "data", tiny_model, TRAINER_API_KEY=KEY).start()
    try:
        yield server
    finally:
        server.stop()


async def test_wrong_key_is_refused_with_401_envelope(keyed_server: TrainerProcess) -> None:
    """A request with the wrong key gets 401 invalid_api_key, and the key never appears in the answer."""
    with pytest.raises(openai.AuthenticationError) as caught:
        await client(keyed_server, "wrong").models.list()
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    assert KEY not in str(caught.value.body)
    assert [m.id async for m in client(keyed_server, KEY).models.list()] == ["tiny"]


async def test_files_page_newest_first_and_delete(keyed_server: TrainerProcess) -> None:
    """Files list newest first with limit/after paging; content round-trips; delete forgets the file."""
    api = client(keyed_server, KEY)
    ids = [await upload(api, chat_file(10, start=i), f"f{i}.jsonl") for i in range(3)]
    newest = [f.id for f in (await api.files.list()).data]
    assert newest[:3] == ids[::-1]
    first = await api.files.list(limit=2)
    assert [f.id for f in first.data] == newest[:2] and first.has_more
    second = await api.files.list(limit=2, after=first.data[-1].id)
    assert [f.id for f in second.data] == newest[2:4]
    retrieved = await api.files.retrieve(ids[1])
    assert (retrieved.filename, retrieved.purpose, retrieved.bytes) == ("f1.jsonl", "fine-tune", len(chat_file(10, 1)))
    assert (await api.files.content(ids[1])).content == chat_file(10, start=1)
    assert (await api.files.delete(ids[1])).deleted
    with pytest.raises(openai.NotFoundError):
        await api.files.retrieve(ids[1])


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "gpt-4o-mini-2024-07-18", "training_file": "file-x"}, "model"),
    ({"model": "tiny", "training_file": "file-missing"}, "training_file"),
    ({"model": "tiny", "training_file": None, "method": {"type": "dpo"}}, "method.type"),
    ({"model": "tiny", "training_file": None, "hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
    ({"model": "tiny", "training_file": None, "suffix": "x" * 65}, "suffix"),
])
async def test_create_job_with_bad_request_gets_400_naming_param(keyed_server: TrainerProcess,
                                                                 body: dict[str, object], param: str) -> None:
    """Bad job requests are refused at once with OpenAI's 400 envelope naming the parameter."""
    api = client(keyed_server, KEY)
    if body["training_file"] is None:
        body["training_file"] = await upload(api, chat_file(10))
    before = (await api.fine_tuning.jobs.list()).data
    with pytest.raises(openai.BadRequestError) as caught:
        await api.fine_tuning.jobs.create(**body)  # type: ignore[arg-type]
    assert caught.value.param == param
    assert (await api.fine_tuning.jobs.list()).data == before


async def test_unknown_ids_get_404_envelopes(keyed_server: TrainerProcess) -> None:
    """Unknown jobs and models answer 404 in OpenAI's envelope; base models cannot be deleted."""
    api = client(keyed_server, KEY)
    with pytest.raises(openai.NotFoundError) as caught:
        await api.fine_tuning.jobs.retrieve("ftjob-nope")
    assert caught.value.code == "fine_tuning_job_not_found"
    with pytest.raises(openai.NotFoundError):
        await api.chat.completions.create(model="ft:tiny:school::nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.PermissionDeniedError):
        await api.models.delete("tiny")


async def test_jobs_list_filters_by_metadata(keyed_server: TrainerProcess) -> None:
    """Jobs list newest first and filter on metadata, as the bot's recovery needs."""
    api = client(keyed_server, KEY)
    training = await upload(api, chat_file(7))  # fails validation quickly: no training needed here
    first = await api.fine_tuning.jobs.create(model="tiny", training_file=training, metadata={"guild_id": "g1"})
    second = await api.fine_tuning.jobs.create(model="tiny", training_file=training, metadata={"guild_id": "g2"})
    assert [j.id for j in (await api.fine_tuning.jobs.list(limit=2)).data] == [second.id, first.id]
    only = await api.fine_tuning.jobs.list(metadata={"guild_id": "g1"})
    assert [j.id for j in only.data] == [first.id] and only.data[0].metadata == {"guild_id": "g1"}


async def test_same_idempotency_key_gets_the_same_job(keyed_server: TrainerProcess) -> None:
    """A client that lost the answer to a creation and sends it again under the same key gets the same job, not a
    second one; another key makes another job."""
    api = client(keyed_server, KEY)
    training = await upload(api, chat_file(7))
    before = len((await api.fine_tuning.jobs.list(limit=100)).data)
    once = {"Idempotency-Key": "start-token-1"}
    first = await api.fine_tuning.jobs.create(model="tiny", training_file=training, extra_headers=once)
    again = await api.fine_tuning.jobs.create(model="tiny", training_file=training, extra_headers=once)
    other = await api.fine_tuning.jobs.create(model="tiny", training_file=training,
                                              extra_headers={"Idempotency-Key": "start-token-2"})
    assert again.id == first.id and other.id != first.id
    assert len((await api.fine_tuning.jobs.list(limit=100)).data) == before + 2


async def test_tokenize_counts_chats_in_the_base_models_template_as_training_encodes_them(
        keyed_server: TrainerProcess, tiny_model: Path) -> None:
    """POST /v1/tokenize: one chat gets vLLM's count and tokens, many get counts; each is what training encodes."""
    import json

    from trainer.modeling import load_tokenizer
    from trainer.training import encode_chat

    chats = [json.loads(line)["messages"] for line in chat_file(3).decode().splitlines()]
    api = client(keyed_server, KEY)
    one = await api.post("/tokenize", body={"model": "tiny", "messages": chats[0]}, cast_to=object)
    many = await api.post("/tokenize", body={"model": "tiny", "conversations": chats}, cast_to=object)
    tokenizer = load_tokenizer(str(tiny_model))
    expected = [encode_chat(tokenizer, chat, 96).input_ids for chat in chats]  # 96: the fixture's sequence limit
    assert one["count"] == len(one["tokens"]) == len(expected[0]) and one["tokens"] == expected[0]
    assert many["counts"] == [len(ids) for ids in expected] and many["max_model_len"] == 96


async def test_tokenize_without_messages_gets_400_naming_param(keyed_server: TrainerProcess) -> None:
    """A tokenize request with neither messages nor conversations is refused in OpenAI's envelope."""
    with pytest.raises(openai.BadRequestError) as caught:
        await client(keyed_server, KEY).post("/tokenize", body={"model": "tiny"}, cast_to=object)
    assert caught.value.param == "messages"
