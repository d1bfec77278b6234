"""python -m trainer: run the OpenAI-compatible trainer; python -m trainer vllm-lora-modules: print vLLM args."""

from __future__ import annotations

import logging
import os
import socket
import stat
import sys
from pathlib import Path

from aiohttp import web

from trainer.config import Settings, SettingsError, ensure_api_key
from trainer.cpu_share import serving_openmp
from trainer.export import vllm_lora_modules
from trainer.lifeline import die_with_parent
from common.private import PRIVATE_UMASK, narrow_modes
from trainer.server import create_app

SHUTDOWN_SECONDS = 5.0


class ListenError(Exception):
    """The trainer cannot listen where it was told to; the text says where and why, in one line."""


def main(argv: list[str]) -> int:
    """Run the server (or a helper command) with settings from the environment."""
    # Before anything is written: files, adapters, logs and caches, this process's and its workers', are this
    # account's only (a school's computer has other accounts).
    os.umask(PRIVATE_UMASK)
    # Before torch loads OpenMP: how its threads wait between operations (trainer/cpu_share.py).
    serving_openmp(os.environ)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
        if not argv:
            narrow_modes(settings.data_dir)  # a data folder from an older version, or copied in by hand
            settings = ensure_api_key(settings)
    except SettingsError as error:
        print(f"trainer: {error}", file=sys.stderr)
        return 2
    if argv[:1] == ["vllm-lora-modules"]:
        print(vllm_lora_modules(settings))
        return 0
    if argv:
        print("usage: python -m trainer [vllm-lora-modules]", file=sys.stderr)
        return 2
    if settings.exit_with_parent:
        # Started by the bot: a bot killed outright must not leave a trainer holding the port and the device.
        die_with_parent()
    try:
        # Bound here, before the app starts, so that a refusal is one plain line and nothing else listens instead.
        listener = _listen(settings)
    except ListenError as error:
        print(f"trainer: {error}", file=sys.stderr)
        return 2
    # On SIGTERM, replies still streaming get a few seconds, not aiohttp's default minute: a bot or platform
    # restarting the trainer waits on this.
    web.run_app(create_app(settings), sock=listener, print=None, access_log_format='%r %s %b %Tfs',
                shutdown_timeout=SHUTDOWN_SECONDS)
    return 0


def _listen(settings: Settings) -> socket.socket:
    """The listening socket: TRAINER_SOCKET's Unix socket (the bot's child), else TRAINER_HOST:TRAINER_PORT."""
    if settings.socket is not None:
        return _listen_unix(settings.socket)
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    try:
        # SO_REUSEADDR (create_server's default) only passes a closing socket: a program listening on the port,
        # whatever its account, still makes the bind fail, and then the trainer stops rather than share it.
        return socket.create_server((settings.host, settings.port), family=family, backlog=128)
    except OSError as error:
        raise ListenError(f"cannot listen on {settings.host}:{settings.port} ({error.strerror or error}); another "
                          "program may hold that port: stop it or set TRAINER_PORT to a free one") from None


def _listen_unix(path: Path) -> socket.socket:
    folder_mode = path.parent.stat().st_mode if path.parent.exists() else 0
    if not stat.S_ISDIR(folder_mode) or stat.S_IMODE(folder_mode) & 0o077 or path.parent.stat().st_uid != os.getuid():
        # Only a folder nobody else can write in keeps another account from putting its own socket there.
        raise ListenError(f"TRAINER_SOCKET must be in a folder of this account that only it can open ({path.parent})")
    if path.exists() and stat.S_ISSOCK(path.stat().st_mode):
        path.unlink()  # left by a trainer that was killed: ours, as the folder is ours alone
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Bound, not yet listening: aiohttp listens once the app has started, so the bot's wait_listening means ready.
        listener.bind(str(path))
    except OSError as error:
        listener.close()
        raise ListenError(f"cannot listen on TRAINER_SOCKET {path} ({error.strerror or error})") from None
    return listener


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
