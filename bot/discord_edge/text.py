"""Text cut to Discord's limits."""

from __future__ import annotations

# Discord's limits (characters) that the edge clips to.
MESSAGE_CHARS = 2000
EMBED_DESCRIPTION_CHARS = 4096
FIELD_CHARS = 1024
TITLE_CHARS = 256
BUTTON_LABEL_CHARS = 80


def clip(text: str, limit: int, *, one_line: bool = False) -> str:
    """The text, cut with an ellipsis when it is longer than `limit` characters (`one_line`: its white space
    folded to single spaces first, for a line in a list)."""
    if one_line:
        text = " ".join(text.split())
    # The cut drops the spaces before the ellipsis ("word …" would look like a lost word).
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
