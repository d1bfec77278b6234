"""/lesson start (a guided first lesson for the class) and /evaluate (held-out questions, base vs fine-tuned)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import Choice
from discord.app_commands import locale_str as _
from discord.ext import commands

from bot import errors
from bot.services import class_time
from bot.services.evaluation import EvaluationService
from bot.services.lessons import LessonLibrary
from cogs import _lesson_ui
from bot.discord_edge.roles import teacher_only

if TYPE_CHECKING:
    from bot.client import ClassroomBot

log = logging.getLogger(__name__)

EVALUATION_FILE_MAX_BYTES = 1 * 2**20  # held-out files are small; MAX_PROMPTS questions are read from them


class Lesson(commands.Cog):
    """The lesson itself: a guided first lesson, and a fair test of the model the class made."""

    lesson = app_commands.Group(
        name="lesson", description=_("A guided first lesson in fine-tuning", key="cmd.lesson"), guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )

    def __init__(self, bot: ClassroomBot, lessons: LessonLibrary, evaluation: EvaluationService) -> None:
        self.bot, self.lessons, self.evaluation = bot, lessons, evaluation

    async def cog_load(self) -> None:
        """The lesson and evaluation buttons answer after a restart too."""
        self.bot.add_dynamic_items(_lesson_ui.LessonNextButton, _lesson_ui.EvaluateJobButton)

    async def cog_unload(self) -> None:
        """Stop answering the buttons."""
        self.bot.remove_dynamic_items(_lesson_ui.LessonNextButton, _lesson_ui.EvaluateJobButton)

    @lesson.command(name="start", description=_(
        "Walk the class through a first fine-tuning lesson, one step at a time", key="cmd.lesson.start"))
    @app_commands.describe(lesson=_("The sample lesson (empty: one in the class's language)", key="cmd.lesson.lesson"))
    @teacher_only()
    async def lesson_start(self, interaction: discord.Interaction, lesson: str | None = None) -> None:
        """Post the lesson's first step in the channel, in the server's language, with the teacher's Next button."""
        locale = self.bot.channel_locale(interaction.guild_id)
        chosen = self.lessons.get(lesson) if lesson else self.lessons.for_locale(locale)
        if chosen is None:
            raise errors.UserFacingError("lesson.error.none")
        log.info("Lesson %s started in guild %s by user %s", chosen.name, interaction.guild_id, interaction.user.id)
        guild = interaction.guild
        students = class_time.class_size(guild.member_count if guild else None)
        group_size = await self.bot.groups.group_size(guild.id) if guild else None
        if guild is not None:  # the class's first job tells the school's trainer that the class follows it
            self.bot.starts.lesson_opened(guild.id, class_time.class_jobs(students, group_size))
        await interaction.response.send_message(
            embed=_lesson_ui.lesson_step_embed(chosen, 0, locale),
            view=_lesson_ui.lesson_step_view(chosen, 0, interaction.user.id, locale) or discord.utils.MISSING,
        )
        # The teacher alone is told how long the class's training will take on the school's trainer.
        estimate = await class_time.estimate(self.bot.finetune, chosen, students, group_size)
        if estimate is not None:
            await interaction.followup.send(_lesson_ui.class_time_text(estimate, str(interaction.locale)),
                                            ephemeral=True)

    @app_commands.command(name="evaluate", description=_(
        "Test a fine-tuned model on questions it never saw, against its base model", key="cmd.evaluate"))
    @app_commands.describe(
        model=_("The fine-tuned model", key="cmd.evaluate.model"),
        against=_("Compare with this model instead of its base model", key="cmd.evaluate.against"),
        lesson=_("Use this sample lesson's held-out questions", key="cmd.evaluate.lesson"),
        file=_("Or your own .jsonl of questions with the answers you hope for", key="cmd.evaluate.file"),
        instructions=_("Give the base model the lesson's long instruction; the fine-tuned model gets only the short "
                       "prompt", key="cmd.evaluate.instructions"),
    )
    @app_commands.guild_only()
    @app_commands.checks.cooldown(2, 60.0, key=lambda i: (i.guild_id, i.user.id))
    async def evaluate(self, interaction: discord.Interaction, model: str, against: str | None = None,
                       lesson: str | None = None, file: discord.Attachment | None = None,
                       instructions: bool = False) -> None:
        """Ask both models the held-out questions and post the scores, a chart and a few answers side by side."""
        assert interaction.guild_id is not None
        # What was asked is checked first, so a mistake is told privately; then Discord's 3 seconds are answered
        # (twenty questions to two models can take a minute on a school's CPU).
        if file is None:
            plan = await self.evaluation.plan(interaction.guild_id, model, against=against, lesson=lesson,
                                              instructed=instructions, user_id=interaction.user.id)
            await interaction.response.defer(thinking=True)
        else:
            if file.size > EVALUATION_FILE_MAX_BYTES:
                raise errors.AttachmentError("error.attachment_too_large", name=file.filename,
                                             limit_mb=EVALUATION_FILE_MAX_BYTES // 2**20)
            await self.evaluation.check(interaction.guild_id, model, against=against, lesson=lesson, with_file=True,
                                        instructed=instructions)
            await interaction.response.defer(thinking=True)
            try:
                upload = (file.filename, await file.read())
            except discord.HTTPException:
                raise errors.AttachmentError(name=file.filename) from None
            plan = await self.evaluation.plan(interaction.guild_id, model, against=against, file=upload,
                                              user_id=interaction.user.id)
        await _lesson_ui.post_evaluation(interaction, self.evaluation, plan)

    @evaluate.autocomplete("model")
    @evaluate.autocomplete("against")
    async def model_autocomplete(self, interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        if interaction.guild_id is None:
            return []
        try:
            choices = await self.bot.chat.model_choices(interaction.guild_id, current)
        except Exception:  # boundary: autocomplete must never raise
            log.exception("Model autocomplete failed in guild %s", interaction.guild_id)
            return []
        return [Choice(name=c.label[:100], value=c.value[:100]) for c in choices][:25]

    @lesson_start.autocomplete("lesson")
    @evaluate.autocomplete("lesson")
    async def lesson_autocomplete(self, interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        return _lesson_ui.lesson_choices(self.lessons, str(interaction.locale), current)


async def setup(bot: ClassroomBot) -> None:
    """Load the cog with its services."""
    await bot.add_cog(Lesson(bot, bot.lessons, bot.evaluation))
