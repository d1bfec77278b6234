"""What a flagged training file looks like to the student and the teacher, and its restart-proof buttons (a helper
module: the finetune cog shows the lines and the Ask button, the flagged cog and /class settings the Allow button)."""

from __future__ import annotations

import discord

from bot.discord_edge.access import classroom_bot
from bot.discord_edge.buttons import ActionButton
from bot.discord_edge.roles import refuse_unless_teacher
from bot.discord_edge.text import clip
from bot.i18n import t
from cogs import _jobs_ui
from storage.models import FlaggedFile, FlaggedLine

FLAGGED_TEMPLATE = r"flagged:(?P<id>[0-9a-f]+):(?P<action>ask|allow)"
LINES_SHOWN = 5
MESSAGE_CHARS = 2000


def hidden(line: FlaggedLine) -> str:
    """A flagged line behind a spoiler, the flagged words in bold when the backend named them."""
    if line.span is None:
        return f"||{_escape(line.text)}||"
    start, end = line.span
    return f"||{_escape(line.text[:start])}**{_escape(line.text[start:end])}**{_escape(line.text[end:])}||"


def _escape(text: str) -> str:
    # A student's text must not close the spoiler early or turn into mentions and markup (escape_markdown escapes
    # the "|" of a spoiler too).
    return discord.utils.escape_mentions(discord.utils.escape_markdown(text))


def lines_text(flagged: FlaggedFile, locale: str) -> str:
    """One bullet per flagged line: the file, the line number, the text hidden behind a spoiler."""
    shown = [t("flagged.line", locale, file=_escape(line.file), line=line.line, text=hidden(line))
             for line in flagged.lines[:LINES_SHOWN]]
    if len(flagged.lines) > LINES_SHOWN:
        shown.append(t("flagged.more_lines", locale, count=len(flagged.lines) - LINES_SHOWN))
    return "\n".join(shown)


def student_text(flagged: FlaggedFile, locale: str) -> str:
    """What the student alone sees: which lines, what to do, and that a teacher can let a mistake through."""
    text = "\n".join([t("flagged.student", locale, file=_escape(flagged.filename)), lines_text(flagged, locale),
                      t("flagged.student_next", locale)])
    return clip(text, MESSAGE_CHARS)


def teacher_embed(flagged: FlaggedFile, locale: str) -> discord.Embed:
    """The card a teacher allows the file from."""
    embed = discord.Embed(title=t("flagged.card_title", locale), colour=_jobs_ui.AMBER)
    embed.description = clip("\n".join([
        t("flagged.card_body", locale, user=f"<@{flagged.user_id}>", file=_escape(flagged.filename)),
        lines_text(flagged, locale), t("flagged.card_explain", locale)]), 4096)
    embed.set_footer(text=flagged.id)
    return embed


class FlaggedButton(ActionButton, template=FLAGGED_TEMPLATE):
    """"Ask my teacher" under the student's private message, "Allow this file" on the teacher's card; both work
    after a restart (the flagged file is a row). A click is dispatched as `flagged_click` to the flagged-files cog,
    so the cogs that only show these buttons (finetune, classroom) need no handler of their own."""

    prefix = "flagged"
    styles = {"allow": discord.ButtonStyle.green, "ask": discord.ButtonStyle.blurple}

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        """Only teachers allow; anyone may press Ask (the service lets only the file's owner ask)."""
        return self.action != "allow" or await refuse_unless_teacher(interaction)

    async def clicked(self, interaction: discord.Interaction) -> None:
        """Hand the click to the flagged-files cog (a listener, as approval requests are)."""
        classroom_bot(interaction).dispatch("flagged_click", interaction, self.target, self.action)


def button_view(flagged_id: str, action: str, locale: str) -> discord.ui.View:
    """A view with one Ask or Allow button (any registered FlaggedButton class answers it by its custom id)."""
    view = discord.ui.View(timeout=None)
    view.add_item(FlaggedButton(flagged_id, action, t(f"flagged.{action}", locale)))
    return view


def allow_views(waiting: list[FlaggedFile], locale: str) -> discord.ui.View:
    """Allow buttons for the requests listed in /class settings (when there is no teacher channel)."""
    view = discord.ui.View(timeout=None)
    for flagged in waiting:
        view.add_item(FlaggedButton(flagged.id, "allow",
                                    clip(t("flagged.allow_named", locale, file=flagged.filename), 80)))
    return view


def waiting_field(waiting: list[FlaggedFile], locale: str) -> str:
    """The requests waiting for a teacher, for /class settings."""
    parts = [t("flagged.waiting_line", locale, user=f"<@{f.user_id}>", file=_escape(f.filename))
             + "\n" + lines_text(f, locale) for f in waiting]
    return clip("\n".join(parts), 1024)


def allowed_field(allowed: list[FlaggedFile], locale: str) -> str:
    """The record of files teachers allowed, newest last, for the class report."""
    lines = [t("flagged.report_line", locale, file=_escape(f.filename), user=f"<@{f.user_id}>",
               teacher=f"<@{f.decided_by}>", when=f"<t:{f.decided_at or f.created_at}:d>",
               lines=", ".join(str(x.line) for x in f.lines) or "-") for f in allowed[-10:]]
    if len(allowed) > 10:
        lines.insert(0, t("flagged.report_more", locale, count=len(allowed) - 10))
    return clip("\n".join(lines), 1024)
