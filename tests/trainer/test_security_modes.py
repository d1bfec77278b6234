"""Everything the trainer keeps is its account's only (issue 24): uploaded training files, its database (+ -wal,
-shm), adapters and checkpoints, job logs, the key file and the GGUF caches, in folders of mode 0700.

The trainer runs here as a real process started with the test's umask (usually 022): what it writes is private
because `python -m trainer` sets umask 077 itself, which its workers and file checks inherit. A folder an older
version left wider is narrowed at start, with a line in the log."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.trainer_harness import TrainerProcess, chat_file
from tests.trainer.test_journey import client, upload, wait_for
from trainer.config import TOKENIZER_CACHE, WEIGHTS_CACHE


def mode(path: Path) -> int:
    """The permission bits of a path (not following a link)."""
    return stat.S_IMODE(os.lstat(path).st_mode)


def wider_than_owner(root: Path) -> dict[str, str]:
    """Every folder and file under root that another account could open, with its mode."""
    found = {}
    for folder, _, files in os.walk(root):
        for path in [Path(folder), *(Path(folder) / name for name in files)]:
            if not path.is_symlink() and mode(path) & 0o077:
                found[str(path.relative_to(root))] = oct(mode(path))
    return found


@pytest.fixture(scope="module")
def old_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder as an older version left it: 0755 folders, a 0644 GGUF cache and a 0644 job log."""
    data = tmp_path_factory.mktemp("old-trainer") / "data"
    for name, content in ((f"{WEIGHTS_CACHE}/abc/model.safetensors", b"weights"),
                          (f"{TOKENIZER_CACHE}/abc/tokenizer.json", b"{}"), ("logs/ftjob-old.log", b"an old job's log\n")):
        path = data / name
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        path.write_bytes(content)
        path.chmod(0o644)
    for folder in (data, *[p for p in data.rglob("*") if p.is_dir()]):
        folder.chmod(0o755)
    return data


@pytest.fixture(scope="module")
def trained(old_data: Path, tiny_model: Path) -> Iterator[tuple[TrainerProcess, str]]:
    """The trainer on the old data folder, after one finished two-epoch job (so a checkpoint too)."""
    import asyncio

    server = TrainerProcess(old_data, tiny_model).start()

    async def run_job() -> str:
        api = client(server)
        training = await upload(api, chat_file(10))
        job = await api.fine_tuning.jobs.create(model="tiny", training_file=training, method={
            "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 5}}})
        done = await wait_for(api, job.id, {"succeeded", "failed", "cancelled"}, timeout=240)
        assert done.status == "succeeded", done.error  # type: ignore[attr-defined]
        return job.id

    try:
        yield server, asyncio.run(run_job())
    finally:
        server.stop()


def _kinds(data: Path, job_id: str) -> dict[str, Path]:
    checkpoint = next((data / "adapters" / job_id).glob("ckpt-step-*"))
    return {
        "key file": data / "api_key", "database": data / "trainer.db", "database -wal": data / "trainer.db-wal",
        "database -shm": data / "trainer.db-shm", "uploaded training file": next((data / "files").iterdir()),
        # A succeeded job's checkpoints keep their adapters (their resume state is dropped: job_records.forget_resume_states).
        "checkpoint adapter": checkpoint / "adapter_model.safetensors",
        "final adapter": data / "adapters" / job_id / "final",
        "training worker log": data / "logs" / "worker-cpu.log", "GGUF weights cache": data / WEIGHTS_CACHE / "abc",
        "GGUF tokenizer cache": data / TOKENIZER_CACHE / "abc",
    }


@pytest.mark.timeout(300)
def test_every_kind_of_trainer_file_is_owner_only(trained: tuple[TrainerProcess, str]) -> None:
    """Each kind of file the trainer keeps exists and is 0600 (folders 0700); nothing under it is wider."""
    server, job_id = trained
    for kind, path in _kinds(server.data_dir, job_id).items():
        assert path.exists(), kind
        assert mode(path) == (0o700 if path.is_dir() else 0o600), (kind, oct(mode(path)))
    assert wider_than_owner(server.data_dir) == {}


@pytest.mark.timeout(300)
def test_older_wider_modes_are_narrowed_at_start_with_a_log_line(trained: tuple[TrainerProcess, str]) -> None:
    """What an older version left 0644/0755 (a job log, the GGUF caches) is owner-only now, and the log says so."""
    server, _ = trained
    assert mode(server.data_dir / "logs" / "ftjob-old.log") == 0o600
    assert mode(server.data_dir / WEIGHTS_CACHE / "abc" / "model.safetensors") == 0o600
    assert "readable by this account only" in server.log()
