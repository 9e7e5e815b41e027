"""Per-epoch checkpoints: a config's own files are kept whatever else the dir holds."""

from __future__ import annotations

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
