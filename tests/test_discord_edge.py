"""The Discord edge written once: clipping, durable buttons rebuilt from their ids, the error tree's words."""

from __future__ import annotations

import logging
import re
from unittest.mock import AsyncMock, MagicMock

import discord
import pytest
from discord import app_commands

from bot.discord_edge.buttons import ActionButton
from bot.discord_edge.replies import ClickError, ErrorTree, as_app_error, unexpected
from bot.discord_edge.text import clip
from bot.errors import UserFacingError
from cogs._classroom_ui import ApprovalButton
from cogs._flagged_ui import FlaggedButton
from cogs._lesson_ui import LessonNextButton
from cogs.finetune import StartButton


def test_clip_short_text_is_unchanged() -> None:
    """Text within the limit comes back as it is."""
    assert clip("hello", 5) == "hello"


def test_clip_long_text_ends_in_an_ellipsis_within_the_limit() -> None:
    """A cut text is exactly the limit long, ends in "…" and drops the spaces before it."""
    assert clip("one two three", 9) == "one two…" and len(clip("x" * 50, 10)) == 10


def test_clip_one_line_folds_white_space_first() -> None:
    """A line in a list shows a student's newlines and runs of spaces as single spaces."""
    assert clip("a\n\n  b", 80, one_line=True) == "a b"


@pytest.mark.parametrize(("button", "custom_id"), [
    (StartButton("ab12", "start"), "start:ab12:start"),
    (ApprovalButton("cd34", "reject"), "approval:cd34:reject"),
    (FlaggedButton("ef56", "allow"), "flagged:ef56:allow"),
    (LessonNextButton("pirate-en", 2, 42), "lesson-next:pirate-en:2:42"),
])
async def test_durable_button_is_rebuilt_from_its_custom_id(button: discord.ui.DynamicItem[discord.ui.Button[object]],
                                                            custom_id: str) -> None:
    """After a restart a click brings only the id: the button rebuilt from it is the button that was posted."""
    assert button.item.custom_id == custom_id
    match = re.fullmatch(type(button).__discord_ui_compiled_template__, custom_id)
    assert match is not None
    rebuilt = await type(button).from_custom_id(MagicMock(), button.item, match)
    assert rebuilt.item.custom_id == custom_id and rebuilt.item.style == button.item.style


def test_action_button_colour_follows_the_action() -> None:
    """Start is green and Cancel grey; Approve green and Reject red."""
    assert StartButton("a1", "start").item.style == discord.ButtonStyle.green
    assert StartButton("a1", "cancel").item.style == discord.ButtonStyle.grey
    assert ApprovalButton("a1", "reject").item.style == discord.ButtonStyle.red


async def test_bound_button_hands_its_click_to_the_handler() -> None:
    """A cog binds a handler per instance: the click arrives with the id and the action, not global state."""
    handler = AsyncMock()
    bound = StartButton.bound(handler)
    assert issubclass(bound, ActionButton) and bound.__discord_ui_compiled_template__.pattern.startswith("start:")
    interaction = MagicMock()
    await bound("ab12", "cancel").callback(interaction)
    handler.assert_awaited_once_with(interaction, "ab12", "cancel")


async def test_button_failure_answers_with_a_reference_never_the_error() -> None:
    """A click that fails unexpectedly gets the reference to quote, never the exception's text."""
    async def broken(interaction: discord.Interaction, target: str, action: str) -> None:
        raise RuntimeError("secret internals")

    interaction = MagicMock()
    interaction.locale = "en-US"
    interaction.response.is_done.return_value = False
    interaction.response.send_message = AsyncMock()
    await StartButton.bound(broken)("ab12", "start").callback(interaction)
    text = interaction.response.send_message.await_args.args[0]
    assert "secret" not in text and re.search(r"[0-9a-f]{6}", text)


def test_unexpected_logs_the_same_reference_the_user_sees(caplog: pytest.LogCaptureFixture) -> None:
    """The reference in the user's words is the one in the log line, so a teacher's report finds the trace."""
    with caplog.at_level(logging.ERROR):
        text = unexpected("en", logging.getLogger("test"), "Thing %s failed", "x", exc_info=False)
    ref = re.search(r"[0-9a-f]{6}", text)
    assert ref is not None and ref.group(0) in caplog.text and "Thing x failed" in caplog.text


def test_as_app_error_keeps_the_original_for_the_tree() -> None:
    """A view's or form's error reaches the tree with its cause as `original`, as a command's would."""
    cause = UserFacingError("error.generic")
    wrapped = as_app_error(cause)
    assert isinstance(wrapped, ClickError) and wrapped.original is cause
    already = app_commands.CheckFailure()
    assert as_app_error(already) is already


async def test_error_tree_shows_a_user_facing_error_in_its_own_words() -> None:
    """The tree answers a UserFacingError with its catalog text, privately."""
    interaction = MagicMock()
    interaction.locale = "en-US"
    interaction.response.is_done.return_value = False
    interaction.response.send_message = AsyncMock()
    tree = ErrorTree.__new__(ErrorTree)  # its handler needs no client
    await tree.on_error(interaction, as_app_error(UserFacingError("error.generic")))
    args, kwargs = interaction.response.send_message.await_args
    assert args[0] == "That didn't work. Please try again." and kwargs == {"ephemeral": True}
