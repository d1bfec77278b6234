"""The bot's supervisor keeps reading the trainer's output whatever its lines look like (issue 24): a line longer
than asyncio's 64 KiB readline limit once stopped the reading for good, and the trainer then blocked on its full pipe.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from bot.trainer_process import MAX_LOG_LINE_CHARS, TrainerProcess

# A child that logs as the trainer does, with one 200 KiB line in the middle, then a megabyte more: far more than a
# pipe holds, so it only gets to its last line if the bot keeps reading.
CHILD = """
import sys, time
print("2026-12-03 09:30:00,123 INFO trainer.server: first line", flush=True)
print("x" * (200 * 1024), flush=True)
for i in range(2000):
    print(f"2026-12-03 09:30:01,000 INFO trainer.worker: still logging {i} " + "y" * 500, flush=True)
print("2026-12-03 09:30:02,000 WARNING trainer.worker: last line", flush=True)
time.sleep(60)
"""


async def test_supervisor_keeps_reading_after_a_200_kib_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A 200 KiB line is logged cut short, and every line after it still reaches the bot's log."""
    caplog.set_level("INFO", logger="bot.trainer_process")
    child = TrainerProcess(data_dir=tmp_path / "trainer", api_key="k" * 32, command=[sys.executable, "-c", CHILD])
    await child.start()
    try:
        async with asyncio.timeout(60):
            while "last line" not in caplog.text:
                await asyncio.sleep(0.05)
    finally:
        await child.stop()
    long_lines = [r.getMessage() for r in caplog.records if "xxxx" in r.getMessage()]
    assert len(long_lines) == 1 and len(long_lines[0]) < MAX_LOG_LINE_CHARS + 100
    assert "[line cut" in long_lines[0]
    assert "still logging 1999" in caplog.text
    last = next(r for r in caplog.records if "last line" in r.getMessage())
    assert last.levelname == "WARNING" and last.getMessage() == "[trainer] trainer.worker: last line"


async def test_supervisor_logs_a_line_split_across_reads_whole(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """Lines are reassembled across the pieces the output is read in: none is cut in two."""
    caplog.set_level("INFO", logger="bot.trainer_process")
    script = "import sys\nfor i in range(300):\n    sys.stdout.write(f'line {i} ' + 'z' * 997 + '\\n')\n"
    child = TrainerProcess(data_dir=tmp_path / "trainer", api_key="k" * 32, command=[sys.executable, "-c", script])
    await child.start()
    try:
        async with asyncio.timeout(60):
            while "line 299 " not in caplog.text:
                await asyncio.sleep(0.05)
    finally:
        await child.stop()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[trainer] line ")]
    assert len(lines) == 300 and all(len(line) == len("[trainer] line ") + len(str(i)) + 1 + 997
                                     for i, line in enumerate(lines))
