"""A backend without /v1/moderations (another OpenAI-compatible server, e.g. a plain vLLM), through the real bot."""

from __future__ import annotations

from tests.conftest import Classroom
from tests.test_finetune_journey import start_job
from tests.test_governance_journey import answer, command


async def test_moderation_on_without_endpoint_is_refused_and_start_still_works(classroom: Classroom) -> None:
    """`/class moderation on` where the backend cannot moderate is refused plainly; a student's Start still runs."""
    classroom.openai.moderation_endpoint = False
    text, private = answer(await command(classroom, classroom.teacher, "class moderation", state="on"))
    assert private and "no moderation check" in text and "Nothing changed" in text
    assert "`auto`" in text and "`off`" in text  # what the other two choices do here
    assert (await classroom.bot.governance.roles.settings(classroom.guild.id)).moderation is None
    job = await start_job(classroom)
    assert classroom.openai.job(job).status != "failed"


async def test_moderation_auto_and_off_without_endpoint_are_saved(classroom: Classroom) -> None:
    """`auto` (shown as off) and `off` are accepted where the backend cannot moderate."""
    classroom.openai.moderation_endpoint = False
    text = answer(await command(classroom, classroom.teacher, "class moderation", state="auto"))[0]
    assert "Saved: moderation" in text and "off (automatic)" in text
    text = answer(await command(classroom, classroom.teacher, "class moderation", state="off"))[0]
    assert "Saved: moderation" in text
    assert (await classroom.bot.governance.roles.settings(classroom.guild.id)).moderation is False


async def test_settings_warn_when_moderation_left_on_without_endpoint(classroom: Classroom) -> None:
    """`on` saved while the backend had moderation (or before OPENAI_BASE_URL changed) is flagged in /class settings."""
    await classroom.bot.governance.roles.update(classroom.guild.id, moderation=True)
    classroom.openai.moderation_endpoint = False
    text = answer(await command(classroom, classroom.teacher, "class settings"))[0]
    assert "no moderation check" in text and "/class moderation auto" in text


async def test_start_with_on_saved_before_the_backend_lost_moderation_still_works(classroom: Classroom) -> None:
    """Attack: `on` saved, then the backend changed to one without /v1/moderations: every Start failed with "can't
    find that job". The backend's check is skipped where there is none (the class's own words still apply)."""
    await classroom.bot.governance.roles.update(classroom.guild.id, moderation=True)
    classroom.openai.moderation_endpoint = False
    job = await start_job(classroom)
    assert classroom.openai.job(job).status != "failed"
