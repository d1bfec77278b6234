"""Settings and caches that another account on the school's computer could have turned against the class (issue 24):
a plain-HTTP backend across the network, relative data paths, and tiktoken's cache in a shared temp folder."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bot.config import ConfigError, Settings
from dataset_rules import tokens

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("url", ["http://10.0.0.5:8400/v1", "http://trainer.school.lan/v1", "http://[fd00::1]:8400/v1",
                                 "http://0.0.0.0:8400/v1"])
def test_plain_http_backend_on_another_machine_is_refused_naming_the_setting(url: str) -> None:
    """http:// to another machine would send the key readable across the network: refused, naming the setting."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"DISCORD_TOKEN": "x", "OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-secret-value"})
    assert caught.value.setting == "OPENAI_BASE_URL" and "ALLOW_PLAIN_HTTP_BACKEND" in str(caught.value)
    assert "sk-secret-value" not in str(caught.value)


@pytest.mark.parametrize("url", ["https://trainer.school.lan/v1", "http://127.0.0.1:8400/v1", "http://localhost:8400/v1",
                                 "http://[::1]:8400/v1", "http://127.0.0.2:9000/v1"])
def test_tls_or_loopback_backend_is_accepted(url: str) -> None:
    """https:// anywhere, and http:// to this machine itself (an SSH tunnel's end), need no opt-in."""
    assert Settings.from_env({"DISCORD_TOKEN": "x", "OPENAI_BASE_URL": url}).openai_base_url == url.rstrip("/")


def test_teacher_can_opt_in_to_plain_http_across_the_network() -> None:
    """ALLOW_PLAIN_HTTP_BACKEND=1 accepts http:// to another machine; a value that is no yes/no names the setting."""
    env = {"DISCORD_TOKEN": "x", "OPENAI_BASE_URL": "http://10.0.0.5:8400/v1"}
    assert Settings.from_env({**env, "ALLOW_PLAIN_HTTP_BACKEND": "1"}).backend == "compatible"
    with pytest.raises(ConfigError, match="ALLOW_PLAIN_HTTP_BACKEND"):
        Settings.from_env({**env, "ALLOW_PLAIN_HTTP_BACKEND": "maybe"})


def test_python_m_bot_with_plain_http_backend_exits_with_one_line(tmp_path: Path) -> None:
    """The bot does not start: exit 2 and one line that names OPENAI_BASE_URL, without the key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "OPENAI_", "ALLOW_"))}
    env.update({"PYTHONPATH": str(ROOT), "DISCORD_TOKEN": "fake.token", "OPENAI_API_KEY": "sk-secret-value",
                "OPENAI_BASE_URL": "http://192.0.2.7:8400/v1", "DATABASE_PATH": str(tmp_path / "bot.db")})
    result = subprocess.run([sys.executable, "-m", "bot"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "OPENAI_BASE_URL" in lines[0] and "sk-secret-value" not in result.stderr
    assert not (tmp_path / "bot.db").exists()


def test_relative_data_paths_are_made_absolute_where_the_bot_starts(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """DATABASE_PATH and TRAINER_DATA_DIR given relative name folders under the start folder, for good: a later
    change of folder (or a trainer started from elsewhere) reads the same files."""
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({"DISCORD_TOKEN": "x", "DATABASE_PATH": "class/bot.sqlite3",
                                  "TRAINER_DATA_DIR": "class/../class/trainer"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert settings.database_path == tmp_path / "class" / "bot.sqlite3"
    assert settings.trainer_data_dir == tmp_path / "class" / "trainer"
    assert Settings.from_env({"DISCORD_TOKEN": "x", "DATABASE_PATH": ":memory:"}).database_path == Path(":memory:")


def test_trainer_child_gets_an_absolute_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default, ./data/trainer beside ./data/classroom.sqlite3, reaches the trainer as an absolute path."""
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env({"DISCORD_TOKEN": "x"}).trainer_data_dir == tmp_path / "data" / "trainer"


def test_encoding_install_never_writes_through_a_planted_link(tmp_path: Path) -> None:
    """Another account guessed the temporary file's name (it was <sha1>.<pid>.tmp) and planted a link there: the
    install writes a new file of its own instead, leaving the link's target untouched; the folder is 0700."""
    url, sha256 = tokens.ENCODING_FILES["cl100k_base"]
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)  # a folder others could write in, as a shared temp folder is
    victim = tmp_path / "victim"
    victim.write_text("the teacher's file")
    name = hashlib.sha1(url.encode()).hexdigest()
    (cache / f"{name}.{os.getpid()}.tmp").symlink_to(victim)
    tokens._install_encoding_file("cl100k_base", cache)
    assert victim.read_text() == "the teacher's file"
    assert hashlib.sha256((cache / name).read_bytes()).hexdigest() == sha256
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE((cache / name).stat().st_mode) == 0o600


def test_unwritable_cache_falls_back_to_a_new_private_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A cache folder that cannot be made: the encoding is installed in a fresh 0700 temp folder, never in a shared
    folder with a known name that another account could have made first."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setattr(tokens, "_encodings", {})
    tokens.use_cache_dir(blocker / "tiktoken")
    caplog.set_level(logging.WARNING, logger="dataset_rules.tokens")
    try:
        encoding = tokens.get_encoding("cl100k_base")
    finally:
        tokens.use_cache_dir(None)
    assert encoding.encode("hello") == [15339]
    used = Path(caplog.records[-1].getMessage().rsplit(" into ", 1)[1])
    assert used.parent == Path(tempfile.gettempdir()) and used.name.startswith("classroom-bot-tiktoken-")
    try:
        assert used.name != "classroom-bot-tiktoken" and stat.S_IMODE(used.stat().st_mode) == 0o700
    finally:
        shutil.rmtree(used, ignore_errors=True)


def test_backend_socket_must_sit_in_a_folder_only_this_account_opens(tmp_path: Path) -> None:
    """BACKEND_SOCKET in a folder others can write to is refused (they could put their own socket there); in a 0700
    folder it is taken, and then no plain-HTTP refusal applies (nothing crosses the network)."""
    env = {"DISCORD_TOKEN": "x", "OPENAI_BASE_URL": "http://trainer.school.lan/v1"}
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(ConfigError, match="BACKEND_SOCKET"):
        Settings.from_env({**env, "BACKEND_SOCKET": str(shared / "trainer.sock")})
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    settings = Settings.from_env({**env, "BACKEND_SOCKET": str(private / "trainer.sock")})
    assert settings.backend_socket == private / "trainer.sock"
    with pytest.raises(ConfigError, match="BACKEND_SOCKET"):
        Settings.from_env({"DISCORD_TOKEN": "x", "BACKEND_SOCKET": str(private / "trainer.sock")})
