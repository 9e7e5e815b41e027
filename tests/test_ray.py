"""Hydra's Ray launcher against a real local Ray cluster (README, "Scaling out"): needs the ``ray``
extra (``pip install -e '.[test,ray]'``, as ``.ci/run`` does)."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import cli

from adaptgrad.results import collect

TABLES = ("history.csv", "units.parquet", "actions.csv")


@pytest.fixture
def ray_cluster() -> Iterator[str]:
    """A one-node Ray cluster on the loopback interface, started with the ``ray`` command as the
    README says and stopped afterwards; yields the ``ray`` executable."""
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="the ray extra is not installed: pip install -e '.[test,ray]'")
    ray = str(Path(sys.executable).with_name("ray"))
    start = [
        ray,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=2",
        "--include-dashboard=false",
        "--disable-usage-stats",
    ]
    subprocess.run(start, check=True, capture_output=True, text=True, timeout=180)
    try:
        yield ray
    finally:
        subprocess.run([ray, "stop"], capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_a_sweep_through_a_local_ray_cluster_matches_the_basic_launcher(ray_cluster, tiny, tmp_path):
    sweep = ["-m", "rule=none,taylor_prune", *tiny]
    # hydra-ray-launcher 1.2.2 sets object_store_memory unless given, and Ray refuses it with an address
    launcher = ["hydra/launcher=ray", "hydra.launcher.ray.init.address=auto", "+hydra.launcher.ray.init.object_store_memory=null"]
    ray = cli(*sweep, *launcher, f"hydra.sweep.dir={tmp_path / 'ray'}", cwd=tmp_path)
    assert ray.returncode == 0, ray.stderr[-3000:]
    assert "2 ran, 0 resumed, 0 skipped (completed earlier), 0 did not complete" in ray.stdout, ray.stdout[-3000:]
    basic = cli(*sweep, f"hydra.sweep.dir={tmp_path / 'basic'}", cwd=tmp_path)
    assert basic.returncode == 0, basic.stderr[-3000:]
    assert (collect(tmp_path / "ray").runs.status == "ok").all()
    for job in ("0", "1"):
        for name in TABLES:
            assert filecmp.cmp(tmp_path / "ray" / job / name, tmp_path / "basic" / job / name, shallow=False), (job, name)
