"""The trainer's data folder is one absolute place, whatever folder it is started from (issue 24): a relative
TRAINER_DATA_DIR was kept relative, so the paths stored in its database named other files after a start elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import Settings
from trainer.store import Store


def test_relative_data_dir_is_resolved_where_the_trainer_starts(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """TRAINER_DATA_DIR=data/t started in one folder names that folder's data/t, also after moving elsewhere."""
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({"TRAINER_DATA_DIR": "data/../data/t"})
    monkeypatch.chdir(tmp_path.parent)
    assert settings.data_dir == tmp_path / "data" / "t"
    assert Settings.from_env({}).data_dir.is_absolute()


def test_paths_stored_for_uploads_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file recorded by a trainer started with a relative data folder is found again from any other folder."""
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({"TRAINER_DATA_DIR": "data"})
    store = Store(settings.data_dir / "trainer.db")
    try:
        path = settings.data_dir / "files" / "file-1"
        path.parent.mkdir()
        path.write_bytes(b"{}\n")
        store.add_file("file-1", "train.jsonl", "fine-tune", 3, path)
        monkeypatch.chdir(tmp_path.parent)
        row = store.file("file-1")
        assert row is not None
        stored = Path(row["path"])
        assert stored.is_absolute() and stored.read_bytes() == b"{}\n"
    finally:
        store.close()
