"""Journeys of /finetune through the real discord.py and the real openai SDK, against the loopback fakes."""

from __future__ import annotations

import asyncio
import contextlib
import json

from tests.conftest import Classroom, ticks
from support.fakes.discord import FakeMessage
from support.bot_harness import press

DEFERRED = 5
GREEN, GREY = 3, 2
PNG = b"\x89PNG\r\n\x1a\n"


def chat_file(n: int = 12) -> bytes:
    """A small valid chat-format training file."""
    lines = []
    for i in range(n):
        lines.append(json.dumps({"messages": [
            {"role": "system", "content": "You answer like a friendly pirate."},
            {"role": "user", "content": f"What is {i} plus {i}?"},
            {"role": "assistant", "content": f"Arr, {i} plus {i} be {2 * i}, matey!"},
        ]}))
    return ("\n".join(lines) + "\n").encode()


async def open_card(room: Classroom, data: bytes = b"", filename: str = "train.jsonl", user: object = None,
                    locale: str | None = None, **options: object) -> FakeMessage:
    """Run /finetune start with an attachment and return the card the bot answers with."""
    attachment = room.discord.attachment(filename, data or chat_file())
    interaction = await room.discord.slash(room.guild, user or room.student, "finetune start", locale=locale,
                                           training_file=attachment, **options)
    assert (await interaction.response(timeout=3))["type"] == DEFERRED
    return await interaction.followup(timeout=15)


async def start_job(room: Classroom, **options: object) -> str:
    """Open a card, press Start, and return the id of the job created at the fake OpenAI."""
    card = await open_card(room, **options)
    await press(room.discord, card, "Start", room.student)
    job = await room.discord.wait_for(lambda: room.openai.jobs[0] if room.openai.jobs else None, timeout=10,
                                      what="a job at the fake OpenAI")
    return job.id


def progress_card(room: Classroom) -> FakeMessage | None:
    """The job's progress card in the channel, if posted."""
    return next((m for m in room.discord.messages(room.channel_id) if m.embed and "Fine-tuning:" in (
        m.embed.get("title") or "")), None)


def notices(room: Classroom) -> list[FakeMessage]:
    """End-of-job notices in the channel."""
    return [m for m in room.discord.messages(room.channel_id) if m.embed and any(
        word in (m.embed.get("title") or "") for word in ("is trained", "training failed", "was cancelled"))]


async def test_start_valid_file_defers_then_offers_start_button(classroom: Classroom) -> None:
    """/finetune start defers at once, then shows the cost card with Start and Cancel; nothing is uploaded yet."""
    card = await open_card(classroom)
    text = card.text()
    assert "12" in text and "Estimated cost" in text and "gpt-4o-mini-2024-07-18" in text
    assert card.button("Start")["style"] == GREEN
    assert card.button("Cancel")["style"] == GREY
    assert classroom.openai.uploads == []


async def test_start_click_by_other_student_is_refused(classroom: Classroom) -> None:
    """Only the requester can press Start; another member gets a private refusal and no job starts."""
    other = classroom.discord.add_user("other")
    classroom.guild.add_member(other)
    card = await open_card(classroom)
    click = await press(classroom.discord, card, "Start", other)
    answer = await click.response(timeout=5)
    assert answer["data"]["flags"] & 64 and "Only the person who asked" in answer["data"]["content"]
    assert classroom.openai.uploads == [] and classroom.openai.jobs == []


async def test_start_cancel_button_uploads_nothing(classroom: Classroom) -> None:
    """Cancel on the card greys out the buttons and never uploads."""
    card = await open_card(classroom)
    click = await press(classroom.discord, card, "Cancel", classroom.student)
    await click.wait_done(timeout=5)
    await classroom.discord.wait_for(lambda: card.button("Start").get("disabled") or None, timeout=5)
    assert [f for f in classroom.openai.files.values() if f.purpose == "fine-tune"] == []  # the upload was removed
    assert classroom.openai.uploads == []


async def test_whole_journey_card_progress_chart_and_one_notice(classroom: Classroom) -> None:
    """Start -> upload and job -> progress edits with losses and a PNG -> exactly one success notice."""
    job_id = await start_job(classroom, suffix="pirate", epochs=2)
    upload = classroom.openai.uploads[0]
    assert upload[0].endswith(".jsonl") and upload[1] == "fine-tune"
    created = classroom.openai.job(job_id)
    assert created.suffix == "pirate" and created.metadata["guild_id"] == str(classroom.guild.id)
    card = await classroom.discord.wait_for(lambda: progress_card(classroom), timeout=10, what="progress card")

    classroom.openai.advance(job_id, steps=2 + created.total_steps // 2)
    await classroom.discord.wait_for(lambda: "Training loss" in card.text() or None, timeout=10, what="loss on card")
    assert card.files and card.files[0].data.startswith(PNG)
    assert "step" in card.text()

    classroom.openai.complete(job_id)
    notice = await classroom.discord.wait_for(lambda: notices(classroom) or None, timeout=10, what="notice")
    assert created.fine_tuned_model in notice[0].text()
    assert notice[0].button("Chat with this model")
    assert notice[0].files[0].data.startswith(PNG)
    await classroom.discord.wait_for(lambda: "Finished" in card.text() or None, timeout=10)
    # The finished card's loss is its last step's; the notice's, the last epoch's mean: each says which it is.
    assert "Training loss (last step)" in card.text() and "mean over the last epoch" in notice[0].text()
    # Later ticks must not announce again, nor ask the backend about a finished job.
    polls = classroom.openai.count("GET", r"/fine_tuning/jobs/[^/]+$")
    await ticks(classroom, 3)
    assert classroom.openai.count("GET", r"/fine_tuning/jobs/[^/]+$") == polls
    assert len(notices(classroom)) == 1


async def test_a_job_that_ends_is_announced_while_other_cards_spend_the_channels_edits(classroom: Classroom) -> None:
    """A class of 30 shares one channel's 5 edits in 5 s: the cards of the jobs in line and in training kept it spent,
    and the watcher did not even ask about a job whose channel had no edit free, so a finished student's notice came
    30 s after the model (bench_bot_class). A job's end is news that must not wait: it is asked about every tick, its
    card takes the next free edit and its notice follows."""
    job_id = await start_job(classroom, suffix="pirate", epochs=2)
    card = await classroom.discord.wait_for(lambda: progress_card(classroom), timeout=10, what="progress card")
    budget = classroom.bot.edit_budget
    channel = classroom.channel_id

    async def other_cards() -> None:  # 29 other cards waiting their turn: every edit that frees is taken at once
        while True:
            await budget.start(channel)
            budget.finish(channel)

    hog = asyncio.create_task(other_cards())
    try:
        await asyncio.sleep(0.5)
        assert budget.delay(channel) > 0  # the channel's edits are spent from here on
        classroom.openai.complete(job_id)
        notice = await classroom.discord.wait_for(lambda: notices(classroom) or None, timeout=10, what="notice")
        assert classroom.openai.job(job_id).fine_tuned_model in notice[0].text()
        assert "Finished" in card.text()  # its card took an edit before the notice
    finally:
        hog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hog


async def test_cards_in_a_busy_channel_never_hold_the_watcher_waiting_for_an_edit(classroom: Classroom) -> None:
    """Every card with news passed the budget check at the start of a tick, then waited inside the tick for an edit
    (16 at once, one edit a second), so a tick lasted as long as their queue and a job's end was seen only at the next
    one: notices came 7.7 s after the model at the median, 24 s at most (bench_bot_class, 30 students). A card that
    finds no edit free now leaves its news for the next tick, first in line as the least recently updated; only a
    job's end waits for an edit."""
    job_ids = []
    for index in range(4):
        student = classroom.discord.add_user(f"student{index}")
        classroom.guild.add_member(student)
        card = await open_card(classroom, user=student, suffix=f"s{index}")
        await press(classroom.discord, card, "Start", student)
        job = await classroom.discord.wait_for(
            lambda n=index + 1: classroom.openai.jobs[n - 1] if len(classroom.openai.jobs) >= n else None,
            timeout=10, what="the job at the fake OpenAI")
        job_ids.append(job.id)
    budget = classroom.bot.edit_budget
    waited: list[int] = []
    start = budget.start

    async def counted(channel_id: int, timeout: float = 30.0) -> None:
        waited.append(channel_id)
        await start(channel_id, timeout)

    budget.start = counted  # type: ignore[method-assign]
    for _ in range(8):  # every card has news at every tick: more edits wanted than the channel allows
        for job_id in job_ids:
            classroom.openai.advance(job_id)
        await ticks(classroom, 1)
    assert waited == []
    classroom.openai.complete(job_ids[0])
    notice = await classroom.discord.wait_for(lambda: notices(classroom) or None, timeout=10, what="notice")
    assert classroom.openai.job(job_ids[0]).fine_tuned_model in notice[0].text()
    assert waited  # the job's end took the next free edit


async def test_bad_file_names_the_line_and_uploads_nothing(classroom: Classroom) -> None:
    """A broken line is reported with its line number; there is no Start button and nothing is uploaded."""
    lines = chat_file().decode().splitlines()
    lines[4] = '{"messages": [{"role": "user", "content": "hi"}'  # line 5: cut off
    card = await open_card(classroom, ("\n".join(lines) + "\n").encode())
    assert "Line 5" in card.text()
    assert not card.buttons
    assert classroom.openai.uploads == []


async def test_cancel_command_stops_job_and_posts_cancelled_notice(classroom: Classroom) -> None:
    """/finetune cancel by the requester cancels at the backend; the channel says it was cancelled, once."""
    job_id = await start_job(classroom)
    await classroom.discord.wait_for(lambda: progress_card(classroom), timeout=10)
    interaction = await classroom.discord.slash(classroom.guild, classroom.student, "finetune cancel", job=job_id)
    reply = await interaction.followup(timeout=10)
    assert "Cancelling" in reply.text()
    assert classroom.openai.job(job_id).status == "cancelled"
    notice = await classroom.discord.wait_for(lambda: notices(classroom) or None, timeout=10)
    assert "was cancelled" in notice[0].text()


async def test_cancel_by_other_student_is_refused_and_job_runs_on(classroom: Classroom) -> None:
    """A student cannot cancel someone else's job; the job keeps running."""
    job_id = await start_job(classroom)
    other = classroom.discord.add_user("other")
    classroom.guild.add_member(other)
    interaction = await classroom.discord.slash(classroom.guild, other, "finetune cancel", job=job_id)
    reply = await interaction.followup(timeout=10)
    assert reply.ephemeral and "Only the person who started this job" in reply.text()
    assert classroom.openai.job(job_id).status != "cancelled"


async def test_cancel_by_teacher_is_allowed(classroom: Classroom) -> None:
    """A member with Manage Server may cancel any job of the server."""
    job_id = await start_job(classroom)
    interaction = await classroom.discord.slash(classroom.guild, classroom.teacher, "finetune cancel", job=job_id)
    await interaction.followup(timeout=10)
    assert classroom.openai.job(job_id).status == "cancelled"


async def test_failed_job_notice_gives_code_message_and_advice(classroom: Classroom) -> None:
    """A failed job is announced with its error code, the backend's message and what to do."""
    job_id = await start_job(classroom)
    classroom.openai.advance(job_id, 3)
    classroom.openai.fail(job_id, code="invalid_n_examples",
                          message="Training file has 7 example(s), but must have at least 10 examples")
    notice = await classroom.discord.wait_for(lambda: notices(classroom) or None, timeout=10)
    text = notice[0].text()
    assert "invalid_n_examples" in text and "at least 10 examples" in text and "Add more" in text
    assert not notice[0].buttons


async def test_paused_job_and_empty_error_are_not_failures(classroom: Classroom) -> None:
    """`paused` is not terminal and a healthy job's `error: {}` is not a failure: no notice is posted."""
    job_id = await start_job(classroom)
    classroom.openai.advance(job_id, 3)
    classroom.openai.set_status(job_id, "paused")
    card = await classroom.discord.wait_for(lambda: progress_card(classroom), timeout=10)
    await classroom.discord.wait_for(lambda: "Paused" in card.text() or None, timeout=10)
    assert notices(classroom) == []


async def test_crash_mid_job_then_restart_announces_exactly_once(classroom: Classroom) -> None:
    """The bot killed mid-job and started again on the same database posts exactly one completion notice."""
    job_id = await start_job(classroom)
    card = await classroom.discord.wait_for(lambda: progress_card(classroom), timeout=10)
    classroom.openai.advance(job_id, 4)
    await classroom.discord.wait_for(lambda: "Training loss" in card.text() or None, timeout=10)
    await classroom.restart(crash=True)
    classroom.openai.complete(job_id)
    await classroom.discord.wait_for(lambda: notices(classroom) or None, timeout=15)
    await classroom.restart()  # and a clean restart after the end announces nothing more
    polls = classroom.openai.count("GET", r"/fine_tuning/jobs/[^/]+/events")
    await ticks(classroom, 3)
    assert len(notices(classroom)) == 1
    assert classroom.openai.count("GET", r"/fine_tuning/jobs/[^/]+/events") == polls  # finished: never asked


async def test_rate_limits_and_outages_while_polling_lose_nothing(classroom: Classroom) -> None:
    """429s and 500s from the API while watching are retried; the notice still comes, once."""
    job_id = await start_job(classroom)
    await classroom.discord.wait_for(lambda: progress_card(classroom), timeout=10)
    classroom.openai.fail_next("GET", r"/fine_tuning/jobs/[^/]+/events", status=429, times=4, retry_after=0.01)
    classroom.openai.fail_next("GET", r"/fine_tuning/jobs/[^/]+$", status=500, times=4, retry_after=0.01)
    classroom.openai.complete(job_id)
    notice = await classroom.discord.wait_for(lambda: notices(classroom) or None, timeout=15)
    assert "is trained" in notice[0].text()
    assert len(notices(classroom)) == 1


async def test_rate_limited_job_creation_is_retried_by_the_sdk(classroom: Classroom) -> None:
    """A 429 on job creation is retried (honouring retry-after) and the job starts."""
    classroom.openai.fail_next("POST", r"/fine_tuning/jobs$", status=429, times=1, retry_after=0.01)
    job_id = await start_job(classroom)
    assert classroom.openai.job(job_id)


async def test_refused_job_creation_explains_wind_down(classroom: Classroom) -> None:
    """When OpenAI refuses fine-tuning to the organisation, the student reads why and what the teacher can do."""
    classroom.openai.refuse_job_creation()
    card = await open_card(classroom)
    click = await press(classroom.discord, card, "Start", classroom.student)
    reply = await classroom.discord.wait_for(lambda: click.followups[0] if click.followups else None, timeout=10)
    text = reply.text()
    assert reply.ephemeral and "2027" in text and "python -m trainer" in text
    assert "Traceback" not in text and classroom.openai.jobs == []
    await classroom.discord.wait_for(lambda: card.button("Start").get("disabled") or None, timeout=5)
    assert [f for f in classroom.openai.files.values() if f.purpose == "fine-tune"] == []  # the upload was removed


async def test_insufficient_quota_says_tell_your_teacher(classroom: Classroom) -> None:
    """An account out of credit gets a plain message, not an error dump."""
    classroom.openai.set_quota_exhausted()
    card = await open_card(classroom)
    click = await press(classroom.discord, card, "Start", classroom.student)
    reply = await classroom.discord.wait_for(lambda: click.followups[0] if click.followups else None, timeout=10)
    assert "run out of credit" in reply.text()


async def test_korean_student_gets_korean_card(classroom: Classroom) -> None:
    """The card follows the student's Discord language."""
    card = await open_card(classroom, locale="ko")
    assert "예상 비용" in card.text()
    assert card.button("시작")


async def test_status_autocomplete_lists_only_this_servers_jobs(classroom: Classroom) -> None:
    """Job autocomplete shows this server's jobs; another server's job is unknown to /finetune status."""
    job_id = await start_job(classroom, suffix="mine")
    choices = await classroom.discord.autocomplete(classroom.guild, classroom.student, "finetune status", "job", "")
    assert [c["value"] for c in choices] == [job_id]
    other_guild = classroom.discord.add_guild("Class 2")
    outsider = classroom.discord.add_user("outsider")
    other_guild.add_member(outsider)
    await classroom.discord.dispatch("GUILD_CREATE", other_guild.payload())
    assert await classroom.discord.autocomplete(other_guild, outsider, "finetune status", "job", "") == []
    interaction = await classroom.discord.slash(other_guild, outsider, "finetune status", job=job_id)
    reply = await interaction.followup(timeout=10)
    assert "can't find that job" in reply.text()


async def test_status_shows_progress_card_with_chart(classroom: Classroom) -> None:
    """/finetune status shows the job's card and its loss chart."""
    job_id = await start_job(classroom)
    classroom.openai.advance(job_id, 6)
    card = await classroom.discord.wait_for(lambda: progress_card(classroom), timeout=10)
    await classroom.discord.wait_for(lambda: "Training loss" in card.text() or None, timeout=10)
    await ticks(classroom)  # the card is edited before the database moves on: let it catch up
    interaction = await classroom.discord.slash(classroom.guild, classroom.student, "finetune status", job=job_id)
    reply = await interaction.followup(timeout=10)
    assert "Training loss" in reply.text() and reply.files[0].data.startswith(PNG)


async def test_list_shows_jobs_newest_first(classroom: Classroom) -> None:
    """/finetune list names this server's jobs."""
    job_id = await start_job(classroom, suffix="first")
    interaction = await classroom.discord.slash(classroom.guild, classroom.student, "finetune list")
    reply = await interaction.wait_done(timeout=10)
    assert reply.original is not None and job_id in reply.original.text()


async def test_crash_between_notice_and_database_write_still_one_notice(classroom: Classroom) -> None:
    """If the bot dies after posting the notice but before recording it, the retry's nonce makes Discord keep one."""
    job_id = await start_job(classroom)
    repository = classroom.bot.jobs
    original = repository.mark_notified
    failures: list[str] = []

    async def crash_once(job: str, message_id: int) -> None:
        if not failures:
            failures.append(job)
            raise RuntimeError("simulated crash after the post")
        await original(job, message_id)

    repository.mark_notified = crash_once  # type: ignore[method-assign]
    classroom.openai.complete(job_id)
    await classroom.discord.wait_for(lambda: failures or None, timeout=10, what="the simulated crash")
    await ticks(classroom, 3)
    assert len(notices(classroom)) == 1
    job = await repository.get_any(job_id)
    assert job is not None and job.notice_message_id == notices(classroom)[0].id


async def test_job_created_but_never_recorded_is_adopted_at_restart(classroom: Classroom) -> None:
    """A job the bot created just before dying (not yet in its database) is found by its metadata and announced."""
    bot = classroom.bot
    file_id = await bot.gateway.upload_file("lost.jsonl", chat_file())
    created = await bot.gateway.create_job(
        model="gpt-4o-mini-2024-07-18", training_file=file_id, validation_file=None, method="supervised",
        n_epochs=1, suffix="lost", metadata={"guild_id": str(classroom.guild.id),
                                             "channel_id": str(classroom.channel_id),
                                             "user_id": str(classroom.student.id)},
    )
    await classroom.restart(crash=True)
    card = await classroom.discord.wait_for(lambda: progress_card(classroom), timeout=10, what="adopted job's card")
    assert created.id in card.text()
    classroom.openai.complete(created.id)
    notice = await classroom.discord.wait_for(lambda: notices(classroom) or None, timeout=10)
    assert f"<@{classroom.student.id}>" in notice[0].content and "is trained" in notice[0].text()


async def test_base_model_autocomplete_offers_the_backends_base_models(classroom: Classroom) -> None:
    """On an OpenAI-compatible backend the choices are its base models (the default first), never fine-tuned ones."""
    classroom.openai.add_fine_tuned_model("ft:gpt-4o-mini-2024-07-18:org:other:abc12345")
    choices = await classroom.discord.autocomplete(classroom.guild, classroom.student, "finetune start",
                                                   "base_model", "")
    values = [c["value"] for c in choices]
    assert values[0] == "gpt-4o-mini-2024-07-18"
    assert set(values) >= set(classroom.openai.base_models) - set(classroom.openai.retired)
    assert not any(v.startswith("ft:") for v in values)
    typed = await classroom.discord.autocomplete(classroom.guild, classroom.student, "finetune start",
                                                 "base_model", "4.1-mini")
    typed_values = [c["value"] for c in typed]
    assert "gpt-4.1-mini-2025-04-14" in typed_values and all("4.1-mini" in v for v in typed_values)


async def test_base_models_right_after_boot_asks_the_backend(classroom: Classroom, monkeypatch: object) -> None:
    """Minutes after the machine booted (a monotonic clock near zero) the backend's base models are still fetched."""
    import types

    import bot.services.finetune as finetune

    monkeypatch.setattr(finetune, "time", types.SimpleNamespace(monotonic=lambda: 3.0, time=finetune.time.time))  # type: ignore[attr-defined]
    models = await classroom.bot.finetune.base_models()
    assert set(models) >= set(classroom.openai.base_models) - set(classroom.openai.retired)


async def test_start_base_model_of_another_server_is_refused(classroom: Classroom) -> None:
    """A fine-tuned model this server did not make cannot be trained from: refused privately, nothing uploaded."""
    classroom.openai.add_fine_tuned_model("ft:gpt-4o-mini-2024-07-18:other-school:theirs:abc123")
    reply = await open_card(classroom, base_model="ft:gpt-4o-mini-2024-07-18:other-school:theirs:abc123")
    assert reply.ephemeral and "wasn't made on this server" in reply.text()
    assert classroom.openai.uploads == [] and not reply.buttons


async def test_start_unknown_base_model_is_refused(classroom: Classroom) -> None:
    """A name the backend does not list is refused before any checking."""
    reply = await open_card(classroom, base_model="gpt-9-imaginary")
    assert reply.ephemeral and "isn't a model this class can fine-tune" in reply.text()


async def test_start_from_this_servers_own_model_offers_start(classroom: Classroom) -> None:
    """A model this server fine-tuned is a fine base for the next job."""
    job_id = await start_job(classroom)
    classroom.openai.complete(job_id)
    await classroom.discord.wait_for(lambda: notices(classroom) or None, timeout=10, what="notice")
    model = classroom.openai.job(job_id).fine_tuned_model
    assert model
    card = await open_card(classroom, base_model=model)
    assert card.button("Start")["style"] == GREEN
