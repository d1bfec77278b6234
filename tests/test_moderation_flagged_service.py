"""Flagged training files at the service level: what is kept of a flagged line, the allowance bound to a file's
hash and its flagged lines, and what /mydata delete removes. A real SQLite database and the fake OpenAI."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bot import errors
from bot.backend_shapes import flagged_spans
from bot.services.governance import ContentFlaggedError
from bot.services.governance.moderation import FLAGGED_CONTEXT_CHARS, _flagged_line, file_hash
from tests.test_governance_service import GUILD, STUDENT, Parts, chat_lines, parts, pending  # noqa: F401 (fixture)

TEACHER = 77


@pytest.mark.parametrize(("raw", "expected"), [
    ([[4, 9]], ((4, 9),)),
    ([{"start": 0, "end": 3}], ((0, 3),)),
    ([[9, 4], [0, 99], ["a", 2], [1]], ()),  # backwards, past the end, not numbers, not a pair: ignored
    (None, ()),
    ("4-9", ()),
])
def test_spans_keep_only_sane_offsets(raw: object, expected: tuple[tuple[int, int], ...]) -> None:
    """A backend's `spans` are read defensively: only [start, end) pairs inside the text are kept."""
    assert flagged_spans(raw, 20) == expected


def test_flagged_line_with_a_span_keeps_context_and_moves_the_span() -> None:
    """The flagged words with some context either side; the span points at the same words in the excerpt."""
    text = "a" * 200 + " nasty\nword " + "b" * 200
    start = text.index("nasty")
    line = _flagged_line(("train.jsonl", 7), text, (start, start + 5))
    assert line.span is not None and line.text[line.span[0]:line.span[1]] == "nasty"
    assert line.text.startswith("…") and line.text.endswith("…") and "\n" not in line.text
    assert len(line.text) <= 2 * FLAGGED_CONTEXT_CHARS + 5 + 2


def test_flagged_line_without_a_span_is_the_clipped_line() -> None:
    """Without a span (OpenAI's answer, the class's own words) the start of the line, on one line, clipped."""
    line = _flagged_line(("train.jsonl", 2), "Hello\nthere " + "x" * 500, None)
    assert line.span is None and line.text.startswith("Hello there") and len(line.text) <= 160


def test_file_hash_depends_on_every_byte_and_the_boundary_between_files() -> None:
    """An allowance's identity: one byte changed, or a byte moved from training to validation, is another file."""
    assert file_hash([b"ab", b"c"]) != file_hash([b"a", b"bc"])
    assert file_hash([b"abc"]) != file_hash([b"abd"]) and file_hash([b"abc"]) == file_hash([b"abc"])


async def test_allowance_lets_the_same_file_through_and_no_other(parts: Parts) -> None:
    """Allowed: the same bytes pass again (a new Start too); a file with one more line, or another flagged line,
    is flagged again."""
    await parts.service.roles.update(GUILD, moderation=True)
    parts.fake.flag_words = {"nasty"}
    data = chat_lines(3) + chat_lines(1, word="nasty")
    with pytest.raises(ContentFlaggedError) as first:
        await parts.service.moderation.check_training_data(pending(data))
    flagged = first.value.flagged
    assert [(x.file, x.line) for x in flagged.lines] == [("train.jsonl", 4)]
    await parts.service.flagged.ask(GUILD, flagged.id, STUDENT)
    await parts.service.flagged.allow(GUILD, flagged.id, TEACHER)
    await parts.service.moderation.check_training_data(pending(data))  # passes now, as a fresh Start
    for other in (data + chat_lines(1), chat_lines(1, word="nasty") + data):
        with pytest.raises(ContentFlaggedError):
            await parts.service.moderation.check_training_data(pending(other))
    with pytest.raises(ContentFlaggedError):  # another server's teacher allowed nothing here
        await parts.service.moderation.check_training_data(replace(pending(data), guild_id=GUILD + 1))


async def test_start_pressed_twice_keeps_one_record(parts: Parts) -> None:
    """Pressing Start again on the same flagged file finds the same record (one report, one request)."""
    await parts.service.roles.update(GUILD, moderation=True)
    parts.fake.flag_words = {"nasty"}
    waiting = pending(chat_lines(1, word="nasty") * 2)
    ids = set()
    for _ in range(2):
        with pytest.raises(ContentFlaggedError) as refused:
            await parts.service.moderation.check_training_data(waiting)
        ids.add(refused.value.flagged.id)
    assert len(ids) == 1


async def test_ask_and_allow_happen_once_and_only_as_allowed(parts: Parts) -> None:
    """Only the owner asks; asking twice sends once; allowing twice is refused the second time."""
    await parts.service.roles.update(GUILD, moderation=True)
    parts.fake.flag_words = {"nasty"}
    with pytest.raises(ContentFlaggedError) as refused:
        await parts.service.moderation.check_training_data(pending(chat_lines(2, word="nasty")))
    flagged_id = refused.value.flagged.id
    with pytest.raises(errors.NotAllowedError):
        await parts.service.flagged.ask(GUILD, flagged_id, STUDENT + 1)
    assert (await parts.service.flagged.ask(GUILD, flagged_id, STUDENT))[1]
    assert not (await parts.service.flagged.ask(GUILD, flagged_id, STUDENT))[1]
    assert [f.id for f in await parts.service.flagged.waiting(GUILD)] == [flagged_id]
    allowed = await parts.service.flagged.allow(GUILD, flagged_id, TEACHER)
    assert allowed.status == "allowed" and allowed.decided_by == TEACHER
    with pytest.raises(errors.UserFacingError, match="already allowed"):
        await parts.service.flagged.allow(GUILD, flagged_id, TEACHER)
    with pytest.raises(errors.UserFacingError):
        await parts.service.flagged.allow(GUILD + 1, flagged_id, TEACHER)  # not this server's
    assert [f.id for f in await parts.service.flagged.allowed(GUILD)] == [flagged_id]


async def test_mydata_delete_removes_the_students_flagged_lines(parts: Parts) -> None:
    """/mydata delete: waiting records go; an allowance stays on record without the student's text."""
    await parts.service.roles.update(GUILD, moderation=True)
    parts.fake.flag_words = {"nasty"}
    records = []
    for n in (2, 3):
        with pytest.raises(ContentFlaggedError) as refused:
            await parts.service.moderation.check_training_data(pending(chat_lines(n, word="nasty")))
        records.append(refused.value.flagged.id)
    await parts.service.flagged.allow(GUILD, records[0], TEACHER)
    assert await parts.service.flagged.forget_user(GUILD, STUDENT) == 1
    kept = await parts.service.flagged.allowed(GUILD)
    assert [f.id for f in kept] == [records[0]] and kept[0].lines == ()
    with pytest.raises(errors.UserFacingError):
        await parts.service.flagged.get(GUILD, records[1])


async def test_training_check_during_an_outage_refuses_retryably(parts: Parts) -> None:
    """The backend errors: nothing is recorded as flagged, and the refusal is one a Start may retry."""
    await parts.service.roles.update(GUILD, moderation=True)
    parts.fake.fail_next("POST", "/moderations", status=500, times=100, retry_after=0.01)
    with pytest.raises(errors.ModerationUnavailableError) as refused:
        await parts.service.moderation.check_training_data(pending(chat_lines(3)))
    assert isinstance(refused.value, errors.UpstreamBusyError)
    assert await parts.service.flagged.waiting(GUILD) == [] and await parts.service.flagged.allowed(GUILD) == []


async def test_flagged_validation_line_is_named_by_its_file(parts: Parts) -> None:
    """A flagged line of the validation file is shown with that file's name, after the training file's lines."""
    await parts.service.roles.update(GUILD, moderation=True)
    parts.fake.flag_words = {"nasty"}
    training = pending(chat_lines(1, word="nasty") + chat_lines(2))
    held = pending(chat_lines(1) + chat_lines(1, word="nasty"))
    both = replace(training, validation_name="held-out.jsonl", validation_path=held.training_path)
    with pytest.raises(ContentFlaggedError) as refused:
        await parts.service.moderation.check_training_data(both)
    assert [(x.file, x.line) for x in refused.value.flagged.lines] == [("train.jsonl", 1), ("held-out.jsonl", 2)]


async def test_a_big_file_once_flagged_stays_flagged_whatever_the_next_sample(parts: Parts) -> None:
    """A file past the sample cap is moderated as a fresh random sample at each Start. Once a sample found a line,
    starting the same file again is refused on that line whatever the next sample holds, until a teacher allows it,
    and a file with some other line changed has the line checked again: otherwise pressing Start a few times (or
    adding a line first) would let it through (a sample of 512 of 2,048 lines misses it three times in four)."""
    await parts.service.roles.update(GUILD, moderation=True)
    parts.fake.flag_words = {"nasty"}
    data = chat_lines(2047) + chat_lines(1, word="nasty")
    for _ in range(80):  # until a sample holds the line: each does one time in four (never in 80: 1 in 10^10)
        try:
            await parts.service.moderation.check_training_data(pending(data))
        except ContentFlaggedError as refused:
            flagged = refused.flagged
            break
    else:
        pytest.fail("no sample of the file held its flagged line")
    assert [(x.file, x.line) for x in flagged.lines] == [("train.jsonl", 2048)]
    for _ in range(12):  # without the record, all 12 samples would hold the line one time in 17 million
        with pytest.raises(ContentFlaggedError) as again:
            await parts.service.moderation.check_training_data(pending(data))
        assert [(x.file, x.line) for x in again.value.flagged.lines] == [("train.jsonl", 2048)]
    for n in range(12):  # another file: one more line in front, the flagged one moved; it is checked all the same
        with pytest.raises(ContentFlaggedError) as moved:
            await parts.service.moderation.check_training_data(pending(chat_lines(1, word=f"extra{n}") + data))
        assert [(x.file, x.line) for x in moved.value.flagged.lines] == [("train.jsonl", 2049)]
    await parts.service.flagged.ask(GUILD, flagged.id, STUDENT)
    await parts.service.flagged.allow(GUILD, flagged.id, TEACHER)
    await parts.service.moderation.check_training_data(pending(data))  # allowed: this file passes from now on
