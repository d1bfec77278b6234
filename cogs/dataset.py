"""/dataset: a class builds a training dataset together (a modal per example), sees what is missing, and trains it."""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import Choice
from discord.app_commands import locale_str as _
from discord.ext import commands

from bot.discord_edge.replies import tree_error
from bot.discord_edge.roles import teacher_only
from bot.i18n import t
from bot.services.datasets import ANSWER_MAX_CHARS, MIN_EXAMPLES, QUESTION_MAX_CHARS, TARGET_EXAMPLES, DatasetService
from cogs import _dataset_ui

if TYPE_CHECKING:
    from bot.client import ClassroomBot

log = logging.getLogger(__name__)

MODAL_TIMEOUT_SECONDS = 15 * 60


class ExampleModal(discord.ui.Modal):
    """A question and the answer the class wants, typed by one student."""

    def __init__(self, service: DatasetService, name: str, locale: str) -> None:
        super().__init__(title=t("dataset.modal_title", locale, name=name)[:45], timeout=MODAL_TIMEOUT_SECONDS)
        self.service, self.name = service, name
        self.question: discord.ui.TextInput[ExampleModal] = discord.ui.TextInput(
            label=t("dataset.modal_question", locale)[:45], custom_id="dataset:question",
            style=discord.TextStyle.paragraph, max_length=QUESTION_MAX_CHARS)
        self.answer: discord.ui.TextInput[ExampleModal] = discord.ui.TextInput(
            label=t("dataset.modal_answer", locale)[:45], custom_id="dataset:answer",
            style=discord.TextStyle.paragraph, max_length=ANSWER_MAX_CHARS)
        self.add_item(self.question)
        self.add_item(self.answer)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        """Store the example and tell the student its number and what the class still needs."""
        try:
            await self._store(interaction)
        except Exception as exc:  # boundary: a refused example is explained like any command's error
            await tree_error(interaction, exc)

    async def _store(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        example = await self.service.add(interaction.guild_id, self.name, interaction.user.id,
                                         self.question.value, self.answer.value)
        count = await self.service.count(interaction.guild_id, self.name)  # numbers skip removed examples
        progress = _dataset_ui.progress_line(count, max(0, MIN_EXAMPLES - count), max(0, TARGET_EXAMPLES - count), self.name,
                                 str(interaction.locale))
        await interaction.response.send_message(
            t("dataset.added", interaction.locale, number=example.number, progress=progress), ephemeral=True)


class Dataset(commands.Cog):
    """Class-built datasets."""

    dataset = app_commands.Group(
        name="dataset", description=_("Build a training dataset together as a class", key="cmd.dataset"),
        guild_only=True,
    )

    def __init__(self, bot: ClassroomBot, service: DatasetService) -> None:
        self.bot, self.service = bot, service

    @dataset.command(name="create", description=_(
        "Start a class dataset, or change its system prompt (teachers)", key="cmd.dataset.create"))
    @app_commands.describe(
        name=_("The dataset's name", key="cmd.dataset.name"),
        system_prompt=_("Who the model is, sent before every question (optional)", key="cmd.dataset.system_prompt"),
    )
    @teacher_only()
    async def dataset_create(self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 40],
                             system_prompt: app_commands.Range[str, 1, 1000] | None = None) -> None:
        """Create the dataset and tell the class how to add to it."""
        assert interaction.guild_id is not None
        created = await self.service.create(interaction.guild_id, name, system_prompt, interaction.user.id)
        text = t("dataset.created", interaction.locale, name=created.name)
        if created.system_prompt:
            text += "\n" + t("dataset.system_prompt", interaction.locale, prompt=created.system_prompt)
        await interaction.response.send_message(text, allowed_mentions=discord.AllowedMentions.none())

    @dataset.command(name="add", description=_("Add an example: a question and the answer you want",
                                               key="cmd.dataset.add"))
    @app_commands.describe(name=_("The dataset's name", key="cmd.dataset.name"))
    async def dataset_add(self, interaction: discord.Interaction, name: str) -> None:
        """Open the example form."""
        assert interaction.guild_id is not None
        dataset = await self.service.get(interaction.guild_id, name)
        await interaction.response.send_modal(ExampleModal(self.service, dataset.name, str(interaction.locale)))

    @dataset.command(name="show", description=_("Show how the class dataset is doing", key="cmd.dataset.show"))
    @app_commands.describe(name=_("The dataset's name", key="cmd.dataset.name"))
    async def dataset_show(self, interaction: discord.Interaction, name: str) -> None:
        """Post the dataset's count, tokens, what is missing and its latest examples."""
        assert interaction.guild_id is not None
        await self.service.get(interaction.guild_id, name)  # a mistyped name is told privately, before the deferral
        await interaction.response.defer(thinking=True)
        summary = await self.service.summary(interaction.guild_id, name, await self.bot.finetune.default_base_model())
        await interaction.followup.send(embed=_dataset_ui.summary_embed(summary, str(interaction.locale)),
                                        allowed_mentions=discord.AllowedMentions.none())

    @dataset.command(name="remove", description=_("Remove one example by its number (teachers)",
                                                  key="cmd.dataset.remove"))
    @app_commands.describe(name=_("The dataset's name", key="cmd.dataset.name"),
                           number=_("The example's number (see /dataset show)", key="cmd.dataset.number"))
    @teacher_only()
    async def dataset_remove(self, interaction: discord.Interaction, name: str,
                             number: app_commands.Range[int, 1, 100_000]) -> None:
        """Remove an example (the student who wrote it is not named to the class)."""
        assert interaction.guild_id is not None
        await self.service.remove(interaction.guild_id, name, number)
        dataset = await self.service.get(interaction.guild_id, name)
        await interaction.response.send_message(t("dataset.removed", interaction.locale, number=number,
                                                  name=dataset.name))

    @dataset.command(name="export", description=_("Download the dataset as a .jsonl training file",
                                                  key="cmd.dataset.export"))
    @app_commands.describe(name=_("The dataset's name", key="cmd.dataset.name"))
    async def dataset_export(self, interaction: discord.Interaction, name: str) -> None:
        """Post the dataset as a JSONL file."""
        assert interaction.guild_id is not None
        await self.service.get(interaction.guild_id, name)  # a mistyped name is told privately, before the deferral
        # Every example is moderated before the file is posted for the class: that can take a few seconds.
        await interaction.response.defer(thinking=True)
        export = await self.service.export_for_post(interaction.guild_id, name)
        lines = [t("dataset.exported", interaction.locale, name=export.filename.removesuffix(".jsonl"),
                   count=export.data.count(b"\n"))]
        if export.held_back:
            lines.append(t("post.held_back_examples", interaction.locale, count=len(export.held_back),
                           numbers=", ".join(str(n) for n in export.held_back[:20])))
        files = [discord.File(io.BytesIO(export.data), filename=export.filename)] if export.data else []
        await interaction.followup.send("\n".join(lines), files=files, allowed_mentions=discord.AllowedMentions.none())

    @dataset_add.autocomplete("name")
    @dataset_show.autocomplete("name")
    @dataset_remove.autocomplete("name")
    @dataset_export.autocomplete("name")
    async def name_autocomplete(self, interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        if interaction.guild_id is None:
            return []
        try:
            names = await self.service.names(interaction.guild_id, current)
        except Exception:  # boundary: autocomplete must never raise
            log.exception("Dataset autocomplete failed in guild %s", interaction.guild_id)
            return []
        return [Choice(name=n, value=n) for n in names][:25]


async def setup(bot: ClassroomBot) -> None:
    """Load the cog with its service."""
    await bot.add_cog(Dataset(bot, bot.datasets))
