"""Logs never hold what students wrote, even with LOG_LEVEL=DEBUG (the README promises it)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from bot.__main__ import STUDENT_TEXT_LOGGERS, floor_student_text_loggers
from tests.conftest import Classroom
from tests.test_chat_journey import open_chat, say_and_wait


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def debug_log() -> Iterator[_Collect]:
    """Everything logged at DEBUG, as `python -m bot` configures it for LOG_LEVEL=DEBUG; levels restored after."""
    root = logging.getLogger()
    saved = {name: logging.getLogger(name).level for name in ("", *STUDENT_TEXT_LOGGERS)}
    handler = _Collect()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    floor_student_text_loggers("DEBUG")
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


async def test_debug_log_never_holds_students_text(classroom: Classroom, debug_log: _Collect) -> None:
    """A chat message, the system prompt and the reply (which echoes the message) never reach a DEBUG log."""
    planted, prompt = "my secret diary sentence 7781", "system words only the class sees 4417"
    thread = await open_chat(classroom, system_prompt=prompt)
    await say_and_wait(classroom, thread, planted, "reply to:")
    text = "\n".join(debug_log.lines)
    assert debug_log.lines  # the run really logged
    assert planted not in text and prompt not in text, "students' text reached the DEBUG log"
