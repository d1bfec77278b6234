"""How chatting looks: /compare's side-by-side answers and /models' list of what the class trained. Pure rendering."""

from __future__ import annotations

import io

import discord

from bot.discord_edge.text import clip
from bot.i18n import t
from bot.services.chat import Answer, Comparison
from dataset_rules.models import lookup
from storage.models import TrainedModel

FIELD_CHARS = 1024
MODELS_SHOWN = 15


def short_name(model: str) -> str:
    # ft:<base>:<org>:<suffix>:<id> reads best as its suffix (or id) and base.
    if model.startswith("ft:"):
        parts = model.split(":")
        label = (parts[3] if len(parts) > 3 and parts[3] else parts[-1]) or model
        return f"{label} ({parts[1]})" if len(parts) > 1 else label
    return model


def _answer_text(answer: Answer, locale: str) -> str:
    if answer.held_back:
        return t("compare.held_back", locale)
    if answer.error is not None:
        return "⚠️ " + answer.error.render(locale)
    if not answer.done:
        return (answer.text or "") + " ✍️"
    if answer.cut:
        return (answer.text or "") + "\n\n" + t("chat.reply_cut", locale)
    return answer.text or t("chat.empty_reply", locale)


def compare_embed(comparison: Comparison, locale: str) -> tuple[discord.Embed, discord.File | None]:
    """Two answers side by side; the full texts go in a file when a field cannot hold them."""
    embed = discord.Embed(title=t("compare.title", locale), colour=0x5865F2)
    embed.description = f"**{t('compare.question', locale)}**\n> " + clip(comparison.prompt, 1000).replace("\n", "\n> ")
    if comparison.system_prompt:
        embed.description += "\n" + t("compare.system_prompt", locale, prompt=clip(comparison.system_prompt, 900))
    clipped = False
    for answer in (comparison.first, comparison.second):
        text = _answer_text(answer, locale)
        clipped |= len(text) > FIELD_CHARS
        embed.add_field(name=clip(short_name(answer.model), 256), value=clip(text, FIELD_CHARS), inline=True)
    file = None
    if clipped and comparison.done:
        embed.add_field(name="\u200b", value=t("compare.full_answers", locale), inline=False)
        full = "\n\n".join(f"## {a.model}\n\n{_answer_text(a, locale)}" for a in (comparison.first, comparison.second))
        file = discord.File(io.BytesIO(f"# {comparison.prompt}\n\n{full}\n".encode()), filename="compare.md")
    embed.set_footer(text=t("compare.hint", locale) if comparison.done else t("compare.writing", locale))
    return embed, file


def models_embed(models: list[TrainedModel], locale: str) -> discord.Embed:
    """This server's fine-tuned models, one entry per job with its checkpoints under it, and each one's loss over
    its last epoch (not a single batch's)."""
    embed = discord.Embed(title=t("models.title", locale), colour=0x57F287)
    if not models:
        embed.description = t("models.empty", locale)
        return embed
    jobs: dict[str, list[TrainedModel]] = {}
    for model in models:
        jobs.setdefault(model.job_id, []).append(model)
    lines = []
    for group in list(jobs.values())[:MODELS_SHOWN]:
        final = next((m for m in group if not m.is_checkpoint), None)
        head = final or group[0]
        entry = f"**{head.suffix or head.training_filename}**"
        entry += f" · `{final.model_id}`" if final else ""
        entry += "\n" + t("models.entry", locale, user=f"<@{head.user_id}>", when=f"<t:{head.created_at}:R>",
                          file=head.training_filename, base=head.base_model)
        if final is not None:
            entry += "\n" + _loss_line(final, locale)
        checkpoints = sorted((m for m in group if m.is_checkpoint), key=lambda m: m.step or 0)
        if checkpoints:
            entry += "\n-# " + t("models.checkpoints", locale, list=" · ".join(
                t("models.checkpoint", locale, step=m.step) + (
                    f" ({_loss_value(m)})" if _loss_value(m) else "") for m in checkpoints))
        lines.append(entry)
    embed.description = clip("\n\n".join(lines), 4000)
    shutdowns = sorted({(info.name, info.shutdown) for m in models if (info := lookup(m.base_model)) and info.shutdown})
    if shutdowns:
        notes = "\n".join(t("models.shutdown", locale, base=base, date=day.isoformat()) for base, day in shutdowns)
        embed.add_field(name="⏳", value=clip(notes, FIELD_CHARS), inline=False)
    embed.set_footer(text=t("models.footer", locale))
    return embed


def _loss_value(model: TrainedModel) -> str:
    loss = model.valid_loss if model.valid_loss is not None else model.epoch_train_loss
    return f"{loss:.2f}" if loss is not None else ""


def _loss_line(model: TrainedModel, locale: str) -> str:
    parts = []
    if model.epoch_train_loss is not None:
        parts.append(t("models.epoch_loss", locale, loss=f"{model.epoch_train_loss:.2f}"))
    if model.valid_loss is not None:
        parts.append(t("models.valid_loss", locale, loss=f"{model.valid_loss:.2f}"))
    return " · ".join(parts) or t("models.no_loss", locale)
