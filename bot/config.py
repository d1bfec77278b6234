"""Settings: read once from the environment into one frozen object."""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from common.settings import SettingError, read_number, read_whole

Backend = Literal["compatible", "openai", "trainer"]

DEFAULT_DATABASE_PATH = "./data/classroom.sqlite3"
DEFAULT_BASE_MODEL = "gpt-4o-mini-2024-07-18"
# The fine-tunable snapshots on OpenAI in late 2026 (design.md); FINETUNE_MODELS replaces the list.
DEFAULT_TUNABLE_MODELS = (
    "gpt-4o-mini-2024-07-18",
    "gpt-4o-2024-08-06",
    "gpt-4.1-2025-04-14",
    "gpt-4.1-mini-2025-04-14",
)
DISCORD_API_DEFAULT = "https://discord.com/api/v10"
# Processes for dataset checks and charts: one per core, at most two (each holds ~100 MB: tokenizer, matplotlib).
DEFAULT_WORKER_PROCESSES = min(2, os.cpu_count() or 1)
_API_VERSION = re.compile(r"/api/v\d+/?$")
# The teacher's opt-in to a plain-HTTP backend on another machine (the key then crosses the network readable).
PLAIN_HTTP_OPT_IN = "ALLOW_PLAIN_HTTP_BACKEND"


ConfigError = SettingError  # a bad setting, named (never its value)


@dataclass(frozen=True)
class Settings:
    """Everything the bot is configured with; secrets are kept out of repr()."""

    discord_token: str = field(repr=False)
    openai_api_key: str | None = field(repr=False)
    openai_base_url: str | None
    discord_api_base_url: str | None
    discord_gateway_url: str | None
    database_path: Path
    job_poll_seconds: float
    default_base_model: str | None  # None: OpenAI's default, or a self-hosted backend's first base model
    tunable_models: tuple[str, ...]  # empty: OpenAI's fine-tunable list, or what a self-hosted backend lists
    dev_guild_id: int | None
    max_training_file_bytes: int
    worker_processes: int
    log_level: str
    # The built-in trainer (used when neither OPENAI_BASE_URL nor OPENAI_API_KEY is set); its other TRAINER_*
    # settings reach it through the environment it inherits. It listens on a private Unix socket, not on a port.
    trainer_data_dir: Path = Path("./data/trainer")
    trainer_api_key: str | None = field(default=None, repr=False)
    # A Unix socket through which OPENAI_BASE_URL is reached (a trainer's TRAINER_SOCKET, or an SSH tunnel's end).
    backend_socket: Path | None = None
    prices_file: Path | None = None  # the editable price table; None: dataset_rules/prices.json

    @property
    def backend(self) -> Backend:
        """Which backend the bot speaks to: a configured URL, else OpenAI with a key, else the school's own trainer."""
        return backend_of({"OPENAI_BASE_URL": self.openai_base_url or "", "OPENAI_API_KEY": self.openai_api_key or ""})

    @property
    def free_backend(self) -> bool:
        """True for the school's own trainer that the bot runs: it costs nothing. Any other backend's models cost
        what the price table (PRICES_FILE) says, and a model it has no price for is not used under a cap."""
        return self.backend == "trainer"

    @property
    def self_hosted(self) -> bool:
        """True when the backend is not OpenAI itself (the built-in trainer or another compatible API)."""
        if self.backend == "compatible":
            return "api.openai.com" not in (self.openai_base_url or "")
        return self.backend == "trainer"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the environment, raising ConfigError that names the first bad setting."""
        env = os.environ if env is None else env
        token = env.get("DISCORD_TOKEN", "").strip()
        if not token:
            raise ConfigError("DISCORD_TOKEN", "is required (the bot token from the Discord developer portal)")
        if any(c.isspace() for c in token):
            raise ConfigError("DISCORD_TOKEN", "must not contain spaces")
        base_url = _optional_url(env, "OPENAI_BASE_URL", ("http://", "https://"))
        backend_socket = _backend_socket(env, base_url)
        if base_url is not None and backend_socket is None and not _flag(env, PLAIN_HTTP_OPT_IN):
            _refuse_plain_http_across_network(base_url)
        api_key = env.get("OPENAI_API_KEY", "").strip() or None
        database_path = _data_path(env.get("DATABASE_PATH", "").strip() or DEFAULT_DATABASE_PATH)
        tunable = tuple(m.strip() for m in env.get("FINETUNE_MODELS", "").split(",") if m.strip())
        check = CheckSettings.from_env(env)
        return cls(
            discord_token=token,
            openai_api_key=api_key,
            openai_base_url=base_url,
            discord_api_base_url=_discord_api_base(_optional_url(env, "DISCORD_API_BASE_URL", ("http://", "https://"))),
            discord_gateway_url=_optional_url(env, "DISCORD_GATEWAY_URL", ("ws://", "wss://")),
            database_path=database_path,
            job_poll_seconds=read_number(env, "JOB_POLL_SECONDS", 10.0, low=0.05, high=3600.0),
            default_base_model=check.default_base_model,
            tunable_models=tunable,
            dev_guild_id=_snowflake(env, "DEV_GUILD_ID"),
            max_training_file_bytes=int(read_number(env, "MAX_TRAINING_FILE_MB", 100.0, low=0.001, high=512.0) * 2**20),
            worker_processes=read_whole(env, "WORKER_PROCESSES", DEFAULT_WORKER_PROCESSES, low=0, high=64),
            log_level=_log_level(env),
            # Beside the bot's database unless set: one data folder for the whole school's installation.
            trainer_data_dir=_data_path(env.get("TRAINER_DATA_DIR", "").strip() or str(database_path.parent / "trainer")),
            trainer_api_key=env.get("TRAINER_API_KEY", "").strip() or None,
            backend_socket=backend_socket,
            prices_file=check.prices_file,
        )


@dataclass(frozen=True)
class CheckSettings:
    """The settings a dataset check uses, which `python -m bot check-dataset` reads without a Discord token."""

    default_base_model: str | None
    prices_file: Path | None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CheckSettings:
        """Read DEFAULT_BASE_MODEL and PRICES_FILE, raising ConfigError when the price table is not a file."""
        env = os.environ if env is None else env
        raw = env.get("PRICES_FILE", "").strip()
        prices_file = Path(raw).expanduser().resolve() if raw else None
        if prices_file is not None and not prices_file.is_file():
            raise ConfigError("PRICES_FILE", f"must name the price table's file ({prices_file} is none)")
        return cls(default_base_model=env.get("DEFAULT_BASE_MODEL", "").strip() or None, prices_file=prices_file)


def backend_of(env: Mapping[str, str] | None = None) -> Backend:
    """The backend these settings (None: the environment's) choose, without needing the rest (no Discord token): see
    Settings.backend."""
    env = os.environ if env is None else env
    if env.get("OPENAI_BASE_URL", "").strip():
        return "compatible"
    return "openai" if env.get("OPENAI_API_KEY", "").strip() else "trainer"


def _optional_url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    if not value.startswith(schemes) or len(value) <= len(value.split("//")[0]) + 2:
        raise ConfigError(name, f"must be a URL starting with {' or '.join(schemes)}")
    return value.rstrip("/")


def _data_path(raw: str) -> Path:
    # Absolute at start: paths the bot stores (staged files) and hands to the trainer must not depend on the folder
    # a later start runs from. SQLite's ":memory:" is no path.
    return Path(raw) if raw == ":memory:" else Path(raw).expanduser().resolve()


def _backend_socket(env: Mapping[str, str], base_url: str | None) -> Path | None:
    raw = env.get("BACKEND_SOCKET", "").strip()
    if not raw:
        return None
    if base_url is None:
        raise ConfigError("BACKEND_SOCKET", "needs OPENAI_BASE_URL too (e.g. http://localhost/v1)")
    path = Path(raw).expanduser().resolve()
    try:
        folder = path.parent.stat()
    except OSError:
        raise ConfigError("BACKEND_SOCKET", f"its folder {path.parent} does not exist") from None
    # In a folder another account can write to, that account could put its own socket in the place of the real one.
    if folder.st_uid != os.getuid() or stat.S_IMODE(folder.st_mode) & 0o077:
        raise ConfigError("BACKEND_SOCKET", f"must be in a folder of this account that only it can open "
                                            f"({path.parent}: chmod 700)")
    return path


def _refuse_plain_http_across_network(url: str) -> None:
    """Refuse http:// to another machine: every request carries the key, which anyone on the school's network
    could read; https:// or an SSH tunnel to a loopback address keeps it from them (README)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or _is_loopback(parts.hostname or ""):
        return
    raise ConfigError("OPENAI_BASE_URL", f"is plain http:// to another machine, which would send the key across the "
                                         f"network readable: use https:// or an SSH tunnel (see README), or set "
                                         f"{PLAIN_HTTP_OPT_IN}=1 to accept that")


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ConfigError(name, "must be 1 (yes) or 0 (no)")


def _discord_api_base(url: str | None) -> str | None:
    # Accept both "http://host:port" and "http://host:port/api/v10": discord.py wants the versioned base.
    if url is None:
        return None
    if _API_VERSION.search(url):
        return url
    return url + ("/v10" if url.endswith("/api") else "/api/v10")


def _snowflake(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise ConfigError(name, "must be a Discord server ID (digits only)")
    return int(raw)


def _log_level(env: Mapping[str, str]) -> str:
    level = env.get("LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError("LOG_LEVEL", "must be one of DEBUG, INFO, WARNING, ERROR")
    return level
