"""Groups below the journeys: the repository, the service's start rule, and the class estimate in the group's size."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import errors
from bot.services.class_time import ClassTime
from bot.services.groups import GroupService, clean_group_name
from bot.services.lessons import LessonLibrary
from cogs._lesson_ui import class_time_text
from storage.database import Database
from storage.groups import GroupRepository
from storage.jobs import JobRepository
from tests.test_storage import new_job

GUILD = 10
PIRATE = LessonLibrary().get("pirate-en")


@pytest.fixture
async def groups(tmp_path: Path) -> AsyncIterator[GroupService]:
    db = await Database.open(tmp_path / "bot.sqlite3")
    yield GroupService(GroupRepository(db), JobRepository(db))
    await db.close()


async def test_join_matches_names_without_case_and_keeps_the_first_spelling(groups: GroupService) -> None:
    """"otters" joins "Otters"; the group keeps its first member's spelling and its members in joining order."""
    await groups.set_group_size(GUILD, 3)
    await groups.join(GUILD, 1, "Otters")
    joined = await groups.join(GUILD, 2, "  otters ")
    assert joined.name == "Otters" and joined.members == (1, 2)


async def test_join_a_full_group_is_refused_and_moving_leaves_the_old_group(groups: GroupService) -> None:
    """A group of 2 with 2 members refuses a third; a member who joins another group leaves their first."""
    await groups.set_group_size(GUILD, 2)
    await groups.join(GUILD, 1, "A")
    await groups.join(GUILD, 2, "A")
    with pytest.raises(errors.UserFacingError) as refused:
        await groups.join(GUILD, 3, "A")
    assert refused.value.key == "group.error.full"
    await groups.join(GUILD, 2, "B")
    view = await groups.show(GUILD, 1)
    assert [(g.name, g.members) for g in view.groups] == [("A", (1,)), ("B", (2,))]


async def test_size_zero_or_one_turns_groups_off_and_keeps_them(groups: GroupService) -> None:
    """0 and 1 mean every student on their own; the groups stay for when the teacher turns them on again."""
    await groups.set_group_size(GUILD, 3)
    await groups.join(GUILD, 1, "A")
    assert await groups.set_group_size(GUILD, 1) is None
    assert await groups.group_for_start(GUILD, 1, is_teacher=False) is None
    assert await groups.set_group_size(GUILD, 3) == 3
    group = await groups.group_for_start(GUILD, 1, is_teacher=False)
    assert group is not None and group.name == "A"


async def test_start_places_students_in_order_and_refuses_while_the_group_job_runs(groups: GroupService) -> None:
    """Groups of 2 fill in order (A, A, B); while A's job waits or trains, A's members are refused; once it ends,
    A may train again."""
    await groups.set_group_size(GUILD, 2)
    names = [(await groups.group_for_start(GUILD, user, is_teacher=False)) for user in (1, 2, 3)]
    assert [g.name if g else None for g in names] == ["A", "A", "B"]
    await groups.jobs.insert(new_job("ftjob-a", guild_id=GUILD, user_id=1, status="queued"), group_name="A")
    for user in (1, 2):
        with pytest.raises(errors.GroupJobUnderwayError) as refused:
            await groups.group_for_start(GUILD, user, is_teacher=False)
        assert refused.value.params["job"] == "ftjob-a"
    await groups.jobs.db.execute("UPDATE jobs SET status = 'succeeded', fine_tuned_model = 'ft:m' WHERE id = ?",
                                 ("ftjob-a",))
    assert (await groups.group_for_start(GUILD, 2, is_teacher=False)) is not None
    assert await groups.models_of(GUILD, 2) == ["ft:m"]
    assert await groups.members_of_model(GUILD, "ft:m") == (1, 2)


async def test_a_teacher_in_no_group_trains_alone(groups: GroupService) -> None:
    """A teacher's try-out does not take a student's place in a group."""
    await groups.set_group_size(GUILD, 3)
    assert await groups.group_for_start(GUILD, 99, is_teacher=True) is None
    assert (await groups.show(GUILD, 99)).groups == []


@pytest.mark.parametrize(("typed", "kept"), [
    ("  Team   Otters ", "Team Otters"), ("수달", "수달"), ("<@123>", "123"), ("***", None), ("x" * 40, "x" * 32),
])
def test_clean_group_name(typed: str, kept: str | None) -> None:
    """Names are single-spaced and short, and cannot smuggle a mention or markdown into the bot's messages."""
    assert clean_group_name(typed) == kept


def test_class_time_text_with_groups_on_uses_the_class_group_size() -> None:
    """With groups on the teacher reads the class's own group size, in English and Korean."""
    estimate = ClassTime("smollm2-135m-instruct", PIRATE, 30, 40 * 60, True, 8 * 60, group_size=5, groups_on=True)
    assert class_time_text(estimate, "en").endswith("Groups are on (groups of 5, one model each): about 8 minutes.")
    assert class_time_text(estimate, "ko").endswith("모둠 학습 중 (5명씩, 모둠마다 모델 하나): 약 8분.")
