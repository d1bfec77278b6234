"""The shipped sample lessons, and the evaluation's pure scoring and chart."""

from __future__ import annotations

import json

import pytest

from bot import errors
from bot.services.dataset_check import DatasetCheckService
from bot.services.evaluation import (
    EvaluationChartLabels,
    build_report,
    bullet_count,
    infer_behaviour,
    render_score_chart,
    shows_behaviour,
    similarity,
)
from bot.services.lessons import (
    GUIDE_STEPS,
    NEUTRAL_PROMPT_MAX_CHARS,
    Behaviour,
    LessonLibrary,
    guide_examples,
    parse_examples,
    prompt_gives_away,
)

LESSONS = LessonLibrary()
NAMES = LESSONS.names()


def test_the_sample_lessons_ship_in_both_languages() -> None:
    """A persona per language, a format, and the school's own facts in each language, each titled in both."""
    assert NAMES == ["library-helper-ko", "pirate-en", "school-facts-en", "three-bullets-en", "timetable-ko"]
    facts = [lesson for lesson in LESSONS.all() if lesson.behaviour.kind == "numbers"]
    assert {lesson.language for lesson in facts} == {"en", "ko"}  # what no prompt can give a base model
    assert {lesson.language for lesson in LESSONS.all()} == {"en", "ko"}
    assert {lesson.behaviour.kind for lesson in LESSONS.all()} == {"ends_with", "bullets", "numbers"}
    for lesson in LESSONS.all():
        assert lesson.title("en") and lesson.title("ko") and lesson.title("en") != lesson.title("ko")
        assert (lesson.folder / "README.md").is_file(), lesson.name


@pytest.mark.parametrize("name", NAMES)
def test_each_lesson_trains_as_is_and_its_held_out_questions_are_new(name: str) -> None:
    """The training file passes the bot's own check with its held-out file as validation; no question is shared."""
    lesson = LESSONS.get(name)
    result = DatasetCheckService().check_bytes(lesson.training_bytes(), "train.jsonl",
                                               validation=(lesson.heldout_bytes(), "heldout.jsonl"),
                                               model="gpt-4o-mini-2024-07-18", n_epochs=lesson.epochs)
    assert result.report.ok, result.report.errors
    codes = {w.code for w in result.report.warnings}
    assert not codes & {"duplicate_example", "validation_overlap", "possible_personal_data"}, codes
    assert 30 <= len(lesson.training_examples) <= 60 and 8 <= len(lesson.heldout_examples) <= 20
    assert not {e.prompt for e in lesson.training_examples} & {e.prompt for e in lesson.heldout_examples}


@pytest.mark.parametrize("name", NAMES)
def test_each_lesson_asks_with_one_short_neutral_prompt_that_tells_nothing_of_the_answer(name: str) -> None:
    """Training and held-out examples share one short system prompt that names who answers, never how: a base model
    asked with it (as /evaluate, /compare and chat ask every model) is not told what fine-tuning taught."""
    lesson = LESSONS.get(name)
    prompts = {next((c for r, c in e.messages if r == "system"), None)
               for e in [*lesson.training_examples, *lesson.heldout_examples]}
    assert prompts == {lesson.system_prompt}
    assert lesson.system_prompt is None or len(lesson.system_prompt) <= NEUTRAL_PROMPT_MAX_CHARS
    assert prompt_gives_away(lesson.system_prompt, lesson) == []
    assert lesson.instruction and lesson.instruction != lesson.system_prompt  # for the "with instructions" view


@pytest.mark.parametrize("name", [n for n in NAMES if LESSONS.get(n).behaviour.kind != "numbers"])
def test_a_lessons_long_instruction_is_seen_to_give_the_answer_away(name: str) -> None:
    """The check is not blind: the instruction (what the lessons used to train with) states the behaviour."""
    lesson = LESSONS.get(name)
    told = prompt_gives_away(lesson.instruction, lesson)
    assert [finding for finding in told if not finding.startswith("longer than")], told


def test_prompt_gives_away_names_sign_offs_formats_and_facts() -> None:
    """The sign-off or an order about endings, list words, a fact's number: each is named; a role is not."""
    pirate, bullets, facts = LESSONS.get("pirate-en"), LESSONS.get("three-bullets-en"), LESSONS.get("timetable-ko")
    assert prompt_gives_away("Say arr, matey! a lot.", pirate) == ["the sign-off 'Arr, matey!'"]
    assert prompt_gives_away("Always end nicely.", pirate) == ["the word 'end'"]
    assert prompt_gives_away("마지막에 📚 붙여", LESSONS.get("library-helper-ko")) == [
        "the sign-off's symbol '📚'", "the word '마지막'"]
    assert prompt_gives_away("Use bullets.", bullets) == ["the format's word 'bullet'"]
    assert prompt_gives_away("등교는 8시 30분이야.", facts) == ["the fact '30'", "the fact '8'"]
    assert prompt_gives_away("You are a pirate captain.", pirate) == []
    assert prompt_gives_away(None, pirate) == []


@pytest.mark.parametrize("name", NAMES)
def test_every_answer_in_a_lesson_shows_what_it_teaches(name: str) -> None:
    """The evaluation's check passes on all the lesson's own answers, and is read back from the file alone."""
    lesson = LESSONS.get(name)
    for example in [*lesson.training_examples, *lesson.heldout_examples]:
        assert shows_behaviour(example.reference, lesson.behaviour, example.reference) is not False, example
    assert infer_behaviour(lesson.training_examples) == lesson.behaviour


def test_behaviour_checks_tell_taught_answers_from_plain_ones() -> None:
    """A sign-off at the end, exactly three bullets, the reference's numbers: each check says no to a plain answer."""
    pirate = Behaviour("ends_with", text="Arr, matey!")
    assert shows_behaviour("The sun be hot.  arr, matey", pirate)
    assert not shows_behaviour("Arr, matey! The sun is hot.", pirate)
    bullets = Behaviour("bullets", count=3)
    assert shows_behaviour("Sure:\n- one\n* two\n• three", bullets) and bullet_count("1. a\n2) b") == 2
    assert not shows_behaviour("- one\n- two", bullets) and not shows_behaviour("one, two, three", bullets)
    numbers = Behaviour("numbers")
    assert shows_behaviour("1교시는 8시 50분이에요", numbers, "1교시는 8시 50분에 시작해요.")
    assert not shows_behaviour("1교시는 9시예요", numbers, "1교시는 8시 50분에 시작해요.")
    assert shows_behaviour("anything", numbers, "no digits here") is None


def test_similarity_is_character_level_and_ignores_spacing() -> None:
    """1 for the same text (however it is spaced), 0 for nothing in common, in between for a near miss."""
    assert similarity("Arr,  matey!\n", "Arr, matey!") == 1.0
    assert similarity("abc", "xyz") == 0.0
    assert 0.5 < similarity("대출 기간은 2주예요.", "대출 기간은 3주예요.") < 1.0


def test_infer_behaviour_of_a_file_of_ones_own() -> None:
    """A shared sign-off starts at a word; no shared ending, bullets or numbers means nothing to check."""
    def examples(*answers: str) -> list:
        lines = [json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                          {"role": "assistant", "content": a}]}) for i, a in enumerate(answers)]
        return parse_examples("\n".join(lines).encode())

    assert infer_behaviour(examples("Hi there. Bye now!", "Yes. Bye now!")) == Behaviour("ends_with", text="Bye now!")
    assert infer_behaviour(examples("- a\n- b", "- c\n- d")) == Behaviour("bullets", count=2)
    assert infer_behaviour(examples("Blue.", "Green.")) is None


def test_example_as_messages_can_swap_the_system_prompt() -> None:
    """The "with instructions" view gives one model the long instruction in place of the file's prompt."""
    example = LESSONS.get("pirate-en").heldout_examples[0]
    assert example.as_messages()[0] == {"role": "system", "content": "You are Byte, the class helper."}
    swapped = example.as_messages("Talk like a pirate.")
    assert swapped[0] == {"role": "system", "content": "Talk like a pirate."} and swapped[1:] == example.as_messages()[1:]
    bare = parse_examples(json.dumps({"messages": [{"role": "user", "content": "Q"},
                                                   {"role": "assistant", "content": "A"}]}).encode())[0]
    assert bare.as_messages("Be brief.") == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q"}]


def test_parse_examples_skips_what_cannot_be_asked() -> None:
    """Lines without a user question right before the assistant's answer, or not JSON, are skipped."""
    data = "\n".join([
        json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}),
        json.dumps({"messages": [{"role": "assistant", "content": "no question"}]}),
        json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": " "}]}),
        "not json", "[1, 2]",
    ]).encode()
    parsed = parse_examples(data)
    assert [(e.prompt, e.reference) for e in parsed] == [("Q", "A")]


def test_build_report_scores_each_model_and_the_chart_renders() -> None:
    """Rates and mean similarity per model; the chart is a PNG with Hangul labels."""
    lesson = LESSONS.get("pirate-en")
    examples = lesson.heldout_examples[:4]
    tuned = [e.reference for e in examples[:3]] + ["Plain answer."]
    base = ["Plain answer."] * 4
    report = build_report(("ft:x:school:pirate-en:1", "x"), lesson.behaviour, lesson.name, examples, (tuned, base))
    assert report.scores[0].behaviour_rate == 0.75 and report.scores[1].behaviour_rate == 0.0
    assert report.scores[0].similarity > report.scores[1].similarity
    assert report.rows[0].shows == (True, False)
    png = render_score_chart(report, labels=EvaluationChartLabels(title="처음 보는 질문"), names=("pirate-en", "x"))
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_guided_lesson_shows_three_examples_spread_over_the_file() -> None:
    """First, middle and last example; six steps, from what fine-tuning is to the class's own data."""
    lesson = LESSONS.get("pirate-en")
    shown = guide_examples(lesson)
    assert [e.prompt for e in shown] == [lesson.training_examples[i].prompt for i in (0, 20, 39)]
    assert GUIDE_STEPS[0] == "what" and GUIDE_STEPS[-1] == "own_data" and len(GUIDE_STEPS) == 6


def test_unknown_lesson_names_the_lessons_there_are() -> None:
    """A mistyped name gets a plain error listing the real ones."""
    with pytest.raises(errors.UserFacingError) as caught:
        LESSONS.get("pirates")
    assert "pirate-en" in caught.value.render("en")
