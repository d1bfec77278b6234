"""A teacher's own words: the service on real SQLite, and the journey through the real discord.py and openai SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.services.wordlist import MAX_WORDS, WordListError, WordListService, moderation_kind, normalize
from storage.database import Database
from storage.wordlist import WordListRepository
from tests.conftest import Classroom
from support.fakes.discord import FakeChannel
from tests.test_chat_journey import open_chat
from tests.test_finetune_journey import open_card
from tests.test_governance_journey import _file_with, answer, click_and_wait, command, teachers  # noqa: F401

GUILD, OTHER, TEACHER = 1, 2, 10


@pytest.fixture
async def words() -> AsyncIterator[WordListService]:
    """The service on a fresh in-memory database with every migration applied."""
    db = await Database.open(":memory:")
    try:
        yield WordListService(WordListRepository(db))
    finally:
        await db.close()


@pytest.mark.parametrize(("text", "expected"), [
    ("바 보", "바보"), ("바.보!", "바보"), ("ＢＡＢＯ", "babo"), ("Ba-Bo", "babo"),
    ("ㄱ ㅅ.ㄲ", normalize("ㄱㅅㄲ")),
])
def test_normalize_drops_spacing_punctuation_and_width(text: str, expected: str) -> None:
    """Spacing, punctuation, case and full-width letters do not hide a word."""
    assert normalize(text) == expected


async def test_flags_texts_with_a_word_spaced_or_punctuated(words: WordListService) -> None:
    """A word added by the teacher is found spaced out or with dots, and only on that server."""
    assert await words.add(GUILD, "바보", TEACHER)
    texts = ["너 바 보 야", "바.보", "바다 보러 가자", "babo"]
    assert await words.flags(GUILD, texts) == [True, True, False, False]
    assert await words.flags(OTHER, texts) == [False] * 4


async def test_a_word_is_never_found_across_two_ordinary_words(words: WordListService) -> None:
    """Issue 22: with 시발 on the list, "다시 발급" (issue 22's library line 17) passes; 시발 in one word, spaced out or
    disguised is held back."""
    assert await words.add(GUILD, "시발", TEACHER)
    texts = ["학생증이 없으면 빌릴 수 없어요. 행정실에서 학생증을 다시 발급받은 뒤 빌려 주세요.", "수시 발표는 언제예요?",
             "시발 진짜", "시 발", "시1발", "ㅅㅣㅂㅏㄹ", "시\u200b발놈아"]
    assert await words.flags(GUILD, texts) == [False, False, True, True, True, True, True]


async def test_a_phrase_is_found_across_its_spaces(words: WordListService) -> None:
    """A list entry typed with a space is a phrase: found however the text spaces it."""
    assert await words.add(GUILD, "너 바보", TEACHER)
    assert await words.flags(GUILD, ["너바보", "너 바보야", "너는 바보"]) == [True, True, False]


async def test_add_twice_then_remove_then_list(words: WordListService) -> None:
    """Adding the same word again (any spacing) keeps one entry; removing it empties the list and the checks."""
    assert await words.add(GUILD, "멍청이", TEACHER)
    assert not await words.add(GUILD, "멍 청 이", TEACHER)
    assert await words.words(GUILD) == ["멍청이"]
    assert await words.remove(GUILD, "멍청이") and not await words.remove(GUILD, "멍청이")
    assert await words.words(GUILD) == [] and await words.flags(GUILD, ["멍청이"]) == [False]


@pytest.mark.parametrize("word", ["a", "!!", "x" * 51])
async def test_add_refuses_words_that_would_match_everything_or_are_too_long(words: WordListService,
                                                                              word: str) -> None:
    """One Latin letter, punctuation only, or more than 50 characters is refused with a kind message."""
    with pytest.raises(WordListError) as caught:
        await words.add(GUILD, word, TEACHER)
    assert "at least two letters" in caught.value.render("en")


async def test_one_hangul_syllable_is_a_word(words: WordListService) -> None:
    """A single Hangul syllable can be a whole swear word, so it is accepted."""
    assert await words.add(GUILD, "좆", TEACHER)
    assert await words.flags(GUILD, ["좆 같 네"]) == [True]


async def test_list_is_full_at_the_limit(words: WordListService) -> None:
    """Past MAX_WORDS the teacher is told to remove one first."""
    for n in range(MAX_WORDS):
        await words.add(GUILD, f"word{n}", TEACHER)
    with pytest.raises(WordListError) as caught:
        await words.add(GUILD, "one more", TEACHER)
    assert caught.value.key == "words.error.full"


@pytest.mark.parametrize(("model", "kind"), [
    ("school-profanity-ko-en", "school"), ("omni-moderation-latest", "openai"),
    ("text-moderation-007", "openai"), ("llama-guard-3", "other"), ("", "other"), (None, "none"),
])
def test_moderation_kind_names_the_backend_filter(model: str | None, kind: str) -> None:
    """The answer's model tells the trainer's word filters from OpenAI's moderation and others."""
    assert moderation_kind(model).kind == kind


# Journeys ---------------------------------------------------------------------------------------------------


async def test_own_word_in_chat_is_held_back_before_the_backend_is_asked(classroom: Classroom,
                                                                         teachers: FakeChannel) -> None:  # noqa: F811
    """/class words add; a spaced-out use in chat is held back and reported; the backend never sees it."""
    await command(classroom, classroom.teacher, "class teacher-channel", teacher_channel=teachers)
    added = await command(classroom, classroom.teacher, "class words add", word="바보")
    assert "Added" in answer(added)[0] and answer(added)[1]
    thread = await open_chat(classroom)
    before = list(classroom.openai.moderation_requests)
    asked = len(classroom.openai.chat_requests)
    await classroom.discord.say(thread, classroom.student, "너 바 보 야")
    await classroom.discord.wait_message(thread, lambda m: "didn't send that message" in m.content, timeout=10)
    report = await classroom.discord.wait_for(lambda: next(iter(classroom.discord.messages(teachers)), None),
                                              timeout=10, what="moderation report")
    assert "chat message was held back" in report.text() and "||너 바 보 야||" in report.text()
    assert len(classroom.openai.chat_requests) == asked
    assert not any("바 보" in str(r) for r in classroom.openai.moderation_requests[len(before):])


async def test_own_word_in_training_data_stops_the_upload(classroom: Classroom) -> None:
    """A training file with the teacher's word is not uploaded, and the student is told which line."""
    await command(classroom, classroom.teacher, "class words add", word="dummy")
    card = await open_card(classroom, _file_with("a dummy"))
    refusal = await (await click_and_wait(classroom, card, "Start", classroom.student)).followup(timeout=10)
    assert refusal.ephemeral and "line 3: ||" in refusal.text() and classroom.openai.uploads == []


async def test_moderation_off_turns_own_words_off_too(classroom: Classroom) -> None:
    """The teacher's off switch wins over their own list: nothing is checked."""
    await command(classroom, classroom.teacher, "class words add", word="dummy")
    await command(classroom, classroom.teacher, "class moderation", state="off")
    assert await classroom.bot.governance.moderation.moderate_chat(classroom.guild.id, ["a dummy"]) == [False]


async def test_settings_name_openai_moderation_and_count_own_words(classroom: Classroom) -> None:
    """/class settings says which moderation checks (OpenAI's here), what it misses, and how many own words."""
    await command(classroom, classroom.teacher, "class words add", word="dummy")
    shown, private = answer(await command(classroom, classroom.teacher, "class settings"))
    assert private and "OpenAI's moderation (`omni-moderation-latest`)" in shown
    assert "personal information" in shown and "Your own words\n1 (see them" in shown


async def test_words_list_and_remove_answer_the_teacher_privately(classroom: Classroom) -> None:
    """The list shows the words as typed; removing one that is not there says how to see the list."""
    await command(classroom, classroom.teacher, "class words add", word="Dummy Word")
    listed, private = answer(await command(classroom, classroom.teacher, "class words list"))
    assert private and "`Dummy Word`" in listed and "(1)" in listed
    missing = answer(await command(classroom, classroom.teacher, "class words remove", word="nothing"))[0]
    assert "/class words list" in missing


async def test_students_cannot_change_the_word_list(classroom: Classroom) -> None:
    """Only teachers may add words."""
    refused = answer(await command(classroom, classroom.student, "class words add", word="dummy"))
    assert refused[1] and await classroom.bot.wordlist.words(classroom.guild.id) == []


async def test_backend_without_moderation_still_holds_back_own_words(classroom: Classroom) -> None:
    """Where the backend has no moderation endpoint, auto is off but the class's own words still apply."""
    classroom.openai.fail_next("POST", "/moderations", status=404)
    await command(classroom, classroom.teacher, "class words add", word="dummy")
    assert await classroom.bot.governance.moderation.moderate_chat(classroom.guild.id, ["a dummy", "hello"]) == [True, False]
    shown = answer(await command(classroom, classroom.teacher, "class settings"))[0]
    assert "off (automatic)" in shown and "has no moderation, so only your class's own words" in shown
