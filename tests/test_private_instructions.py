"""A student's own instructions stay theirs: /ask and /compare given a system_prompt answer privately, as /chat start
does (the docs say only they see them); without one, the answer is the class's."""

from __future__ import annotations

from tests.conftest import Classroom

BASE = "gpt-4o-mini-2024-07-18"
OTHER = "gpt-4o-2024-08-06"
MINE = "Answer like my favourite teacher, Ms Kim."


async def test_ask_with_own_instructions_answers_privately(classroom: Classroom) -> None:
    """The finding: /ask showed a student's own instructions publicly above the answer."""
    ask = await classroom.discord.slash(classroom.guild, classroom.student, "ask", model=BASE, prompt="Hi?",
                                        system_prompt=MINE)
    answer = await ask.followup(timeout=10)
    assert MINE in answer.text() and answer.ephemeral


async def test_compare_with_own_instructions_answers_privately(classroom: Classroom) -> None:
    """The same for /compare, whose card shows the instructions both models got."""
    compare = await classroom.discord.slash(classroom.guild, classroom.student, "compare", prompt="Hi?", model=BASE,
                                            against=OTHER, system_prompt=MINE)
    await compare.wait_done(timeout=10)
    assert compare.followups and all(m.ephemeral for m in compare.followups)
    assert MINE in compare.followups[-1].text()


async def test_ask_without_instructions_stays_public(classroom: Classroom) -> None:
    """No instructions of one's own: the answer is for the class, as before."""
    ask = await classroom.discord.slash(classroom.guild, classroom.student, "ask", model=BASE, prompt="Hi?")
    assert not (await ask.followup(timeout=10)).ephemeral
