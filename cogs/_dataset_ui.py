"""How a class dataset looks: what is still missing, and /dataset show's summary. Pure rendering."""

from __future__ import annotations

import discord

from bot.discord_edge.text import clip
from bot.i18n import t
from bot.services.datasets import DatasetSummary

WARNINGS_SHOWN = 5
COLOUR = 0xFEE75C


def progress_line(count: int, missing_to_train: int, missing_to_target: int, name: str, locale: str) -> str:
    """What is still missing, in numbers ("12 more examples to reach 50")."""
    if missing_to_train:
        return t("dataset.progress_train", locale, count=count, train=missing_to_train, target=missing_to_target)
    if missing_to_target:
        return t("dataset.progress_target", locale, count=count, target=missing_to_target)
    return t("dataset.progress_done", locale, count=count, name=name)


def summary_embed(summary: DatasetSummary, locale: str) -> discord.Embed:
    """The dataset's size, tokens, authors, what is missing, what to check, and its latest examples by number."""
    name = summary.dataset.name
    lines = [t("dataset.stats", locale, count=summary.count, tokens=summary.tokens, people=summary.contributors),
             progress_line(summary.count, summary.missing_to_train, summary.missing_to_target, name, locale)]
    if summary.dataset.system_prompt:
        prompt = t("post.held_back", locale) if summary.prompt_held_back else summary.dataset.system_prompt[:500]
        lines.append(t("dataset.system_prompt", locale, prompt=prompt))
    embed = discord.Embed(title=t("dataset.title", locale, name=name), description="\n".join(lines), colour=COLOUR)
    warnings = [w for w in (summary.report.warnings if summary.report else ()) if w.code != "few_examples"]
    if warnings:
        embed.add_field(name=t("dataset.warnings", locale),
                        value="\n".join(f"• {w.message(locale)}"[:200] for w in warnings[:WARNINGS_SHOWN]),
                        inline=False)
    latest = summary.latest
    if latest:
        # What moderation flagged is not posted: a kind note stands in its place (the teacher was told).
        held = t("post.held_back", locale)
        shown = "\n".join(f"**#{e.number}** {held} (<@{e.user_id}>)" if e.number in summary.held_back
                          else f"**#{e.number}** {clip(e.question, 80, one_line=True)} → "
                               f"{clip(e.answer, 80, one_line=True)} (<@{e.user_id}>)"
                          for e in latest)
        embed.add_field(name=t("dataset.latest", locale), value=shown[:1024], inline=False)
    return embed
