"""/mydata delete removes or unlists everything that is the student's: models and their checkpoints leave the lists
and cannot be chatted with, the summary counts what went, and the list the card promises is attached."""

from __future__ import annotations

from tests.conftest import Classroom
from tests.test_governance_journey import click_and_wait, command, finished_job
from tests.test_lesson_journey import add_example


async def _delete_mine(room: Classroom) -> tuple[str, str]:
    """Run /mydata delete, confirm it; the card's text with its attached list, and the summary."""
    interaction = await command(room, room.student, "mydata delete")
    card = interaction.original
    assert card is not None
    listing = card.file("to-delete.txt").data.decode()
    await click_and_wait(room, card, "Delete", room.student)
    await room.discord.wait_for(lambda: "Cleanup finished" in card.text() or None, timeout=10)
    return listing, card.text()


async def test_a_students_models_and_checkpoints_leave_the_lists_and_the_chats(classroom: Classroom) -> None:
    """The finding: after /mydata delete the student's models and checkpoints stayed listed and usable. They are
    named in the attached list, deleted, gone from /models, and refused for chat."""
    job_id = await finished_job(classroom)
    await classroom.discord.wait_for(lambda: classroom.openai.job(job_id).fine_tuned_model or None, timeout=5)
    job = classroom.openai.job(job_id)
    listed = await classroom.bot.chat.trained_models(classroom.guild.id)
    checkpoints = [m.model_id for m in listed if m.is_checkpoint]
    assert job.fine_tuned_model in {m.model_id for m in listed} and checkpoints
    listing, _ = await _delete_mine(classroom)
    assert job.fine_tuned_model in listing and all(c in listing for c in checkpoints)
    assert await classroom.bot.chat.trained_models(classroom.guild.id) == []
    ask = await classroom.discord.slash(classroom.guild, classroom.student, "ask", model=job.fine_tuned_model,
                                        prompt="Hi?")
    await ask.wait_done(timeout=10)
    assert classroom.openai.chat_requests == []


async def test_the_summary_counts_dataset_examples_and_the_list_is_attached(classroom: Classroom) -> None:
    """The finding: "Deleted: 0" after removing three dataset examples, and no list attached though promised."""
    await command(classroom, classroom.teacher, "dataset create", options={"name": "Robot"})
    for number in range(3):
        await add_example(classroom, classroom.student, f"Question {number}?", f"Answer {number}.")
    listing, summary = await _delete_mine(classroom)
    assert "dataset_examples\t3" in listing
    assert "Examples of yours removed from the class datasets: 3" in summary
