"""Batched multi-adapter chat serving: the same tokens as one reply at a time and as today's merged model, rows and
waiting places freed by clients that leave, a class of thirty admitted, and an honest retry-after when full."""

from __future__ import annotations

import asyncio
import copy
import gc
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from peft import PeftModel
from transformers import PreTrainedModel

from trainer.batching import Engine, Request
from trainer.config import Settings
from trainer import lora_stack
from trainer.lora_stack import LoraStack, read_adapter
from trainer.modeling import render_chat
from trainer.serving import Busy, Generated, Generator, ModelPool, Target, _eos_ids
from trainer.training import chat_messages, lora_model

WAIT_S = 60.0
QUESTIONS = ["What is the sun?", "Why is the sea blue? Tell me all about it, please.", "How do birds fly?",
             "What is rain?", "Where do stars come from, and why do they shine at night?", "Why do cats purr?"]


def make_adapter(base: PreTrainedModel, folder: Path, seed: int, r: int = 4) -> Path:
    """A LoRA adapter on all linear layers with random non-zero B, saved as training saves one."""
    torch.manual_seed(seed)
    model = lora_model(copy.deepcopy(base), r, 2 * r)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.3)
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def pool(tiny_model: Path) -> ModelPool:
    """The tiny model as a served base."""
    pool = ModelPool({"tiny": str(tiny_model)}, "cpu", 8, 1)
    pool.base("tiny")
    return pool


@pytest.fixture(scope="module")
def adapters(pool: ModelPool, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three different adapters of the tiny model, one with a smaller rank (padded in the stack)."""
    base, _ = pool.base("tiny")
    folder = tmp_path_factory.mktemp("adapters")
    return [make_adapter(base, folder / f"job{i}" / "final", seed=i, r=2 if i == 1 else 4) for i in range(3)]


def prompt_ids(pool: ModelPool, question: str) -> list[int]:
    """A chat prompt rendered as the served route renders it."""
    _, tokenizer = pool.base("tiny")
    text = render_chat(tokenizer, chat_messages(tokenizer, [{"role": "user", "content": question}]), True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def merged_reference(pool: ModelPool, adapter: Path | None, ids: list[int], max_tokens: int) -> list[int]:
    """Today's path: the adapter merged into a copy of the base, greedy model.generate."""
    base, tokenizer = pool.base("tiny")
    model = base if adapter is None else PeftModel.from_pretrained(copy.deepcopy(base), str(adapter)).merge_and_unload()
    output = model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False, temperature=None,
                            top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)  # type: ignore[operator]
    return [int(t) for t in output[0, len(ids):]]


class Run:
    """One request on an engine, with events for its first tokens and its end."""

    def __init__(self, ids: list[int], adapter: Path | None, max_tokens: int, **options: Any) -> None:
        self.done, self.started, self.pieces = threading.Event(), threading.Event(), list[Any]()
        self.request = Request(prompt=ids, adapter=adapter, max_tokens=max_tokens, temperature=options.get(
            "temperature", 0.0), top_p=1.0, seed=options.get("seed"), frequency_penalty=0.0, emit=self.emit)
        self.started_after = options.get("started_after", 2)

    def emit(self, item: Any) -> None:
        """The engine's callback: text, an error or None at the end."""
        self.pieces.append(item)
        if len(self.request.generated) >= self.started_after:
            self.started.set()
        if item is None or isinstance(item, BaseException):
            self.done.set()
            self.started.set()

    def wait(self) -> list[int]:
        """Wait for the end; the reply's tokens."""
        assert self.done.wait(WAIT_S), "the engine never finished the request"
        assert not any(isinstance(p, BaseException) for p in self.pieces), self.pieces
        return list(self.request.generated)


def engine_for(pool: ModelPool, max_rows: int = 32, eos: bool = True) -> Engine:
    """A fresh engine on the pool's tiny base with its own adapter stack."""
    model, tokenizer = pool.base("tiny")
    return Engine(model, tokenizer, LoraStack(model, 8, 1 << 30), max_rows=max_rows, kv_budget_bytes=1 << 30,
                  eos_ids=_eos_ids(model, tokenizer) if eos else set(),
                  suppress_ids=list(model.generation_config.suppress_tokens or []))


def test_batched_answers_equal_one_at_a_time_and_merged_answers(pool: ModelPool, adapters: list[Path]) -> None:
    """Six greedy replies on three adapters and the base, four started together and two joining the running batch,
    give the tokens each gives alone on the engine and the tokens of today's merged model.generate."""
    targets: list[Path | None] = [adapters[0], adapters[1], None, adapters[2], adapters[0], None]
    ids = [prompt_ids(pool, question) for question in QUESTIONS]
    max_tokens = 10
    alone = []
    for target, prompt in zip(targets, ids, strict=True):
        run = Run(prompt, target, max_tokens)
        engine_for(pool).submit(run.request)
        alone.append(run.wait())
    merged = [merged_reference(pool, target, prompt, max_tokens) for target, prompt in zip(targets, ids, strict=True)]
    assert alone == merged
    assert len({tuple(tokens) for tokens in alone}) > 2  # the adapters really change the answers

    engine = engine_for(pool, eos=True)
    runs = [Run(prompt, target, max_tokens) for target, prompt in zip(targets, ids, strict=True)]
    for run in runs[:4]:
        engine.submit(run.request)
    assert runs[0].started.wait(WAIT_S)  # the first four are decoding: the last two join a running batch
    for run in runs[4:]:
        engine.submit(run.request)
    assert [run.wait() for run in runs] == alone
    assert engine.rows == [] and engine.waiting == deque_of()


def deque_of() -> Any:
    """An empty waiting line, as the engine keeps it."""
    from collections import deque

    return deque()


def test_sampled_reply_follows_its_seed_in_a_batch(pool: ModelPool, adapters: list[Path]) -> None:
    """A sampled reply with a seed is the same alone and beside other rows (its own random generator)."""
    ids = prompt_ids(pool, QUESTIONS[0])
    alone = Run(ids, adapters[0], 8, temperature=1.0, seed=7)
    engine_for(pool).submit(alone.request)
    expected = alone.wait()
    engine = engine_for(pool)
    runs = [Run(ids, adapters[0], 8, temperature=1.0, seed=7), Run(ids, adapters[1], 8, temperature=1.0, seed=3),
            Run(prompt_ids(pool, QUESTIONS[1]), None, 8)]
    for run in runs:
        engine.submit(run.request)
    assert runs[0].wait() == expected


def test_cancelled_requests_free_their_row_and_their_waiting_place(pool: ModelPool, adapters: list[Path]) -> None:
    """With one row: a waiting request that is cancelled leaves the line at once; a running one leaves the batch at
    the next step, its adapter unpinned, and the next request is admitted and answered."""
    engine = engine_for(pool, max_rows=1, eos=False)  # no end-of-turn: the first reply runs until cancelled
    stepped, record = threading.Event(), engine._record

    def recorded(requests: list[Request], tokens: torch.Tensor) -> None:
        record(requests, tokens)
        stepped.set()

    engine._record = recorded  # type: ignore[method-assign]  # to know that the first reply is being decoded
    running = Run(prompt_ids(pool, QUESTIONS[0]), adapters[0], 1_000_000)
    waiting = Run(prompt_ids(pool, QUESTIONS[1]), None, 4)
    engine.submit(running.request)
    assert stepped.wait(WAIT_S)
    engine.submit(waiting.request)
    engine.cancel(waiting.request)
    assert waiting.request not in engine.waiting and not waiting.request.generated
    engine.cancel(running.request)
    assert running.done.wait(WAIT_S)
    following = Run(prompt_ids(pool, QUESTIONS[2]), adapters[1], 4)
    engine.submit(following.request)
    assert len(following.wait()) == 4
    assert len(running.request.generated) < 1_000_000 and engine.rows == [] and not engine.stack.pins


def test_an_engine_handing_memory_back_takes_a_new_request_at_once(pool: ModelPool,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Gone idle after a reply, the engine hands the freed memory back to the system; a request submitted meanwhile
    (the server's event loop submits) is taken at once, not after the clean-up, which held the engine's lock: with
    SmolLM2 each class's next chats, and the whole event loop, waited 0.25-0.3 s."""
    cleaning, finish = threading.Event(), threading.Event()

    def slow_trim() -> None:
        cleaning.set()
        finish.wait(2 * WAIT_S)  # past the test's own wait below

    monkeypatch.setattr("trainer.batching.malloc_trim", slow_trim)
    engine = engine_for(pool)
    first = Run(prompt_ids(pool, QUESTIONS[0]), None, 2)
    engine.submit(first.request)
    first.wait()
    assert cleaning.wait(WAIT_S)  # idle: the engine is handing memory back
    second = Run(prompt_ids(pool, QUESTIONS[1]), None, 2)
    submitting = threading.Thread(target=engine.submit, args=(second.request,))
    submitting.start()
    submitting.join(WAIT_S)
    try:
        assert not submitting.is_alive(), "submit() waited for the clean-up"
    finally:
        finish.set()
    assert len(second.wait()) == 2


def test_a_loaded_base_model_is_out_of_the_garbage_collectors_sight(tiny_model: Path) -> None:
    """A base model lives as long as the server: once loaded it (and the libraries' objects alive then) are frozen
    out of Python's collector, whose full collections walked 400,000 objects with every thread stopped (0.2 s, each
    time a class's chats ended, with SmolLM2)."""
    model, _ = ModelPool({"tiny": str(tiny_model)}, "cpu", 8, 1).base("tiny")
    assert gc.get_freeze_count() > 0
    assert not any(tracked is model for tracked in gc.get_objects())


def test_deleted_model_leaves_the_stack(pool: ModelPool, adapters: list[Path]) -> None:
    """ModelPool.forget drops a deleted model's adapter from its base's stack, so its slot serves others."""
    pool.warm(Target("tiny", adapters[2]))
    assert adapters[2] in pool.stacks["tiny"].loaded
    pool.forget(adapters[2].parent)
    assert adapters[2] not in pool.stacks["tiny"].loaded


def replies(generator: Generator, targets: list[Target], **options: Any) -> list[Callable[[], Any]]:
    """Coroutine factories that stream one reply each and return its text and stats."""
    def one(target: Target, question: str) -> Callable[[], Any]:
        async def run() -> tuple[str, Generated]:
            stats = Generated()
            pieces = [piece async for piece in generator.stream(
                target, [{"role": "user", "content": question}], max_tokens=options.get("max_tokens", 6),
                temperature=0, top_p=1, seed=None, stats=stats)]
            return "".join(pieces), stats
        return run
    return [one(target, QUESTIONS[i % len(QUESTIONS)]) for i, target in enumerate(targets)]


async def test_a_class_of_thirty_is_admitted_with_default_settings(pool: ModelPool, adapters: list[Path]) -> None:
    """30 replies at once, on three adapters and the base, with the default settings: none refused, all answered."""
    settings = Settings()
    generator = Generator(pool, settings.max_batch_rows, settings.max_queued_generations,
                          max_tokens=settings.max_tokens, kv_budget_mb=settings.serving_memory_mb)
    targets = [Target("tiny", [*adapters, None][i % 4]) for i in range(30)]
    answers = await asyncio.wait_for(asyncio.gather(*(run() for run in replies(generator, targets))), WAIT_S)
    assert len(answers) == 30 and all(0 < stats.completion_tokens <= 6 for _, stats in answers)
    assert generator.limit("tiny") >= 30


async def test_a_class_on_one_new_model_reads_its_adapter_once(pool: ModelPool, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten chats at once on a model none has chatted with yet: its adapter file is read once, by the engine's thread
    as it loads it (no thread beside the engine takes Python's lock to read it), and every chat gets the merged
    model's answer."""
    base, _ = pool.base("tiny")
    adapter = make_adapter(base, tmp_path / "job-new" / "final", seed=7)
    reads: list[str] = []

    def counted(path: Path) -> Any:
        reads.append(threading.current_thread().name)
        return read_adapter(path)

    monkeypatch.setattr(lora_stack, "read_adapter", counted)
    generator = Generator(pool, max_rows=16)
    answers = await asyncio.wait_for(asyncio.gather(*(run() for run in replies(
        generator, [Target("tiny", adapter)] * 10, max_tokens=4))), WAIT_S)
    assert reads == ["chat-engine"]
    _, tokenizer = pool.base("tiny")
    for student, (text, _) in enumerate(answers):
        expected = merged_reference(pool, adapter, prompt_ids(pool, QUESTIONS[student % len(QUESTIONS)]), 4)
        assert text == tokenizer.decode(expected, skip_special_tokens=True)


async def test_full_engine_is_busy_with_a_retry_after(pool: ModelPool) -> None:
    """One row and no waiting room: a second reply is refused with Busy carrying a retry-after of at least 1 s."""
    generator = Generator(pool, max_rows=1, max_waiting=0)
    first = generator.stream(Target("tiny", None), [{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0,
                             top_p=1, seed=None, stats=Generated())
    await anext(first)
    with pytest.raises(Busy) as refused:
        await anext(generator.stream(Target("tiny", None), [{"role": "user", "content": "Hi"}], max_tokens=4,
                                     temperature=0, top_p=1, seed=None, stats=Generated()))
    assert refused.value.retry_after >= 1 and refused.value.waiting == 1
    await first.aclose()  # type: ignore[attr-defined]
    text, stats = await asyncio.wait_for(replies(generator, [Target("tiny", None)])[0](), WAIT_S)
    assert stats.completion_tokens > 0


async def test_busy_is_a_429_with_retry_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chat route answers Busy with 429, a retry-after header and a message that says how long to wait."""
    from trainer.server import LazyGenerator, create_app

    async def busy_stream(self: LazyGenerator, *args: Any, **kwargs: Any) -> Any:
        raise Busy(retry_after=12, waiting=40)
        yield ""  # an async generator, as the real one is

    monkeypatch.setattr(LazyGenerator, "stream", busy_stream)
    monkeypatch.setattr(LazyGenerator, "start", lambda self: None)  # no model to prepare
    key = "test-key-for-busy-answers"
    app = create_app(Settings(data_dir=tmp_path, base_models={"tiny": "unused"}, device="cpu", api_key=key))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession() as session:
            for stream in (False, True):
                async with session.post(str(server.make_url("/v1/chat/completions")),
                                        headers={"Authorization": f"Bearer {key}"},
                                        json={"model": "tiny", "stream": stream,
                                              "messages": [{"role": "user", "content": "Hi"}]}) as response:
                    body = await response.json()
                    assert response.status == 429 and response.headers["retry-after"] == "12"
                    assert "about 12 seconds" in body["error"]["message"]
                    assert body["error"]["code"] == "rate_limit_exceeded"
    finally:
        await server.close()


def save_tiny_gemma3(folder: Path, **config: Any) -> Path:
    """A tiny random Gemma3 with Gemma's turn markers saved in folder; config: Gemma3TextConfig's settings beyond
    a width of 64 (the vocabulary the tokenizer's, unless given)."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    from support.trainer_harness import build_tiny_model

    build_tiny_model(folder, family="gemma")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(Gemma3TextConfig(**{
        "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 512,
        "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id, **config}))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Gemma3 (sliding-window layers with a window of 4 beside full ones) with Gemma's turn markers."""
    return save_tiny_gemma3(
        tmp_path_factory.mktemp("tiny-gemma3"), num_hidden_layers=4, sliding_window=4, initializer_range=0.1,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"])


def test_gemma3_sliding_window_layers_batch_like_generate(tiny_gemma3: Path, tmp_path: Path) -> None:
    """Gemma3's sliding-window layers kept whole in the engine's cache (masked to the window) give generate()'s
    tokens, for prompts longer than the window, the base and an adapter side by side in one batch."""
    gemma = ModelPool({"tiny": str(tiny_gemma3)}, "cpu", 4, 1)
    base, tokenizer = gemma.base("tiny")
    assert type(base).__name__ == "Gemma3ForCausalLM"
    adapter = make_adapter(base, tmp_path / "job" / "final", seed=5)
    ids = [prompt_ids(gemma, question) for question in QUESTIONS[:4]]
    targets: list[Path | None] = [None, adapter, adapter, None]
    assert min(len(prompt) for prompt in ids) > 4
    expected = [merged_reference(gemma, target, prompt, 8) for target, prompt in zip(targets, ids, strict=True)]
    engine = engine_for(gemma)
    runs = [Run(prompt, target, 8) for target, prompt in zip(targets, ids, strict=True)]
    for run in runs:
        engine.submit(run.request)
    assert [run.wait() for run in runs] == expected


def test_adapters_leave_least_recently_used_first_never_while_in_use(pool: ModelPool, adapters: list[Path]) -> None:
    """With room for two adapters, a third evicts the least recently used unpinned one; when both are in use the
    third must wait (None), and it gets a slot once one is released."""
    model, _ = pool.base("tiny")
    stack = LoraStack(model, max_adapters=2, budget_bytes=1 << 30)
    first, second = stack.acquire(adapters[0]), stack.acquire(adapters[1])
    assert first is not None and second is not None and first != second
    assert stack.acquire(adapters[2]) is None  # both pinned by running replies
    stack.release(first)
    third = stack.acquire(adapters[2])
    assert third == first and stack.loaded == [adapters[1], adapters[2]]
    stack.release(second)
    stack.release(third)
    assert not stack.pins
    small = LoraStack(model, max_adapters=64, budget_bytes=1)  # a budget below one adapter still holds one
    assert small.acquire(adapters[0]) is not None and small.acquire(adapters[1]) is None


def test_serving_settings_and_their_old_names() -> None:
    """Defaults admit a class (32 rows, a waiting line sized by memory); the old TRAINER_MAX_CONCURRENT_GENERATIONS
    still sets the rows, TRAINER_MAX_BATCH_ROWS wins over it, and an explicit waiting line is kept."""
    defaults = Settings.from_env({})
    assert (defaults.max_batch_rows, defaults.max_queued_generations) == (32, None)
    old = Settings.from_env({"TRAINER_MAX_CONCURRENT_GENERATIONS": "3", "TRAINER_MAX_QUEUED_GENERATIONS": "5"})
    assert (old.max_batch_rows, old.max_queued_generations) == (3, 5)
    both = Settings.from_env({"TRAINER_MAX_BATCH_ROWS": "40", "TRAINER_MAX_CONCURRENT_GENERATIONS": "3"})
    assert both.max_batch_rows == 40
    for settings in (defaults, old, both):
        assert Settings.from_env({**settings.to_env(), "TRAINER_DATA_DIR": str(settings.data_dir)}) == settings


def test_reply_waits_for_an_adapter_slot_then_is_answered(pool: ModelPool, adapters: list[Path]) -> None:
    """With room for one adapter, a reply on a second model waits (beside a base-model reply that runs at once) until
    the first model's reply ends, then gets the slot and its own answer."""
    model, tokenizer = pool.base("tiny")
    engine = Engine(model, tokenizer, LoraStack(model, 1, 1 << 30), max_rows=8, kv_budget_bytes=1 << 30,
                    eos_ids=_eos_ids(model, tokenizer), suppress_ids=list(model.generation_config.suppress_tokens or []))
    ids = prompt_ids(pool, QUESTIONS[0])
    runs = [Run(ids, adapters[0], 6), Run(ids, adapters[1], 6), Run(ids, None, 6)]
    for run in runs:
        engine.submit(run.request)
    answers = [run.wait() for run in runs]
    assert answers[1] == merged_reference(pool, adapters[1], ids, 6)
    assert engine.stack.loaded == [adapters[1]] and not engine.stack.pins


async def test_thirty_chats_through_the_server_are_all_answered(tmp_path: Path, tiny_model: Path) -> None:
    """The server as create_app wires it, default serving settings: 30 chat completions sent at once all get 200."""
    from trainer.server import create_app

    key = "test-key-for-a-class-of-thirty"
    app = create_app(Settings(data_dir=tmp_path, base_models={"tiny": str(tiny_model)}, device="cpu", api_key=key,
                              torch_threads=1))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession() as session:
            async def chat(student: int) -> tuple[int, Any]:
                async with session.post(str(server.make_url("/v1/chat/completions")),
                                        headers={"Authorization": f"Bearer {key}"},
                                        json={"model": "tiny", "max_tokens": 4, "temperature": 0.7, "seed": student,
                                              "messages": [{"role": "user", "content": QUESTIONS[student % 6]}]},
                                        ) as response:
                    return response.status, await response.json()
            answers = await asyncio.wait_for(asyncio.gather(*(chat(student) for student in range(30))), WAIT_S)
        assert [status for status, _ in answers] == [200] * 30
        assert all(0 < body["usage"]["completion_tokens"] <= 4 for _, body in answers)
    finally:
        await server.close()
