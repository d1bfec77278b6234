"""The loopback fakes, proven with the real discord.py and the real openai SDK over 127.0.0.1."""

pytest_plugins = ["tests.fakes_plugin"]

import asyncio
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import openai
import pytest
from discord import app_commands
from discord.ext import commands

from support.bot_harness import press
from support.fakes.discord import FakeDiscord, FakeGuild, FakeUser, start_bot, stop_bot
from support.fakes.openai import FakeOpenAI

TRAIN = b"".join(
    json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}).encode()
    + b"\n"
    for i in range(4)
)


class AgainView(discord.ui.View):
    """A one-button view whose click rewrites the message."""

    @discord.ui.button(label="Again", custom_id="demo:again", style=discord.ButtonStyle.green)
    async def again(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        """Answer the click by editing the message (callback type 7)."""
        await interaction.response.edit_message(content=f"clicked by {interaction.user.name}", view=None)


class NameModal(discord.ui.Modal, title="Your name"):
    """A modal with one text input; submitting it posts a select menu."""

    name: discord.ui.TextInput[Any] = discord.ui.TextInput(label="Name", custom_id="name")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        """Answer with a message holding a colour select."""
        view = discord.ui.View(timeout=None)
        select: discord.ui.Select[Any] = discord.ui.Select(
            custom_id="colour", options=[discord.SelectOption(label=c, value=c) for c in ("red", "blue")]
        )

        async def chosen(inner: discord.Interaction) -> None:
            await inner.response.edit_message(content=f"{self.name.value} likes {select.values[0]}", view=None)

        select.callback = chosen  # type: ignore[method-assign]
        view.add_item(select)
        await interaction.response.send_message(f"hello {self.name.value}", view=view)


class DemoBot(commands.Bot):
    """A tiny bot: /demo upload (attachment + int), a thread echo, for proving the fake."""

    def __init__(self, guild_id: int) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(command_prefix="!", intents=intents, guild_ready_timeout=0.01)
        self.guild_id = guild_id
        self.heard: list[discord.Message] = []
        group = app_commands.Group(name="demo", description="Demo commands")

        @group.command(name="upload", description="Echo a file")
        @app_commands.describe(file="A file", count="How many")
        async def upload(interaction: discord.Interaction, file: discord.Attachment, count: int) -> None:
            await interaction.response.defer(thinking=True)
            data = await file.read()
            embed = discord.Embed(title="Received", description=f"{len(data)} bytes x{count}")
            embed.add_field(name="locale", value=str(interaction.locale))
            card = await interaction.followup.send(
                embed=embed,
                file=discord.File(io.BytesIO(data.upper()), "echo.txt"),
                view=AgainView(timeout=None),
                wait=True,
            )
            # A followup's WebhookMessage has no guild in discord.py, so the thread is made through the channel.
            assert isinstance(interaction.channel, discord.TextChannel)
            thread = await interaction.channel.create_thread(name="demo chat", message=card)
            await thread.send("thread open")

        @group.command(name="whisper", description="Defer in public, then follow up privately twice")
        async def whisper(interaction: discord.Interaction) -> None:
            await interaction.response.defer(thinking=True)
            await interaction.followup.send("first", ephemeral=True)
            await interaction.followup.send("second", ephemeral=True)

        @group.command(name="close", description="Archive and lock this thread")
        async def close(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("closing")
            assert isinstance(interaction.channel, discord.Thread)
            await interaction.channel.edit(archived=True, locked=True)

        @group.command(name="pick", description="Autocomplete demo")
        async def pick(interaction: discord.Interaction, model: str) -> None:
            await interaction.response.send_message(f"picked {model}", ephemeral=True)

        @pick.autocomplete("model")
        async def pick_auto(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            names = ["ft-alpha", "ft-beta", "gpt-4o-mini"]
            return [app_commands.Choice(name=n, value=n) for n in names if n.startswith(current)]

        @group.command(name="form", description="Modal and select demo")
        async def form(interaction: discord.Interaction) -> None:
            await interaction.response.send_modal(NameModal())

        @group.command(name="files", description="Edit attachments demo")
        async def files(interaction: discord.Interaction, user: discord.User) -> None:
            await interaction.response.send_message(
                f"for {user.name}",
                files=[discord.File(io.BytesIO(b"a"), "a.txt"), discord.File(io.BytesIO(b"b"), "b.txt")],
            )
            msg = await interaction.original_response()
            keep = next(a for a in msg.attachments if a.filename == "a.txt")
            await interaction.edit_original_response(attachments=[keep, discord.File(io.BytesIO(b"c"), "c.txt")])
            dm = await user.send("a private note")
            await dm.add_reaction("\N{THUMBS UP SIGN}")

        self.tree.add_command(group)

    async def setup_hook(self) -> None:
        """Sync the commands to the test guild."""
        await self.tree.sync(guild=discord.Object(self.guild_id))

    async def on_message(self, message: discord.Message) -> None:
        """Echo user messages in threads."""
        if message.author.bot:
            return
        self.heard.append(message)
        if isinstance(message.channel, discord.Thread):
            async with message.channel.typing():
                await message.channel.send(f"echo: {message.content}")


@pytest.fixture
async def world(fake_discord: FakeDiscord) -> tuple[FakeGuild, FakeUser]:
    """A guild with one student."""
    guild = fake_discord.add_guild("Class 1", locale="ko")
    student = fake_discord.add_user("minji", locale="ko")
    guild.add_member(student)
    return guild, student


@pytest.fixture
async def demo_bot(fake_discord: FakeDiscord, world: tuple[FakeGuild, FakeUser]) -> AsyncIterator[DemoBot]:
    """DemoBot connected to the fake and ready."""
    guild, _ = world
    bot = DemoBot(guild.id)
    for cmd in list(bot.tree.get_commands()):
        bot.tree.add_command(cmd, guild=discord.Object(guild.id), override=True)
    task = await start_bot(bot)
    try:
        yield bot
    finally:
        await stop_bot(bot, task)


async def test_discord_slash_defer_followup_click_thread_roundtrip(
    fake_discord: FakeDiscord, world: tuple[FakeGuild, FakeUser], demo_bot: DemoBot
) -> None:
    """A slash command with a file defers, follows up with embed + file + button; the click edits the message."""
    guild, student = world
    assert fake_discord.guild_commands[guild.id][0]["name"] == "demo"
    upload = fake_discord.attachment("train.jsonl", b"hello bytes", "application/jsonl")
    inter = await fake_discord.slash(guild, student, "demo upload", file=upload, count=3)
    assert (await inter.response())["type"] == 5
    assert inter.responded_after is not None and inter.responded_after < 3
    card = await inter.followup()
    assert card is inter.original and not card.loading
    assert card.embed is not None and card.embed["title"] == "Received"
    assert "11 bytes x3" in card.text() and "ko" in card.text()
    assert card.file("echo.txt").data == b"HELLO BYTES"
    assert card.button("Again")["style"] == 3

    click = await fake_discord.click(card, "Again", student)
    assert (await click.response())["type"] == 7
    assert card.content == "clicked by minji" and card.buttons == [] and len(card.edits) == 1

    thread = (await fake_discord.wait_for(lambda: fake_discord.threads(guild), 3, "a thread"))[0]
    await fake_discord.wait_message(thread.id, lambda m: m.content == "thread open")
    await fake_discord.say(thread.id, student, "hi there")
    reply = await fake_discord.wait_message(thread.id, lambda m: m.content == "echo: hi there")
    assert reply.author_id == fake_discord.bot_user.id
    assert demo_bot.heard[-1].guild is not None and demo_bot.heard[-1].guild.id == guild.id
    assert thread.id == card.id and fake_discord.count("POST", rf"/channels/{thread.id}/typing$") >= 1

    closing = await fake_discord.slash(guild, student, "demo close", channel=thread)
    assert (await closing.response())["data"]["content"] == "closing"
    await fake_discord.wait_for(lambda: thread.archived and thread.locked, 3, "the thread to be archived and locked")
    with pytest.raises(PermissionError):
        await fake_discord.say(thread.id, student, "can I still post?")
    assert fake_discord.unhandled == []


async def test_discord_first_followup_after_a_public_deferral_is_public_whatever_its_flag(
    fake_discord: FakeDiscord, world: tuple[FakeGuild, FakeUser], demo_bot: DemoBot
) -> None:
    """As Discord does: the first followup fills the deferred response, whose visibility the deferral set (its
    ephemeral flag is ignored: the whole channel reads it); only later followups can be private."""
    guild, student = world
    inter = await fake_discord.slash(guild, student, "demo whisper")
    first, second = await inter.followup(), await inter.followup(index=1)
    assert first is inter.original and first.content == "first" and not first.ephemeral
    assert second.content == "second" and second.ephemeral


async def test_discord_429_with_via_is_retried_by_discord_py(
    fake_discord: FakeDiscord, world: tuple[FakeGuild, FakeUser], demo_bot: DemoBot
) -> None:
    """A 429 carrying Via and retry_after is retried by discord.py, and the message still arrives."""
    guild, _ = world
    channel = demo_bot.get_channel(guild.text_channel.id)
    assert isinstance(channel, discord.TextChannel)
    fake_discord.fail_next("POST", r"/channels/\d+/messages$", status=429, retry_after=0.02)
    await asyncio.wait_for(channel.send("after the limit"), 5)
    posts = [r for r in fake_discord.requests if r.method == "POST" and r.path.endswith("/messages")]
    assert [r.status for r in posts] == [429, 200]
    assert fake_discord.messages(guild.text_channel)[-1].content == "after the limit"


async def test_discord_edit_rate_limit_mode_answers_429_and_bot_waits(
    fake_discord: FakeDiscord, world: tuple[FakeGuild, FakeUser], demo_bot: DemoBot
) -> None:
    """With rate_limit_edits on, a burst of edits is slowed to the limit by discord.py's retry."""
    guild, _ = world
    channel = demo_bot.get_channel(guild.text_channel.id)
    assert isinstance(channel, discord.TextChannel)
    msg = await channel.send("0")
    fake_discord.rate_limit_edits = (3, 0.2)
    for i in range(5):
        msg = await asyncio.wait_for(msg.edit(content=str(i + 1)), 5)
    stored = fake_discord.message(msg.id)
    assert stored.content == "5" and len(stored.edits) == 5
    assert fake_discord.max_edits_in_window(guild.text_channel.id, 0.2) <= 3
    assert any(r.status == 429 for r in fake_discord.requests)


async def test_discord_autocomplete_returns_bot_choices(
    fake_discord: FakeDiscord, world: tuple[FakeGuild, FakeUser], demo_bot: DemoBot
) -> None:
    """fake.autocomplete sends a type-4 interaction and returns the bot's choices."""
    guild, student = world
    choices = await fake_discord.autocomplete(guild, student, "demo pick", focused="model", value="ft")
    assert [c["value"] for c in choices] == ["ft-alpha", "ft-beta"]
    inter = await fake_discord.slash(guild, student, "demo pick", model="ft-beta")
    msg = (await inter.wait_done()).original
    assert msg is not None and msg.ephemeral and msg.content == "picked ft-beta"


async def test_discord_modal_submit_and_select_menu(
    fake_discord: FakeDiscord, world: tuple[FakeGuild, FakeUser], demo_bot: DemoBot
) -> None:
    """A modal opened by the bot can be submitted, and a select menu picked, through the fake."""
    guild, student = world
    inter = await fake_discord.slash(guild, student, "demo form")
    assert (await inter.response())["type"] == 9
    submit = await fake_discord.submit_modal(inter, name="Minji")
    msg = (await submit.wait_done()).original
    assert msg is not None and msg.content == "hello Minji" and msg.selects[0]["custom_id"] == "colour"
    # Picked as a person does: the bot stores the select's view only after the message is posted, so a pick the
    # same millisecond may find nothing listening yet (press picks again then).
    pick = await press(fake_discord, msg, "colour", student, values=["blue"])
    assert (await pick.response())["type"] == 7 and msg.content == "Minji likes blue"  # type: ignore[attr-defined]


async def test_discord_edit_keeps_and_replaces_attachments_and_dm(
    fake_discord: FakeDiscord, world: tuple[FakeGuild, FakeUser], demo_bot: DemoBot
) -> None:
    """Editing the original response keeps the listed attachment and adds a new one; a DM reaches the user."""
    guild, student = world
    inter = await fake_discord.slash(guild, student, "demo files", user=student)
    msg = (await inter.wait_done()).original
    assert msg is not None and msg.content == "for minji"
    await fake_discord.wait_for(lambda: len(msg.edits) == 1, 3, "the attachment edit")
    assert [a.filename for a in msg.files] == ["a.txt", "c.txt"] and msg.file("c.txt").data == b"c"
    dm_channel = await fake_discord.wait_for(lambda: fake_discord.dm_channel(student), 3, "a DM channel")
    note = await fake_discord.wait_message(dm_channel.id, lambda m: m.content == "a private note")
    await fake_discord.wait_for(lambda: note.reactions, 3, "a reaction")
    assert note.reactions == ["\N{THUMBS UP SIGN}"]


async def test_discord_user_dm_reaches_on_message(
    fake_discord: FakeDiscord, world: tuple[FakeGuild, FakeUser], demo_bot: DemoBot
) -> None:
    """A message a user sends in a DM reaches on_message with no guild."""
    _, student = world
    await fake_discord.say(fake_discord.open_dm(student), student, "hi bot")
    heard = await fake_discord.wait_for(lambda: [m for m in demo_bot.heard if m.content == "hi bot"], 3, "the DM")
    assert heard[0].guild is None and heard[0].author.id == student.id


async def test_discord_guild_added_while_connected_reaches_bot(
    fake_discord: FakeDiscord, world: tuple[FakeGuild, FakeUser], demo_bot: DemoBot
) -> None:
    """A second guild added after login is sent as GUILD_CREATE and the bot sees it with its locale."""
    second = fake_discord.add_guild("Class 2", locale="en-GB")
    seen = await fake_discord.wait_for(lambda: demo_bot.get_guild(second.id), 3, "the bot to see Class 2")
    assert seen.preferred_locale == discord.Locale.british_english and len(demo_bot.guilds) == 2


async def test_discord_injected_503_surfaces_as_server_error(
    fake_discord: FakeDiscord, world: tuple[FakeGuild, FakeUser], demo_bot: DemoBot
) -> None:
    """fail_next with a 503 (which discord.py does not retry) reaches the bot as DiscordServerError."""
    guild, _ = world
    channel = demo_bot.get_channel(guild.text_channel.id)
    assert isinstance(channel, discord.TextChannel)
    fake_discord.fail_next("POST", r"/messages$", status=503)
    with pytest.raises(discord.DiscordServerError):
        await asyncio.wait_for(channel.send("x"), 10)
    assert fake_discord.messages(guild.text_channel) == []


async def test_discord_over_long_content_is_rejected_like_discord(
    fake_discord: FakeDiscord, world: tuple[FakeGuild, FakeUser], demo_bot: DemoBot
) -> None:
    """Content over 2000 characters is refused with 50035 Invalid Form Body and recorded in fake.rejected."""
    guild, _ = world
    channel = demo_bot.get_channel(guild.text_channel.id)
    assert isinstance(channel, discord.TextChannel)
    with pytest.raises(discord.HTTPException) as info:
        await channel.send("x" * 2001)
    assert info.value.code == 50035 and "content" in fake_discord.rejected[0][1]
    assert fake_discord.messages(guild.text_channel) == []


async def test_discord_second_bot_connects_after_first_closes(
    fake_discord: FakeDiscord, world: tuple[FakeGuild, FakeUser]
) -> None:
    """Closing a bot leaves the fake usable: a second bot connects, gets the guild and answers a command."""
    guild, student = world
    first = DemoBot(guild.id)
    task = await start_bot(first)
    assert first.get_guild(guild.id) is not None and first.get_guild(guild.id).preferred_locale.value == "ko"
    await stop_bot(first, task)
    await fake_discord.wait_for(lambda: fake_discord.connected == 0, 3, "the first bot to disconnect")

    second = DemoBot(guild.id)
    task = await start_bot(second)
    try:
        await fake_discord.wait_ready(3)
        inter = await fake_discord.slash(guild, student, "demo pick", model="x")
        assert (await inter.response())["data"]["content"] == "picked x"
    finally:
        await stop_bot(second, task)


async def test_discord_gateway_drop_resumes_session(
    fake_discord: FakeDiscord, world: tuple[FakeGuild, FakeUser], demo_bot: DemoBot
) -> None:
    """A dropped gateway socket is resumed on resume_gateway_url and events flow again."""
    guild, student = world
    resumed = asyncio.Event()

    async def on_resumed() -> None:
        resumed.set()

    demo_bot.add_listener(on_resumed)
    await fake_discord.drop_connections()
    await asyncio.wait_for(resumed.wait(), 5)
    inter = await fake_discord.slash(guild, student, "demo pick", model="y")
    assert (await inter.response())["data"]["content"] == "picked y"


async def test_discord_unknown_route_is_recorded_as_unhandled(fake_discord: FakeDiscord) -> None:
    """An unknown route answers Discord's 404 JSON with the exact content type and is recorded."""
    async with aiohttp.ClientSession() as http, http.get(fake_discord.api_base + "/nope/1") as resp:
        assert resp.status == 404 and resp.headers["Content-Type"] == "application/json"
        assert (await resp.json())["message"] == "404: Not Found"
    assert [r.path for r in fake_discord.unhandled] == ["/api/v10/nope/1"]


# ----- OpenAI -----


@pytest.fixture
async def client(fake_openai: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    """The real SDK pointed at the fake."""
    async with openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key=fake_openai.api_key, timeout=5) as c:
        yield c


async def test_openai_upload_job_advance_complete_and_events_paging(
    fake_openai: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    """Upload, create a job, drive it to success; the SDK pages through its events newest first."""
    train = await client.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    valid = await client.files.create(file=("valid.jsonl", TRAIN), purpose="fine-tune")
    assert fake_openai.uploads[0] == ("train.jsonl", "fine-tune", TRAIN)
    job = await client.fine_tuning.jobs.create(
        model="gpt-4o-mini-2024-07-18",
        training_file=train.id,
        validation_file=valid.id,
        suffix="2024model",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
        metadata={"guild": "1"},
    )
    assert job.status == "validating_files" and not (job.error and job.error.code)
    fake_openai.advance(job.id, 3)
    job = await client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "running"
    fake_openai.complete(job.id)
    job = await client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded" and job.trained_tokens
    assert job.fine_tuned_model == f"ft:gpt-4o-mini-2024-07-18:fake-school:2024model:{job.id[6:14]}"
    assert job.fine_tuned_model in [m.id async for m in client.models.list()]

    events = [e async for e in client.fine_tuning.jobs.list_events(job.id, limit=3)]
    assert fake_openai.count("GET", r"/events$") > 3  # paged with after=<event id>
    messages = [e.message for e in reversed(events)]
    assert messages[0] == f"Created fine-tuning job: {job.id}"
    assert messages[-1] == "The job has successfully completed"
    metrics = [e.data for e in events if e.type == "metrics"]
    assert len(metrics) == 8 and metrics[0]["step"] == 8 and "full_valid_loss" in metrics[0]
    assert metrics[0]["train_loss"] < metrics[-1]["train_loss"]
    assert any(m.startswith("Checkpoint created at step 4") for m in messages)
    checkpoints = await client.fine_tuning.jobs.checkpoints.list(job.id)
    assert [c.step_number for c in checkpoints.data] == [8, 4]
    listed = await client.fine_tuning.jobs.list(metadata={"guild": "1"})
    assert [j.id for j in listed.data] == [job.id]


async def test_openai_cancel_pause_resume_and_auto_advance(fake_openai: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    """Pause and resume a running job, cancel another; auto_advance moves a job on every GET."""
    train = await client.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    job = await client.fine_tuning.jobs.create(model="gpt-4.1-2025-04-14", training_file=train.id)
    fake_openai.advance(job.id, 2)
    assert (await client.fine_tuning.jobs.pause(job.id)).status == "paused"
    fake_openai.advance(job.id, 5)
    assert fake_openai.job(job.id).step == 0  # a paused job does not train
    assert (await client.fine_tuning.jobs.resume(job.id)).status == "running"
    other = await client.fine_tuning.jobs.create(model="gpt-4.1-2025-04-14", training_file=train.id)
    assert (await client.fine_tuning.jobs.cancel(other.id)).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        await client.fine_tuning.jobs.cancel(other.id)
    fake_openai.auto_advance = 5
    seen = [(await client.fine_tuning.jobs.retrieve(job.id)).status for _ in range(4)]
    assert seen[-1] == "succeeded" and fake_openai.job(job.id).step == 12
    page = await client.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in page.data] == [other.id] and page.has_more


async def test_openai_files_list_content_delete_and_model_delete(
    fake_openai: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    """Files list newest first, serve their bytes and delete; a fine-tuned model can be deleted."""
    first = await client.files.create(file=("a.jsonl", TRAIN), purpose="fine-tune")
    second = await client.files.create(file=("b.jsonl", b"{}\n"), purpose="fine-tune")
    assert [f.id async for f in client.files.list(limit=1)] == [second.id, first.id]
    assert (await client.files.content(first.id)).content == TRAIN
    assert (await client.files.delete(first.id)).deleted
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(first.id)
    fake_openai.add_fine_tuned_model("ft:gpt-4o-mini-2024-07-18:fake-school:x:abc")
    deleted = await client.models.delete("ft:gpt-4o-mini-2024-07-18:fake-school:x:abc")
    assert deleted.deleted and fake_openai.fine_tuned_models == {}


async def test_openai_quota_and_dpo_errors(fake_openai: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    """Exhausted quota is 429 insufficient_quota; DPO on a model without it is 400."""
    train = await client.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as dpo:
        await client.fine_tuning.jobs.create(
            model="gpt-4o-mini-2024-07-18", training_file=train.id, method={"type": "dpo"}
        )
    assert dpo.value.code == "invalid_method"
    fake_openai.set_quota_exhausted()
    with pytest.raises(openai.RateLimitError) as quota:
        await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert quota.value.code == "insufficient_quota"


@pytest.mark.parametrize(
    ("model", "error", "code"),
    [
        ("gpt-9-imaginary", openai.NotFoundError, "model_not_found"),
        ("gpt-3.5-turbo-0125", openai.NotFoundError, "model_not_found"),  # retired on 2026-10-23
        ("gpt-4o-mini", openai.BadRequestError, "model_not_available"),  # exists, not fine-tunable
    ],
)
async def test_openai_job_with_unusable_model_is_refused(
    fake_openai: FakeOpenAI, client: openai.AsyncOpenAI, model: str, error: type[Exception], code: str
) -> None:
    """Job creation names unknown or retired models as missing and chat-only models as unavailable."""
    train = await client.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    with pytest.raises(error) as info:
        await client.fine_tuning.jobs.create(model=model, training_file=train.id)
    assert getattr(info.value, "code", None) == code


async def test_openai_failed_job_carries_error(fake_openai: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    """fake.fail makes a failed job whose error has the code and message."""
    train = await client.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    job = await client.fine_tuning.jobs.create(model="gpt-4.1-mini-2025-04-14", training_file=train.id)
    fake_openai.fail(job.id, "invalid_training_file", "Line 3 has no assistant message.")
    job = await client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "failed" and job.error and job.error.code == "invalid_training_file"


async def test_openai_job_with_unknown_file_is_400(fake_openai: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    """A job naming a file that does not exist is refused with 400 invalid_training_file."""
    with pytest.raises(openai.BadRequestError) as info:
        await client.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file="file-missing")
    assert info.value.code == "invalid_training_file"


async def test_openai_refused_creation_raises_permission_denied(
    fake_openai: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    """The wind-down refusal arrives as the SDK's PermissionDeniedError with our code."""
    train = await client.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    fake_openai.refuse_job_creation()
    with pytest.raises(openai.PermissionDeniedError) as info:
        await client.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file=train.id)
    assert info.value.code == "fine_tuning_unavailable" and fake_openai.jobs == []


async def test_openai_429_then_success_is_retried_by_sdk(fake_openai: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    """A 429 with retry-after-ms is retried by the SDK and the call succeeds."""
    fake_openai.fail_next("GET", r"/models$", status=429, retry_after=0.01)
    models = [m.id async for m in client.models.list()]
    assert "gpt-4o-mini-2024-07-18" in models and "gpt-3.5-turbo-0125" not in models
    assert fake_openai.count("GET", r"/models$") == 2


async def test_openai_bad_key_is_401(fake_openai: FakeOpenAI) -> None:
    """A wrong key gets 401 invalid_api_key and the key is not echoed."""
    async with openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key="sk-wrong") as bad:
        with pytest.raises(openai.AuthenticationError) as info:
            await bad.models.list()
    assert info.value.code == "invalid_api_key" and "sk-wrong" not in str(info.value)


async def test_openai_streaming_chat_collects_text_and_usage(
    fake_openai: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    """A streamed chat yields the role first, the reply in pieces, and usage at the end."""
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hello there"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert "".join(pieces) == "[gpt-4o-mini] reply to: hello there" and len(pieces) > 3
    assert usage is not None and usage.completion_tokens == len(pieces)
    assert fake_openai.chat_requests[0]["stream"] is True


async def test_openai_retired_model_and_context_errors(fake_openai: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    """A retired model answers 404 model_not_found; an over-long prompt answers context_length_exceeded."""
    fake_openai.retire_model("gpt-4o")
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"
    fake_openai.context_chars = 10
    with pytest.raises(openai.BadRequestError) as long:
        await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x" * 11}])
    assert long.value.code == "context_length_exceeded"


async def test_openai_moderation_flags_words(fake_openai: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    """Inputs containing a flag word come back flagged; the rest do not."""
    fake_openai.flag_words = {"idiot"}
    result = await client.moderations.create(model="omni-moderation-latest", input=["you idiot", "nice work"])
    assert [r.flagged for r in result.results] == [True, False]
    assert result.results[0].categories.harassment is True


async def test_openai_hang_times_out_client_and_server_closes(fake_openai: FakeOpenAI) -> None:
    """A hung request times the client out; the fake still shuts down cleanly."""
    fake_openai.hang_next("GET", r"/models$")
    async with openai.AsyncOpenAI(
        base_url=fake_openai.base_url, api_key=fake_openai.api_key, timeout=0.2, max_retries=0
    ) as c:
        with pytest.raises(openai.APITimeoutError):
            await c.models.list()
    await asyncio.wait_for(fake_openai.close(), 3)
