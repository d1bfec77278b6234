"""The trainer answers only its own clients: a key always (generated when none is set), its own host names, no
foreign web page, JSON bodies only where JSON is expected. Raw HTTP: browsers and scripts do not use the SDK."""

from __future__ import annotations

import json
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from support.trainer_harness import TrainerProcess
from trainer.config import Settings, SettingsError, ensure_api_key


def _request(server: TrainerProcess, method: str, path: str, *, key: str | None = "own", body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    sent = dict(headers or {})
    if key is not None:
        sent["Authorization"] = f"Bearer {server.key if key == 'own' else key}"
    request = urllib.request.Request(f"{server.base_url}{path}", data=body, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_trainer_without_key_setting_generates_one_readable_by_owner_only(trainer_server: TrainerProcess) -> None:
    """With no TRAINER_API_KEY the trainer made a key at first start, in its data folder, mode 0600."""
    path = trainer_server.data_dir / "api_key"
    assert "TRAINER_API_KEY" not in trainer_server.env
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(trainer_server.key) >= 32


def test_request_without_key_is_refused(trainer_server: TrainerProcess) -> None:
    """No key, no answer: 401 in OpenAI's envelope, on every route (a local process cannot train or chat)."""
    for method, path in (("GET", "/models"), ("GET", "/files"), ("POST", "/chat/completions")):
        status, body = _request(trainer_server, method, path, key=None, body=b"{}" if method == "POST" else None,
                                headers={"Content-Type": "application/json"})
        assert status == 401 and body["error"]["code"] == "invalid_api_key"  # type: ignore[index]


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8400", "localhost.attacker.example"])
def test_foreign_host_name_is_refused(trainer_server: TrainerProcess, host: str) -> None:
    """DNS rebinding: a page whose name points at this machine sends its own name as Host, and is refused."""
    status, body = _request(trainer_server, "GET", "/models", headers={"Host": host})
    assert status == 421 and body["error"]["code"] == "invalid_host"  # type: ignore[index]


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "localhost"])
def test_own_host_names_are_served(trainer_server: TrainerProcess, host: str) -> None:
    """Clients on this machine, by address or by name, are answered."""
    status, _ = _request(trainer_server, "GET", "/models", headers={"Host": host.format(port=trainer_server.port)})
    assert status == 200


def test_cross_site_plain_text_post_is_refused(trainer_server: TrainerProcess) -> None:
    """A web page's form-like text/plain POST (no preflight) from another origin never reaches a route."""
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}).encode()
    status, answer = _request(trainer_server, "POST", "/chat/completions", body=body,
                              headers={"Content-Type": "text/plain", "Origin": "https://attacker.example"})
    assert status == 403 and answer["error"]["code"] == "invalid_origin"  # type: ignore[index]


def test_plain_text_body_on_json_route_is_refused(trainer_server: TrainerProcess) -> None:
    """Even with the key and no Origin, a JSON route takes only application/json bodies."""
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}).encode()
    status, answer = _request(trainer_server, "POST", "/chat/completions", body=body,
                              headers={"Content-Type": "text/plain"})
    assert status == 415 and answer["error"]["code"] == "unsupported_media_type"  # type: ignore[index]


def test_generated_key_is_reused_and_widened_file_is_narrowed(tmp_path: Path) -> None:
    """A second start reads the same key; a key file someone made world-readable is made owner-only again."""
    first = ensure_api_key(Settings.from_env({"TRAINER_DATA_DIR": str(tmp_path)}))
    (tmp_path / "api_key").chmod(0o644)
    second = ensure_api_key(Settings.from_env({"TRAINER_DATA_DIR": str(tmp_path)}))
    assert first.api_key == second.api_key and first.api_key is not None
    assert stat.S_IMODE((tmp_path / "api_key").stat().st_mode) == 0o600
    assert first.api_key not in repr(first)


def test_configured_key_is_used_as_is_and_writes_no_file(tmp_path: Path) -> None:
    """TRAINER_API_KEY set: that key, and nothing written to the data folder."""
    settings = ensure_api_key(Settings.from_env({"TRAINER_DATA_DIR": str(tmp_path),
                                                 "TRAINER_API_KEY": "a-key-of-the-school-0123"}))
    assert settings.api_key == "a-key-of-the-school-0123" and not (tmp_path / "api_key").exists()


def test_short_configured_key_names_the_setting() -> None:
    """A guessable key is refused at start, naming the setting (never showing the value)."""
    with pytest.raises(SettingsError, match="TRAINER_API_KEY") as caught:
        Settings.from_env({"TRAINER_API_KEY": "abc"})
    assert "abc" not in str(caught.value)
