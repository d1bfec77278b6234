"""`python -m bot` runs the bot; `python -m bot check-dataset FILE` checks a training file."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from dotenv import load_dotenv

if TYPE_CHECKING:
    from bot.config import Settings


def main(argv: list[str]) -> int:
    """Entry point: the dataset check needs no Discord token; the bot reads its settings first."""
    load_dotenv()  # settings already in the environment win (python-dotenv's default)
    if argv and argv[0] == "check-dataset":
        from bot.cli import main as cli_main

        return cli_main(argv)
    if argv and argv[0] == "backend":
        # For scripts/run-bot.sh: which backend these settings choose, so it installs the trainer only when needed.
        from bot.config import backend_of

        print(backend_of())
        return 0
    if argv and argv[0] in {"-h", "--help"}:
        print(__doc__)
        print("Settings: see .env.example and README.md.")
        return 0
    if argv:
        print(f"Unknown command {argv[0]!r}. Use `python -m bot` or `python -m bot check-dataset FILE`.", file=sys.stderr)
        return 2

    from bot.config import ConfigError, Settings
    from common.private import PRIVATE_UMASK

    # Before anything is written: what the bot, its worker processes and the trainer it starts create is for this
    # account only (the school's computer has other accounts: teachers, lab logins, services).
    os.umask(PRIVATE_UMASK)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level)
    try:
        return asyncio.run(_run(settings))
    except KeyboardInterrupt:
        return 0


async def _run(settings: Settings) -> int:
    import discord

    from bot.client import ClassroomBot
    from bot.trainer_process import TrainerStartError

    bot = ClassroomBot(settings)
    loop = asyncio.get_running_loop()
    closing: list[asyncio.Task[None]] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        # A platform restart (SIGTERM) closes the bot cleanly: the database, the backend client, the workers.
        loop.add_signal_handler(signum, lambda: closing.append(asyncio.create_task(bot.close())))
    try:
        async with bot:
            await bot.start(bot.settings.discord_token)
    except discord.LoginFailure:
        logging.getLogger("bot").error("Discord refused the bot token: check DISCORD_TOKEN")
        return 1
    except TrainerStartError as exc:
        print(f"The school's trainer could not start: {exc}", file=sys.stderr)
        return 2
    return 0


# Libraries whose DEBUG lines carry what students wrote: discord.py's gateway payloads, aiosqlite's SQL parameters,
# the openai SDK's request bodies. Whatever LOG_LEVEL says, they log from INFO up (README: no student text in logs).
STUDENT_TEXT_LOGGERS = ("discord", "aiosqlite", "openai", "httpcore", "httpcore2")


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    floor_student_text_loggers(level)
    for noisy in ("httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def floor_student_text_loggers(level: str) -> None:
    """Keep the loggers that could write students' text at INFO or above, whatever LOG_LEVEL asks for."""
    for name in STUDENT_TEXT_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLevelName(level)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
