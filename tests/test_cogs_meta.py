"""Meta-tests of the command tree: every extension loads, names are unique, every option is described."""

from __future__ import annotations

import importlib

from discord import app_commands

from bot.client import EXTENSIONS
from tests.conftest import Classroom
from support.bot_harness import BotRunner, make_settings


def test_every_extension_has_setup() -> None:
    """Each extension module defines `setup(bot)`."""
    for name in EXTENSIONS:
        assert callable(getattr(importlib.import_module(name), "setup", None)), name


def _walk(commands: list[app_commands.Command | app_commands.Group]) -> list[app_commands.Command]:
    found: list[app_commands.Command] = []
    for command in commands:
        if isinstance(command, app_commands.Group):
            found += _walk(command.commands)
        else:
            found.append(command)
    return found


async def test_commands_unique_and_every_option_described(classroom: Classroom) -> None:
    """Command names are unique and every parameter has a real description (not discord.py's '…')."""
    commands = _walk(classroom.bot.tree.get_commands())
    names = [c.qualified_name for c in commands]
    assert len(names) == len(set(names))
    for command in commands:
        assert command.description and command.description != "…", command.qualified_name
        for parameter in command.parameters:
            assert parameter.description and parameter.description != "…", (command.qualified_name, parameter.name)


async def test_commands_are_synced_once_and_korean_descriptions_sent(classroom: Classroom) -> None:
    """The first start syncs (with Korean descriptions); a restart with the same commands does not sync again."""
    syncs = [r for r in classroom.discord.requests if r.method == "PUT" and "/commands" in r.path]
    assert len(syncs) == 1
    await classroom.restart()
    syncs = [r for r in classroom.discord.requests if r.method == "PUT" and "/commands" in r.path]
    assert len(syncs) == 1
    finetune = next(c for c in classroom.discord.global_commands if c["name"] == "finetune")
    assert "파인튜닝" in finetune["description_localizations"]["ko"]


async def test_failed_sync_still_starts_and_retries_next_start(fake_discord, fake_openai, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A command sync that Discord refuses does not stop the bot; the next start syncs again."""
    fake_discord.add_guild("Class 1")
    runner = BotRunner(make_settings(fake_discord, fake_openai, tmp_path), fake_discord)
    fake_discord.fail_next("PUT", r"/applications/\d+/commands", status=503)
    await runner.start()
    assert fake_discord.global_commands == []
    await runner.stop()
    await runner.start()
    assert any(c["name"] == "finetune" for c in fake_discord.global_commands)
    await runner.stop()


def test_readme_command_table_names_the_registered_options() -> None:
    """Every option the README's command table shows is an option the bot registers under that name."""
    import re
    from pathlib import Path

    from discord import app_commands

    from bot.client import EXTENSIONS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text("utf-8")
    rows = re.findall(r"^\| `/([^`]+)` \|", readme, flags=re.MULTILINE)
    assert rows, "the README's command table was not found"
    registered: dict[str, set[str]] = {}
    for module in EXTENSIONS:
        cog_module = __import__(module, fromlist=["*"])
        for value in vars(cog_module).values():
            if isinstance(value, type):
                for attribute in vars(value).values():
                    if isinstance(attribute, app_commands.Group):
                        for command in attribute.walk_commands():
                            if isinstance(command, app_commands.Command):  # subgroups (/class words) have none
                                registered[command.qualified_name] = {p.name for p in command.parameters}
                    elif isinstance(attribute, app_commands.Command):
                        registered[attribute.qualified_name] = {p.name for p in attribute.parameters}
    for row in rows:
        words = [word.strip("[]") for word in re.split(r"[\s|\\]+", row) if word.strip("[]")]
        name = next((" ".join(words[:n]) for n in (3, 2) if " ".join(words[:n]) in registered), words[0])
        shown = set(words[len(name.split()):])
        shown = {word for word in shown if word not in {"on", "off", "auto"}}
        assert name in registered, f"/{name} is in the README but not registered"
        assert shown <= registered[name], f"/{name}: README shows {sorted(shown - registered[name])}"
