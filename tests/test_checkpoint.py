"""Per-epoch checkpoints: a config's own files are kept whatever else the dir holds."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from adaptgrad.checkpoint import Checkpoints


def test_another_configs_newer_checkpoints_do_not_delete_this_configs(tmp_path):
    other = Checkpoints(tmp_path, digest="config-b")
    for epoch in (5, 6):
        other.save(epoch, {"epoch": epoch})
    own = Checkpoints(tmp_path, digest="config-a")
    for epoch in (0, 1, 2):
        own.save(epoch, {"epoch": epoch})
    with pytest.warns(RuntimeWarning, match="written by another config"):
        assert Checkpoints(tmp_path, digest="config-a").latest() == (2, {"epoch": 2})
    # the newest two of each config are kept, another config's files are not this one's to remove
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"epoch-{e:04d}.ckpt" for e in (1, 2, 5, 6)]


def test_only_the_newest_two_of_a_config_are_kept(tmp_path):
    store = Checkpoints(tmp_path, digest="a")
    for epoch in range(4):
        store.save(epoch, {"epoch": epoch})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002.ckpt", "epoch-0003.ckpt"]
    resumed = Checkpoints(tmp_path, digest="a")  # another process: its files are read, not remembered
    resumed.save(4, {"epoch": 4})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0003.ckpt", "epoch-0004.ckpt"]


def torn_write(path: Path, data: bytes) -> int:
    """A write the process is killed in: half the bytes reach the file, then the interrupt."""
    with open(path, "wb") as file:
        file.write(data[: len(data) // 2])
    raise KeyboardInterrupt


def test_a_save_killed_mid_write_leaves_no_torn_file_and_the_previous_checkpoint_resumes(tmp_path, monkeypatch):
    store = Checkpoints(tmp_path, digest="a")
    store.save(0, {"epoch": 0, "weights": list(range(1000))})
    with monkeypatch.context() as patched:
        patched.setattr(Path, "write_bytes", torn_write)
        with pytest.raises(KeyboardInterrupt):
            store.save(1, {"epoch": 1, "weights": list(range(1000))})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0000.ckpt"]  # no torn epoch-0001, no temp file
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to skip: no "ignoring checkpoint" warning
        assert Checkpoints(tmp_path, digest="a").latest() == (0, {"epoch": 0, "weights": list(range(1000))})
