"""module.attr + config keys -> a call (adaptgrad/targets.py): one keyword check for the rule, the
model, the data and the optimizer, and the validated spec built with neither Hydra nor TensorFlow."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from adaptgrad.composition import compose
from adaptgrad.config import check, load_data, prepare
from adaptgrad.models import make_model
from adaptgrad.rules import AdaptationRule
from adaptgrad.targets import keywords

ROOT = Path(__file__).resolve().parents[1]


def _rule_typo() -> None:
    check(compose(["rule=taylor_prune", "+rule.fractoin=0.5"]), "taylor_prune")


def _model_typo() -> None:
    make_model({"_target_": "adaptgrad.question.question_model", "sise": 3}, input_shape=(5, 1), outputs=4, task="regression")


def _data_typo() -> None:
    load_data(OmegaConf.create({"_target_": "adaptgrad.data.adding", "lenght": 5}))


def _optimizer_typo() -> None:
    prepare(compose(["data=toy", "optimizer=sgd", "+optimizer.momentun=0.5"]), "gain_rescale")


@pytest.mark.parametrize(
    "build,message",
    [
        (_rule_typo, "rule.fractoin is not a parameter of adaptgrad.rules.taylor_prune.TaylorPrune; valid: start_epoch"),
        (_model_typo, "model.sise is not a parameter of adaptgrad.question.question_model; valid: size; did you mean 'size'?"),
        (_data_typo, "data.lenght is not a parameter of adaptgrad.data.adding; valid: length, samples"),
        (_optimizer_typo, "optimizer.momentun is not a parameter of keras.optimizers.SGD; valid: learning_rate, momentum"),
    ],
    ids=["rule", "model", "data", "optimizer"],
)
def test_a_misspelt_key_of_any_target_is_named_with_the_valid_keys_and_the_closest(build, message):
    with pytest.raises(ValueError) as raised:
        build()
    assert str(raised.value).startswith(message), str(raised.value)
    assert "did you mean" in str(raised.value)


def test_a_class_takes_the_keywords_it_passes_on_to_its_bases():
    @dataclasses.dataclass(kw_only=True, eq=False, repr=False)
    class Base(AdaptationRule):
        depth: int = 1

    class Passing(Base):
        def __init__(self, *, factor: float = 0.5, **rest: object) -> None:
            super().__init__(**rest)
            self.factor = factor

    assert keywords(Passing) == ["factor", *keywords(Base)]
    assert keywords(Base)[-1] == "depth" and "every" in keywords(Base)
    assert keywords(lambda a, **more: a) is None  # a function taking **kwargs takes any key


def test_the_validated_spec_needs_neither_hydra_nor_tensorflow():
    """check() on a plain config (no composition) imports neither Hydra nor TensorFlow: the spec,
    its validators and the binding of targets are plain Python."""
    script = (
        "import sys\n"
        "from omegaconf import OmegaConf\n"
        "from adaptgrad.config import check\n"
        "cfg = OmegaConf.create({'model': {'cell': 'gru', 'units': 3}, 'data': {'_target_': 'adaptgrad.data.toy'},\n"
        "    'rule': {'_target_': 'adaptgrad.rules.taylor_prune.TaylorPrune', 'fraction': 0.2},\n"
        "    'optimizer': {'_target_': 'keras.optimizers.SGD', 'learning_rate': 0.1}, 'trainer': {'epochs': 2},\n"
        "    'seed': 0, 'layer': None, 'through_time': 'auto', 'stats': 'all', 'oracle': 0})\n"
        "spec = check(cfg, 'taylor_prune')\n"
        "print(spec.rule.fraction, sorted(m for m in ('hydra', 'tensorflow', 'keras') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "0.2 []"
