"""Everything adaptgrad asks of Hydra (adaptgrad/composition.py, adaptgrad/_hydra.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from adaptgrad.composition import GROUPS, VALUE_KEYS, compose, given_keys, launcher, rules_modules
from adaptgrad.config import CONF_DIR, TOP_KEYS

PACKAGE = Path(__file__).resolve().parents[1] / "adaptgrad"


@pytest.mark.parametrize(
    "overrides,modules",
    [
        (["rules_module='zz_rules'"], ["zz_rules"]),  # quoted: Hydra passes zz_rules
        (["+rules_module=[a, 'b.c']"], ["a", "b.c"]),
        (["seed=0", "rules_module=a,b"], ["a", "b"]),  # a sweep: every job's module
        (["rules_module=null", "rule_settings.x.rules_module=1"], []),
        (["rules_module=[a"], []),  # Hydra refuses it (bad syntax) and says why
    ],
)
def test_rules_modules_are_read_as_hydra_reads_them(overrides, modules):
    assert rules_modules(overrides) == modules


def test_the_keys_an_invocation_sets_and_its_launcher():
    assert given_keys(["++rule._target_=my.Rule", "~layer", "model=gru", "data.length='3,4'"]) == {
        "rule._target_",
        "layer",
        "model",
        "data.length",
    }
    assert launcher(["seed=0,1", "hydra/launcher=joblib"]) == "joblib" and launcher(["seed=0"]) is None


def test_hydra_internals_are_used_from_one_module_only():
    private = re.compile(r"hydra\._internal|\._get_node\(|_apply_overrides_to_config|get_args_parser|BasicSweeper")
    users = sorted(p.name for p in PACKAGE.rglob("*.py") if private.search(p.read_text(encoding="utf-8")))
    assert users == ["_hydra.py"]


def test_the_config_groups_are_the_folders_of_conf_and_the_value_keys_the_rest():
    assert sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir()) == sorted([*GROUPS, "hparams_search"])
    assert sorted([*GROUPS, *VALUE_KEYS]) == sorted(TOP_KEYS) == sorted(compose([]))
