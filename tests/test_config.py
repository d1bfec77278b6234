"""Settings: read from the environment, one line naming a missing or malformed setting, secrets out of repr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parents[1]
BASE = {"DISCORD_TOKEN": "abc.def.ghi", "OPENAI_API_KEY": "sk-secret-value"}


def test_settings_with_defaults_reads_token_and_key() -> None:
    """The two required settings are enough; the rest has sensible defaults."""
    settings = Settings.from_env(BASE)
    assert settings.job_poll_seconds == 10.0
    assert settings.database_path == Path("./data/classroom.sqlite3").resolve()  # absolute from the start folder
    assert settings.tunable_models == ()  # the service falls back to OpenAI's list or the backend's
    assert settings.default_base_model is None


def test_settings_repr_hides_secrets() -> None:
    """Neither the Discord token nor the API key appears in repr()."""
    text = repr(Settings.from_env(BASE))
    assert "abc.def.ghi" not in text and "sk-secret-value" not in text


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({}, "DISCORD_TOKEN"),
        ({**BASE, "JOB_POLL_SECONDS": "soon"}, "JOB_POLL_SECONDS"),
        ({**BASE, "JOB_POLL_SECONDS": "-1"}, "JOB_POLL_SECONDS"),
        ({**BASE, "OPENAI_BASE_URL": "localhost:8400"}, "OPENAI_BASE_URL"),
        ({**BASE, "DISCORD_GATEWAY_URL": "http://x"}, "DISCORD_GATEWAY_URL"),
        ({**BASE, "DEV_GUILD_ID": "my server"}, "DEV_GUILD_ID"),
        ({**BASE, "LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({**BASE, "MAX_TRAINING_FILE_MB": "0"}, "MAX_TRAINING_FILE_MB"),
    ],
)
def test_settings_bad_value_names_the_setting(env: dict[str, str], setting: str) -> None:
    """Each missing or malformed setting raises an error naming exactly that setting."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.setting == setting
    assert str(caught.value).startswith(setting)


@pytest.mark.parametrize(
    ("env", "backend", "self_hosted"),
    [
        ({"DISCORD_TOKEN": "x"}, "trainer", True),
        ({"DISCORD_TOKEN": "x", "OPENAI_API_KEY": "sk-k"}, "openai", False),
        ({"DISCORD_TOKEN": "x", "OPENAI_BASE_URL": "https://10.0.0.5:8400/v1"}, "compatible", True),
        ({"DISCORD_TOKEN": "x", "OPENAI_BASE_URL": "https://h/v1", "OPENAI_API_KEY": "k"}, "compatible", True),
        ({"DISCORD_TOKEN": "x", "OPENAI_BASE_URL": "https://api.openai.com/v1", "OPENAI_API_KEY": "k"}, "compatible",
         False),
    ],
)
def test_settings_backend_follows_what_is_configured(env: dict[str, str], backend: str, self_hosted: bool) -> None:
    """OPENAI_BASE_URL: that server; else OPENAI_API_KEY: OpenAI; else the school's own trainer, no setting needed."""
    settings = Settings.from_env(env)
    assert (settings.backend, settings.self_hosted) == (backend, self_hosted)


def test_settings_trainer_data_sits_beside_the_database() -> None:
    """The built-in trainer keeps its files next to the bot's database unless TRAINER_DATA_DIR says otherwise."""
    settings = Settings.from_env({"DISCORD_TOKEN": "x", "DATABASE_PATH": "/srv/class/bot.sqlite3"})
    assert settings.trainer_data_dir == Path("/srv/class/trainer")
    moved = Settings.from_env({"DISCORD_TOKEN": "x", "TRAINER_DATA_DIR": "/data/t",
                               "TRAINER_API_KEY": "school-key-0123456789"})
    assert moved.trainer_data_dir == Path("/data/t")
    assert "school-key-0123456789" not in repr(moved)


def test_settings_self_hosted_needs_no_key() -> None:
    """A self-hosted trainer URL stands in for the API key."""
    settings = Settings.from_env({"DISCORD_TOKEN": "x", "OPENAI_BASE_URL": "http://127.0.0.1:8400/v1/"})
    assert settings.openai_api_key is None
    assert settings.openai_base_url == "http://127.0.0.1:8400/v1"
    assert settings.self_hosted


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000/api/v10"),
        ("http://127.0.0.1:9000/api", "http://127.0.0.1:9000/api/v10"),
        ("http://127.0.0.1:9000/api/v10/", "http://127.0.0.1:9000/api/v10"),
        ("https://example.test/api/v9", "https://example.test/api/v9"),
    ],
)
def test_settings_discord_api_base_gets_a_version(given: str, expected: str) -> None:
    """A bare Discord-compatible host gets discord.py's /api/v10 path."""
    assert Settings.from_env({**BASE, "DISCORD_API_BASE_URL": given}).discord_api_base_url == expected


def test_python_m_bot_without_token_exits_with_one_line(tmp_path: Path) -> None:
    """`python -m bot` with no token exits non-zero printing one line that names DISCORD_TOKEN."""
    env = {k: v for k, v in os.environ.items() if k not in {"DISCORD_TOKEN", "OPENAI_API_KEY", "OPENAI_BASE_URL"}}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-m", "bot"], check=False, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "DISCORD_TOKEN" in lines[0]
