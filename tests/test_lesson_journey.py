"""Journeys of the lesson features through the real discord.py and openai SDK against the loopback fakes:
a teacher walks /lesson start to the end, a class trains a sample lesson, and /evaluate posts its scores and chart."""

from __future__ import annotations

import json
from typing import Any

from bot.services.lessons import GUIDE_STEPS, LessonLibrary
from tests.conftest import MANAGE_GUILD, Classroom
from support.fakes.discord import FakeGuild, FakeMessage
from support.bot_harness import press
from tests.test_finetune_journey import notices, open_card, start_job
from support.trainer_harness import chat_file

CHANNEL_MESSAGE = 4
DEFERRED = 5
EPHEMERAL = 64
PIRATE = LessonLibrary().get("pirate-en")


async def lesson_message(room: Classroom, interaction: Any) -> FakeMessage:
    """The public message a /lesson start answered with."""
    answer = await interaction.response(timeout=5)
    assert answer["type"] == CHANNEL_MESSAGE and not answer["data"].get("flags", 0) & EPHEMERAL, answer
    return await room.discord.wait_for(lambda: room.discord.interaction(interaction.token).original, timeout=5,
                                       what="the lesson's first step")


async def test_teacher_walks_the_guided_lesson_to_the_end(classroom: Classroom) -> None:
    """Six steps, one at a time: each Next greys out its button and posts the next step; the last has none."""
    start = await classroom.discord.slash(classroom.guild, classroom.teacher, "lesson start", lesson="pirate-en")
    step = await lesson_message(classroom, start)
    seen = [step]
    for number in range(1, len(GUIDE_STEPS)):
        assert f"step {number} of 6" in step.text() and step.button("Next")["disabled"] is not True
        await press(classroom.discord, step, "Next", classroom.teacher)
        step = await classroom.discord.wait_for(
            lambda n=number: next((m for m in classroom.discord.messages(classroom.channel_id)
                                   if f"step {n + 1} of 6" in m.text()), None), timeout=5, what=f"step {number + 1}")
        assert seen[-1].button("Next")["disabled"] is True  # the step before can't be pressed twice
        seen.append(step)
    assert "step 6 of 6" in step.text() and step.buttons == [] and "That's the lesson" in step.text()
    texts = [m.text() for m in seen]
    assert "gpt-3.5-turbo-0125" in texts[0] and "formatted_dataset_20240318.jsonl" in texts[0] and "3" in texts[0]
    for example in (PIRATE.training_examples[0], PIRATE.training_examples[-1]):  # three from the file, spread out
        assert example.prompt in texts[1] and example.reference in texts[1]
    assert "/finetune start sample:pirate-en" in texts[2]
    assert "validation" in texts[3] and "memorising" in texts[3]
    assert "/evaluate model:<your model> lesson:pirate-en" in texts[4]
    for command in ("/dataset create name:", "/dataset add name:", "/dataset show name:", "/finetune start dataset:"):
        assert command in texts[5], command  # the class makes its own data with the bot, not in a file editor


async def korean_server(room: Classroom) -> FakeGuild:
    """A Korean server with the class's student and teacher in it, as the bot sees it join."""
    korean = room.discord.add_guild("2학년 3반", locale="ko")
    korean.add_member(room.student)
    korean.add_member(room.teacher, permissions=MANAGE_GUILD)
    await room.discord.dispatch("GUILD_CREATE", korean.payload())
    await room.discord.wait_for(lambda: room.bot.get_guild(korean.id), timeout=5, what="the Korean server")
    return korean


async def test_lesson_speaks_the_servers_language_and_only_its_teacher_moves_it(classroom: Classroom) -> None:
    """A Korean server gets its Korean lesson by default; a student can neither start a lesson nor press Next."""
    korean = await korean_server(classroom)
    start = await classroom.discord.slash(korean, classroom.teacher, "lesson start")
    step = await lesson_message(classroom, start)
    assert "학교 도서관 도우미" in step.text() and "1/6 단계" in step.text() and step.button("다음")

    refused = await press(classroom.discord, step, "다음", classroom.student)
    answer = await refused.response(timeout=5)
    assert answer["data"]["flags"] & EPHEMERAL and "Only the teacher who started" in answer["data"]["content"]
    assert not step.button("다음").get("disabled")

    by_student = await classroom.discord.slash(classroom.guild, classroom.student, "lesson start")
    answer = await by_student.response(timeout=5)
    assert answer["data"]["flags"] & EPHEMERAL and "teacher" in answer["data"]["content"].lower()


def pirate_replies(tuned: str) -> Any:
    """The fine-tuned model signs off like Captain Byte on the first 9 questions; the base model never does."""
    def reply(model: str, messages: list[dict[str, Any]]) -> str:
        question = messages[-1]["content"]
        if model == tuned and question != "Good morning!":
            return "Ahoy, it be so. Arr, matey!"
        return f"A plain answer to: {question}"
    return reply


async def test_class_trains_a_sample_lesson_and_the_notice_offers_the_evaluation(classroom: Classroom) -> None:
    """/finetune start sample: needs no file; the held-out file goes as validation; the notice's button posts
    the scores, a side-by-side, the chart and every answer."""
    start = await classroom.discord.slash(classroom.guild, classroom.student, "finetune start", sample="pirate-en")
    card = await start.followup(timeout=15)
    assert "40" in card.text() and "pirate-en" in card.text()
    await press(classroom.discord, card, "Start", classroom.student)
    job = await classroom.discord.wait_for(lambda: classroom.openai.jobs[0] if classroom.openai.jobs else None,
                                           timeout=10, what="the job")
    request = classroom.openai.job_requests[0]
    assert request["suffix"] == "pirate-en" and request["validation_file"]
    assert request["method"]["supervised"]["hyperparameters"]["n_epochs"] == PIRATE.epochs == 5
    uploaded = {name: data for name, _, data in classroom.openai.uploads}
    assert uploaded["pirate-en.jsonl"] == PIRATE.training_bytes()
    assert uploaded["pirate-en-heldout.jsonl"] == PIRATE.heldout_bytes()

    classroom.openai.complete(job.id)
    model = classroom.openai.job(job.id).fine_tuned_model
    classroom.openai.chat_reply = pirate_replies(model)
    notice = (await classroom.discord.wait_for(lambda: notices(classroom) or None, timeout=10))[0]
    click = await press(classroom.discord, notice, "Test on unseen questions", classroom.student)
    result = await click.followup(timeout=20)

    text = result.text()
    assert "10 questions the model never saw (pirate-en)" in text
    assert "end with “Arr, matey!”" in text and "letter by letter" in text  # the metric, explained in one line
    fields = result.embed["fields"]
    assert "9/10 (90%)" in fields[0]["value"] and model in fields[0]["name"]
    assert "0/10 (0%)" in fields[1]["value"] and "gpt-4o-mini-2024-07-18" in fields[1]["name"]
    assert "90% vs 0%" in text and "The fine-tuned model showed what it was taught more often" in text
    assert [f["name"] for f in fields[2:5]] == [f"❓ {e.prompt}" for e in PIRATE.heldout_examples[:3]]
    assert "Arr, matey!" in fields[2]["value"] and "A plain answer to: What is a wave?" in fields[2]["value"]
    assert result.file("scores.png").data.startswith(b"\x89PNG")
    assert result.embed["image"]["url"] == "attachment://scores.png"
    answers = result.file("evaluation.md").data.decode()
    assert all(e.prompt in answers and e.reference in answers for e in PIRATE.heldout_examples)

    asked = [r for r in classroom.openai.chat_requests if r.get("temperature") == 0]
    assert len(asked) == 20  # ten questions, two models, at temperature 0 (the same question, the same answer)
    assert asked[0]["messages"] == PIRATE.heldout_examples[0].as_messages()  # the lesson's system prompt too


async def test_evaluate_a_file_of_ones_own_against_a_chosen_model(classroom: Classroom) -> None:
    """/evaluate with an attached file: the behaviour is read from its answers; against: replaces the base."""
    lines = [json.dumps({"messages": [{"role": "user", "content": f"Question {i}?"},
                                      {"role": "assistant", "content": f"Answer {i}. Beep boop!"}]})
             for i in range(4)]
    classroom.openai.chat_reply = lambda m, msgs: "Yes. Beep boop!" if m == "gpt-4o" else f"No: {msgs[-1]['content']}"
    classroom.openai.flag_words = {"No: Question 0"}  # the class's moderation (on by default) holds one answer back
    ask = await classroom.discord.slash(
        classroom.guild, classroom.student, "evaluate", model="gpt-4o", against="gpt-4o-mini",
        file=classroom.discord.attachment("mine.jsonl", "\n".join(lines).encode()))
    result = await ask.followup(timeout=20)
    assert "4 questions the model never saw (mine.jsonl)" in result.text()
    assert "end with “Beep boop!”" in result.text() and "100% vs 0%" in result.text()
    assert "held back by the safety check" in result.embed["fields"][2]["value"] and "Question 0?" not in str(
        [f["value"] for f in result.embed["fields"]])
    assert result.file("scores.png").data.startswith(b"\x89PNG")


async def test_evaluate_explains_what_it_needs(classroom: Classroom) -> None:
    """No questions to ask (a base model, no lesson, no file), or a lesson and a file at once: plain private words."""
    ask = await classroom.discord.slash(classroom.guild, classroom.student, "evaluate", model="gpt-4o",
                                        against="gpt-4o-mini")
    said = (await ask.response(timeout=5))["data"]  # told before any public deferral
    assert said["flags"] & EPHEMERAL and "pick a sample lesson with `lesson:`" in said["content"]
    assert "pirate-en" in said["content"]
    both = await classroom.discord.slash(classroom.guild, classroom.student, "evaluate", model="gpt-4o",
                                         lesson="pirate-en", file=classroom.discord.attachment("x.jsonl", b"{}"))
    answer = await both.response(timeout=5)
    assert answer["data"]["flags"] & EPHEMERAL and "not both" in answer["data"]["content"]
    choices = await classroom.discord.autocomplete(classroom.guild, classroom.student, "evaluate", "lesson", "pir",
                                                   model="gpt-4o")
    assert [c["value"] for c in choices] == ["pirate-en"]


async def add_example(room: Classroom, user: Any, question: str, answer: str) -> str:
    """A student runs /dataset add, fills the modal and returns the private answer."""
    opened = await room.discord.slash(room.guild, user, "dataset add", name="robot")
    await opened.response(timeout=5)
    submitted = await room.discord.submit_modal(opened, user, {"dataset:question": question,
                                                               "dataset:answer": answer})
    reply = await submitted.response(timeout=5)
    assert reply["data"]["flags"] & EPHEMERAL, reply
    return reply["data"]["content"]


async def test_three_students_build_a_dataset_the_teacher_prunes_it_and_the_class_trains_it(
        classroom: Classroom) -> None:
    """Modal per example, numbers and what is missing; the teacher removes one; the export trains as is; a
    student's /mydata delete takes their examples with it."""
    created = await classroom.discord.slash(classroom.guild, classroom.teacher, "dataset create", name="Robot",
                                            system_prompt="You are a polite robot. End with 'Beep boop.'")
    assert "`/dataset add name:robot`" in (await created.response(timeout=5))["data"]["content"]
    students = [classroom.student]
    for name in ("ana", "min-jun"):
        user = classroom.discord.add_user(name)
        classroom.guild.add_member(user)
        students.append(user)
    said = ""
    for round_number in range(4):
        for index, student in enumerate(students):
            number = 3 * round_number + index
            said = await add_example(classroom, student, f"Question {number}?", f"Answer {number}. Beep boop.")
    assert "example #12" in said and "38 more examples to reach 50" in said

    refused = await classroom.discord.slash(classroom.guild, classroom.student, "dataset remove", name="robot",
                                            number=2)
    assert "teacher" in (await refused.response(timeout=5))["data"]["content"].lower()
    removed = await classroom.discord.slash(classroom.guild, classroom.teacher, "dataset remove", name="robot",
                                            number=2)
    assert "#2 was removed" in (await removed.response(timeout=5))["data"]["content"]

    shown = await classroom.discord.slash(classroom.guild, classroom.student, "dataset show", name="robot")
    card = await shown.followup(timeout=10)
    assert "**11** examples" in card.text() and "by **3** students" in card.text()
    assert "39 more examples to reach 50" in card.text() and "Question 1?" not in card.text()
    assert "#12" in card.text()

    exported = await classroom.discord.slash(classroom.guild, classroom.student, "dataset export", name="robot")
    await exported.wait_done(timeout=5)
    data = classroom.discord.interaction(exported.token).original.file("robot.jsonl").data
    lines = [json.loads(line) for line in data.decode().splitlines()]
    assert len(lines) == 11 and lines[0]["messages"][0] == {
        "role": "system", "content": "You are a polite robot. End with 'Beep boop.'"}

    start = await classroom.discord.slash(classroom.guild, classroom.student, "finetune start", dataset="robot")
    train_card = await start.followup(timeout=15)
    await press(classroom.discord, train_card, "Start", classroom.student)
    await classroom.discord.wait_for(lambda: classroom.openai.jobs or None, timeout=10, what="the job")
    assert classroom.openai.uploads[0][0] == "robot.jsonl" and classroom.openai.uploads[0][2] == data
    assert classroom.openai.job_requests[0]["suffix"] == "robot"

    mine = await classroom.discord.slash(classroom.guild, classroom.student, "mydata delete")
    await mine.wait_done(timeout=10)
    confirmation = classroom.discord.interaction(mine.token).original
    assert "Your 4 example(s) in class datasets will be removed too" in confirmation.text()
    await press(classroom.discord, confirmation, "Delete", classroom.student)
    await classroom.discord.wait_for(lambda: "Cleanup finished" in confirmation.text() or None, timeout=10)
    left = await classroom.bot.datasets.summary(classroom.guild.id, "robot", "gpt-4o-mini-2024-07-18")
    assert left.count == 7 and classroom.student.id not in {e.user_id for e in left.examples}


async def test_notice_of_a_job_with_a_validation_file_says_how_to_evaluate_it(classroom: Classroom) -> None:
    """Trained on a file of one's own with a validation file: the notice's button explains /evaluate with a file."""
    job_id = await start_job(classroom, validation_file=classroom.discord.attachment("valid.jsonl", chat_file(10)))
    classroom.openai.complete(job_id)
    model = classroom.openai.job(job_id).fine_tuned_model
    notice = (await classroom.discord.wait_for(lambda: notices(classroom) or None, timeout=10))[0]
    click = await press(classroom.discord, notice, "Test on unseen questions", classroom.student)
    answer = await click.response(timeout=5)
    assert answer["data"]["flags"] & EPHEMERAL and f"/evaluate model:{model} file:" in answer["data"]["content"]
    card = await open_card(classroom, suffix="plain")  # no validation file, no lesson: no button
    await press(classroom.discord, card, "Start", classroom.student)
    plain = await classroom.discord.wait_for(
        lambda: next((j for j in classroom.openai.jobs if j.id != job_id), None), timeout=10, what="the second job")
    classroom.openai.complete(plain.id)
    later = await classroom.discord.wait_for(lambda: notices(classroom)[1:] or None, timeout=10)
    assert [b["label"] for b in later[0].buttons] == ["Chat with this model"]


async def _evaluate_with_instructions(room: Classroom, locale: str) -> FakeMessage:
    room.openai.chat_reply = lambda m, msgs: (
        "It be so. Arr, matey!" if msgs[0]["content"] == PIRATE.instruction else f"Plain: {msgs[-1]['content']}")
    ask = await room.discord.slash(room.guild, room.student, "evaluate", model="gpt-4o", against="gpt-4o-mini",
                                   lesson="pirate-en", instructions=True, locale=locale)
    return await ask.followup(timeout=20)


async def test_evaluate_with_instructions_gives_the_base_the_long_instruction_and_the_tuned_model_the_short_prompt(
        classroom: Classroom) -> None:
    """The "with instructions" view: the compared model is told what to do, the other gets the lesson's neutral prompt,
    and the card says so (fine-tuning puts the instruction into the model)."""
    result = await _evaluate_with_instructions(classroom, "en-US")
    asked = [r for r in classroom.openai.chat_requests if r.get("temperature") == 0]
    prompts = {r["model"]: {m["content"] for m in r["messages"] if m["role"] == "system"} for r in asked}
    assert prompts == {"gpt-4o": {PIRATE.system_prompt}, "gpt-4o-mini": {PIRATE.instruction}}
    assert f"was told what to do: “{PIRATE.instruction}”" in result.embed["description"]
    assert "given the instruction" in result.embed["fields"][1]["name"]
    assert "Told in words, the other model did it more often (0% vs 100%)" in result.text()


async def test_evaluate_with_instructions_in_korean(classroom: Classroom) -> None:
    """The same view in Korean, for a Korean student."""
    result = await _evaluate_with_instructions(classroom, "ko")
    assert "지시받았어요" in result.embed["description"] and "지시문을 받은 모델" in result.embed["fields"][1]["name"]


async def test_evaluate_with_instructions_needs_a_lesson(classroom: Classroom) -> None:
    """A file of one's own has no instruction to give: told privately, in the student's language, nothing asked."""
    for locale, words in (("en-US", "Only a sample lesson has an instruction"), ("ko", "예시 수업에만 있어요")):
        ask = await classroom.discord.slash(classroom.guild, classroom.student, "evaluate", model="gpt-4o",
                                            against="gpt-4o-mini", instructions=True, locale=locale,
                                            file=classroom.discord.attachment("x.jsonl", b"{}"))
        answer = await ask.response(timeout=5)
        assert answer["data"]["flags"] & EPHEMERAL and words in answer["data"]["content"], answer
    assert classroom.openai.chat_requests == []


async def test_evaluate_unknown_model_is_told_privately_before_any_public_deferral(classroom: Classroom) -> None:
    """A mistyped model: the first answer is a private one with a suggestion, never a public "thinking"."""
    for locale, words in (("en-US", "no model called `gpt-4o-mimi` (did you mean `gpt-4o-mini`?)"),
                          ("ko", "`gpt-4o-mimi`(이)라는 모델은 없어요 (`gpt-4o-mini`을(를) 말한 건가요?)")):
        ask = await classroom.discord.slash(classroom.guild, classroom.student, "evaluate", model="gpt-4o-mimi",
                                            lesson="pirate-en", locale=locale)
        answer = await ask.response(timeout=5)
        assert answer["type"] == CHANNEL_MESSAGE and answer["data"]["flags"] & EPHEMERAL, answer
        assert words in answer["data"]["content"], answer
    assert classroom.openai.chat_requests == []


async def test_dataset_show_and_export_of_an_unknown_name_are_told_privately(classroom: Classroom) -> None:
    """/dataset show or export with a name the class has not made: a private answer, no public deferral."""
    for command in ("dataset show", "dataset export"):
        for locale, words in (("en-US", "robott"), ("ko", "robott")):
            ask = await classroom.discord.slash(classroom.guild, classroom.student, command, name="robott",
                                                locale=locale)
            answer = await ask.response(timeout=5)
            assert answer["type"] == CHANNEL_MESSAGE and answer["data"]["flags"] & EPHEMERAL, (command, answer)
            assert words in answer["data"]["content"]
