"""Journeys for what makes the lesson's payoff visible: the model asked the way it was trained, answers that stream,
honest numbers, and no silent waits (each replaced by a message that says what is happening, with a moving clock)."""

from __future__ import annotations

import re

from bot.services.chat import CLASSROOM_SAMPLING
from tests.conftest import Classroom
from tests.test_chat_journey import BASE, bot_replies, open_chat
from tests.test_finetune_journey import notices, open_card, progress_card, start_job

TRAINING_PROMPT = "You answer like a friendly pirate."  # the system prompt of every example in chat_file()
FULL_BASE = "gpt-4o-mini-2024-07-18"


async def _trained_model(room: Classroom, epochs: int = 1) -> str:
    job_id = await start_job(room, suffix="pirate", epochs=epochs)
    room.openai.complete(job_id)
    await room.discord.wait_for(lambda: notices(room) or None, timeout=10, what="the success notice")
    model = room.openai.job(job_id).fine_tuned_model
    assert model
    return model


async def test_card_says_trainer_is_loading_until_the_first_step_then_draws_a_line(classroom: Classroom) -> None:
    """While the trainer loads the base model the card says so with a clock; the chart waits for two steps."""
    job_id = await start_job(classroom, suffix="pirate", epochs=2)
    card = await classroom.discord.wait_for(lambda: progress_card(classroom), timeout=10, what="progress card")
    classroom.openai.advance(job_id, steps=2)  # queued, then running
    classroom.openai.say(job_id, "Loading the base model")
    await classroom.discord.wait_for(lambda: "loading the base model" in card.text() or None, timeout=10,
                                     what="the loading line")
    assert re.search(r"<t:\d+:R>", card.embed["description"])  # Discord keeps this "x seconds ago" moving
    classroom.openai.advance(job_id, steps=1)
    await classroom.discord.wait_for(lambda: "Training loss" in card.text() or None, timeout=10, what="step 1")
    assert "loading" not in card.text()
    assert not card.files and not card.embed.get("image")  # one point is no line: no empty grid
    classroom.openai.advance(job_id, steps=1)
    await classroom.discord.wait_for(lambda: card.files or None, timeout=10, what="the first chart")


async def test_running_job_without_steps_says_it_is_getting_ready(classroom: Classroom) -> None:
    """A backend that says nothing before step 1 (OpenAI) still gets a line that says the job is getting ready."""
    job_id = await start_job(classroom, suffix="pirate", epochs=2)
    card = await classroom.discord.wait_for(lambda: progress_card(classroom), timeout=10, what="progress card")
    classroom.openai.advance(job_id, steps=2)
    await classroom.discord.wait_for(lambda: "Getting ready" in card.text() or None, timeout=10, what="ready line")
    assert re.search(r"<t:\d+:R>", card.embed["description"])


async def test_finished_card_footer_says_finished_and_notice_names_student_once(classroom: Classroom) -> None:
    """A finished card no longer claims to update itself; the notice mentions the student once, ids in the footer."""
    await _trained_model(classroom, epochs=2)
    card = progress_card(classroom)
    assert card is not None
    await classroom.discord.wait_for(lambda: "finished" in card.embed["footer"]["text"] or None, timeout=10)
    assert "updates by itself" not in card.text()
    notice = notices(classroom)[0]
    mention = f"<@{classroom.student.id}>"
    assert notice.text().count(mention) == 1
    assert "ftjob-" not in notice.embed["description"] and "ftjob-" in notice.embed["footer"]["text"]
    job = classroom.openai.jobs[0]
    last_epoch = [m["train_loss"] for m in job.metrics[-job.steps_per_epoch:]]
    loss = next(f["value"] for f in notice.embed["fields"] if "mean over the last epoch" in f["name"])
    assert float(loss) == round(sum(last_epoch) / len(last_epoch), 4)  # not the last batch's alone


async def test_korean_card_names_format_and_method_in_korean(classroom: Classroom) -> None:
    """A Korean class sees the file's format and the training method in Korean, not "chat · supervised"."""
    card = await open_card(classroom, locale="ko")
    description = card.embed["description"]
    assert "대화형" in description and "지도 학습" in description
    assert "supervised" not in description and "chat ·" not in description


async def test_compare_streams_both_answers_with_training_prompt_and_same_sampling(classroom: Classroom) -> None:
    """/compare with no options: both models get the training system prompt and the classroom sampling, and the
    card shows the answers while they are written, then complete."""
    model = await _trained_model(classroom)
    classroom.openai.stream_token_delay = 0.05
    classroom.bot.chat.delivery.min_edit_interval = 0.02
    compare = await classroom.discord.slash(classroom.guild, classroom.student, "compare", prompt="Say hi",
                                            model=model)
    card = await compare.followup(timeout=10)
    assert "writing" in card.text()  # the first version comes while both models are still answering
    await classroom.discord.wait_for(lambda: "What did fine-tuning change" in card.text() or None, timeout=10,
                                     what="both answers complete")
    assert card.edits, "the answers grew in place"
    fields = [f["value"] for f in card.embed["fields"][:2]]
    assert fields == [f"[{model}] reply to: Say hi", f"[{FULL_BASE}] reply to: Say hi"]
    assert TRAINING_PROMPT in card.embed["description"]
    requests = {r["model"]: r for r in classroom.openai.chat_requests[-2:]}
    assert set(requests) == {model, FULL_BASE}
    for request in requests.values():
        assert request["messages"][0] == {"role": "system", "content": TRAINING_PROMPT}
        assert (request["temperature"], request["frequency_penalty"], request["max_tokens"]) == (
            CLASSROOM_SAMPLING.temperature, CLASSROOM_SAMPLING.frequency_penalty, CLASSROOM_SAMPLING.max_tokens)


async def test_chat_start_with_fine_tuned_model_uses_its_training_prompt_and_shows_it(classroom: Classroom) -> None:
    """/chat start with no system prompt: the thread shows the training prompt and every request carries it."""
    model = await _trained_model(classroom)
    thread = await open_chat(classroom, model=model)
    intro = classroom.discord.messages(thread)[0]
    assert TRAINING_PROMPT in intro.content and "trained with" in intro.content and "system_prompt" in intro.content
    await classroom.discord.say(thread, classroom.student, "Ahoy?")
    await classroom.discord.wait_for(lambda: bot_replies(classroom, thread) or None, timeout=10)
    assert classroom.openai.chat_requests[-1]["messages"][0] == {"role": "system", "content": TRAINING_PROMPT}


async def test_chat_start_system_prompt_option_replaces_the_training_prompt(classroom: Classroom) -> None:
    """A system prompt given to /chat start is used instead of the training one."""
    model = await _trained_model(classroom)
    thread = await open_chat(classroom, model=model, system_prompt="Answer in one word.")
    await classroom.discord.say(thread, classroom.student, "Ahoy?")
    await classroom.discord.wait_for(lambda: bot_replies(classroom, thread) or None, timeout=10)
    assert classroom.openai.chat_requests[-1]["messages"][0] == {"role": "system", "content": "Answer in one word."}


async def test_ask_base_model_sends_no_system_prompt(classroom: Classroom) -> None:
    """/ask with a base model sends the question alone (no training prompt to use) with the classroom sampling."""
    ask = await classroom.discord.slash(classroom.guild, classroom.student, "ask", model=BASE, prompt="Hi there")
    await classroom.discord.wait_for(
        lambda: any(m is not None and "reply to: Hi there" in m.text() for m in ask.followups) or None, timeout=10)
    request = classroom.openai.chat_requests[-1]
    assert request["messages"] == [{"role": "user", "content": "Hi there"}]
    assert request["temperature"] == CLASSROOM_SAMPLING.temperature


async def test_ask_fine_tuned_model_uses_training_prompt_and_shows_it(classroom: Classroom) -> None:
    """/ask a fine-tuned model: asked with its training prompt, which the answer shows above itself."""
    model = await _trained_model(classroom)
    ask = await classroom.discord.slash(classroom.guild, classroom.student, "ask", model=model, prompt="Hi there")
    answer = f"[{model}] reply to: Hi there"
    shown = await classroom.discord.wait_for(
        lambda: next((m.text() for m in ask.followups if m is not None and answer in m.text()), None), timeout=10,
        what="the whole answer")
    assert TRAINING_PROMPT in shown.split(answer)[0]
    assert classroom.openai.chat_requests[-1]["messages"][0] == {"role": "system", "content": TRAINING_PROMPT}


async def test_models_groups_checkpoints_under_their_job_with_epoch_losses(classroom: Classroom) -> None:
    """/models: one entry per job, its checkpoints listed under it, losses labelled as over an epoch."""
    model = await _trained_model(classroom, epochs=3)
    listed = await classroom.discord.slash(classroom.guild, classroom.student, "models")
    await listed.wait_done(timeout=5)
    shown = classroom.discord.interaction(listed.token).original.text()
    assert shown.count("**pirate**") == 1 and shown.count(model) == 1
    assert "Checkpoints" in shown and shown.count("checkpoint at step") == 2
    assert "over its last epoch" in shown and "final loss" not in shown
