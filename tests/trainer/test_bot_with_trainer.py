"""The default backend end to end: no OpenAI setting at all, so the bot runs the school's trainer beside itself.

The real bot (against the fake Discord) starts `python -m trainer` as its child, with a base model named by a setting
(the tiny model built on the spot: the trainer's own tests cover real models, bench/bench_quality.py what they learn),
and a class goes from /finetune start to an answer in a chat thread."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from bot import errors
from bot.openai_gateway import FineTuningGateway
from bot.trainer_process import TrainerProcess as ChildTrainer
from bot.trainer_process import TrainerStartError
from support.fakes.discord import FakeDiscord, FakeMessage
from support.fakes.openai import FakeOpenAI
from support.bot_harness import BotRunner, make_settings, press
from support.trainer_harness import REPO_ROOT, chat_file, free_port

JOB_SECONDS = 240


def trainer_env(model: str) -> dict[str, str]:
    """What a teacher would set to use an offline model: TRAINER_BASE_MODELS, and small limits for speed."""
    return {"TRAINER_BASE_MODELS": model, "TRAINER_MAX_SEQ_LEN": "96", "TRAINER_MAX_TOKENS": "16",
            "TRAINER_TORCH_THREADS": "0", "TRAINER_DEVICE": "cpu"}


@pytest.fixture
async def bot_with_own_trainer(fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path, tiny_model: Path,
                               monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[BotRunner]:
    """The bot configured with a Discord token only (plus the fakes' addresses): it runs the trainer itself."""
    for name, value in trainer_env(f"tiny={tiny_model}").items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TRAINER_API_KEY", raising=False)
    settings = replace(make_settings(fake_discord, fake_openai, tmp_path), openai_api_key=None, openai_base_url=None,
                       default_base_model=None, job_poll_seconds=0.5,
                       trainer_data_dir=tmp_path / "trainer")
    async with BotRunner(settings, fake_discord) as runner:
        yield runner


def _text_of(fake: FakeDiscord, channel: int, words: str) -> FakeMessage | None:
    return next((m for m in fake.messages(channel) if words in m.text()), None)


def _field(message: FakeMessage, name: str) -> int:
    assert message.embed is not None
    value = next(f["value"] for f in message.embed["fields"] if f["name"].startswith(name))
    return int(value.replace(",", ""))


async def _until_trainer_counts(gateway: FineTuningGateway) -> None:
    """Wait until the trainer can count tokens (it loads a tokenizer at its first count; on a busy machine that can
    take longer than the bot waits, and the card then keeps tiktoken's estimate), as a class arrives minutes later."""
    for _ in range(60):
        try:
            await gateway.count_chat_tokens("tiny", [[{"role": "user", "content": "hi"}]])
            return
        except errors.UserFacingError:  # refused while it starts (its port not open yet): ask again
            await asyncio.sleep(1)
    raise TimeoutError("the trainer never counted tokens")


@pytest.mark.timeout(JOB_SECONDS + 60)  # a trainer process, a job and a chat: seconds idle, minutes on a busy machine
async def test_bot_with_no_backend_setting_trains_on_its_own_trainer(fake_discord: FakeDiscord,
                                                                     bot_with_own_trainer: BotRunner) -> None:
    """Token only: the bot starts the trainer, trains its model, shows live losses, announces the model and chats."""
    bot = bot_with_own_trainer.bot
    assert bot is not None and bot.trainer is not None and bot.trainer.pid is not None
    guild = fake_discord.add_guild("Class 1")
    student = fake_discord.add_user("student")
    guild.add_member(student)
    await fake_discord.dispatch("GUILD_CREATE", guild.payload())
    channel = guild.text_channel.id
    await _until_trainer_counts(bot.gateway)
    interaction = await fake_discord.slash(guild, student, "finetune start",
                                           training_file=fake_discord.attachment("pirate.jsonl", chat_file(10)),
                                           epochs=1, suffix="pirate")
    card = await interaction.followup(timeout=60)
    assert "tiny" in card.text() and card.button("Start"), card.text()  # the trainer's model is the default
    card_tokens = _field(card, "Billed tokens")  # tokens per epoch x epochs, counted by the trainer
    progress = await _start_when_trainer_ready(fake_discord, card, student, channel)
    await fake_discord.wait_for(lambda: "Training loss" in progress.text() or None, timeout=JOB_SECONDS,
                                what="a training loss on the card")
    notice = await fake_discord.wait_for(lambda: _text_of(fake_discord, channel, "is trained"), timeout=JOB_SECONDS,
                                         what="the success notice")
    assert "ft:tiny:" in notice.text() and ":pirate:" in notice.text()
    # Counted by the trainer in the base model's own tokenizer: what the card promised is what was trained.
    trained = _field(notice, "Trained tokens")
    assert abs(card_tokens - trained) <= 0.02 * trained, (card_tokens, trained)
    threads_before = len(fake_discord.threads(guild))
    click = await press(fake_discord, notice, "Chat with this model", student)
    assert click is not None
    thread = (await fake_discord.wait_for(lambda: fake_discord.threads(guild)[threads_before:] or None, timeout=30,
                                          what="a chat thread"))[0]
    await fake_discord.wait_message(thread, lambda m: "You're chatting with" in m.content, timeout=30)
    await fake_discord.say(thread, student, "What is the sun?")
    answer = await fake_discord.wait_message(
        thread, lambda m: m.author_id == fake_discord.bot_user.id and "You're chatting with" not in m.content
        and bool(m.content.strip()), timeout=JOB_SECONDS)
    assert answer.content.strip()


async def _start_when_trainer_ready(fake: FakeDiscord, card: FakeMessage, student: object,
                                    channel: int) -> FakeMessage:
    """Press Start as a student would: while the trainer still prepares its model the bot says so (the card stays
    usable), so press again a little later; return the progress card once the job started."""
    for _ in range(JOB_SECONDS // 2):
        click = await press(fake, card, "Start", student)  # type: ignore[arg-type]

        def outcome(click: object = click) -> FakeMessage | None:
            note = next((m for m in click.followups if "still preparing tiny" in m.text()), None)  # type: ignore[attr-defined]
            return _text_of(fake, channel, "Fine-tuning:") or note

        answer = await fake.wait_for(outcome, timeout=60, what="the progress card or a 'still preparing' note")
        if "Fine-tuning:" in answer.text():
            return answer
        assert "went wrong" not in answer.text()
        await asyncio.sleep(2)
    raise TimeoutError("the trainer never got its model ready")


async def test_trainer_child_restarts_after_a_crash_and_stops_with_the_bot(tmp_path: Path, tiny_model: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    """Killed outright, the trainer is started again (same key, same private socket); stopping ends it; logs are prefixed."""
    caplog.set_level("INFO", logger="bot.trainer_process")
    child = ChildTrainer(data_dir=tmp_path / "trainer",
                         environ={**os.environ, **trainer_env(f"tiny={tiny_model}")})
    key = await child.start()
    try:
        assert await child.wait_listening(timeout=60)
        first = child.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await _wait(lambda: child.restarts == 1 and child.pid not in (None, first), "a restart")
        assert await child.wait_listening(timeout=60)
        assert (tmp_path / "trainer" / "api_key").read_text().strip() == key
    finally:
        await child.stop()
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    assert child.pid is None
    logged = caplog.text
    assert "[trainer] trainer.server: Trainer ready" in logged and "restarting in" in logged
    assert key not in logged


async def test_trainer_child_refusing_a_setting_stops_the_start_naming_it(tmp_path: Path) -> None:
    """A malformed TRAINER_ setting: the start fails with the trainer's own one line, which names the setting."""
    child = ChildTrainer(data_dir=tmp_path / "trainer",
                         environ={**os.environ, "TRAINER_BASE_MODELS": "no-source-given"})
    with pytest.raises(TrainerStartError, match="TRAINER_BASE_MODELS"):
        await child.start()
    await child.stop()


async def test_run_bot_script_with_only_a_token_reaches_the_gateway_with_the_trainer(
        fake_discord: FakeDiscord, tmp_path: Path, tiny_model: Path) -> None:
    """`bash scripts/run-bot.sh` with DISCORD_TOKEN (and the fakes' addresses): the gateway, and the trainer beside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "OPENAI_", "TRAINER_"))}
    env.update({"DISCORD_TOKEN": "fake.script.token", "DISCORD_API_BASE_URL": fake_discord.http_base,
                "DISCORD_GATEWAY_URL": fake_discord.gateway_url, "DATABASE_PATH": str(tmp_path / "data" / "bot.db"),
                "VENV": sys.prefix, "TRAINER_PORT": str(free_port()), **trainer_env(f"tiny={tiny_model}")})
    process = await asyncio.create_subprocess_exec(
        "bash", str(REPO_ROOT / "scripts" / "run-bot.sh"), cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    try:
        await fake_discord.wait_ready(timeout=180)
        trainer = await _wait(lambda: next((c for c in psutil.Process(process.pid).children(recursive=True)
                                            if "trainer" in " ".join(c.cmdline())), None), "the trainer process",
                              timeout=60)
        assert (tmp_path / "data" / "trainer" / "api_key").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    log = output.decode()
    assert process.returncode == 0, log[-3000:]
    assert "Fine-tuning backend: the school's own trainer" in log and "fake.script.token" not in log
    assert not trainer.is_running() or trainer.status() == psutil.STATUS_ZOMBIE, (trainer.cmdline(), log[-3000:])


async def _wait(predicate: object, what: str, timeout: float = 60) -> object:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        value = predicate()  # type: ignore[operator]
        if value:
            return value
        await asyncio.sleep(0.1)
    raise TimeoutError(f"waited {timeout} s for {what}")
