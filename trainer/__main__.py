"""python -m trainer: run the OpenAI-compatible trainer; python -m trainer vllm-lora-modules: print vLLM args."""

from __future__ import annotations

import logging
import os
import sys

from aiohttp import web

from trainer.config import Settings, SettingsError, ensure_api_key


SHUTDOWN_SECONDS = 5.0


def main(argv: list[str]) -> int:
    """Run the server (or a helper command) with settings from the environment."""
    # Before torch loads OpenMP (workers inherit it): on a CPU shared by training, chat and other programs,
    # spinning OpenMP threads made a SmolLM2 step 4-8x slower in our measurements; passive waiting does not.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
        if not argv:
            settings = ensure_api_key(settings)
    except SettingsError as error:
        print(f"trainer: {error}", file=sys.stderr)
        return 2
    if argv[:1] == ["vllm-lora-modules"]:
        from trainer.export import vllm_lora_modules

        print(vllm_lora_modules(settings))
        return 0
    if argv:
        print("usage: python -m trainer [vllm-lora-modules]", file=sys.stderr)
        return 2
    if os.environ.get("TRAINER_EXIT_WITH_PARENT") == "1":
        # Started by the bot: a bot killed outright must not leave a trainer holding the port and the device.
        from trainer.worker import die_with_parent

        die_with_parent()
    from trainer.server import create_app

    # On SIGTERM, replies still streaming get a few seconds, not aiohttp's default minute: a bot or platform
    # restarting the trainer waits on this.
    web.run_app(create_app(settings), host=settings.host, port=settings.port, print=None,
                access_log_format='%r %s %b %Tfs', shutdown_timeout=SHUTDOWN_SECONDS)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
