"""Every job of an invocation checked before any starts."""

from __future__ import annotations

from conftest import TINY

from adaptgrad.preflight import check_invocation


def test_a_sweep_over_rules_varies_one_rules_parameter_through_rule_settings():
    points = check_invocation([*TINY, "rule=none,taylor_prune", "+rule_settings.taylor_prune.fraction=0.1,0.2"], multirun=True)
    assert [p.error for p in points] == [None] * 4
    fractions = [[line.strip() for line in p.config_text.splitlines() if line.startswith("  fraction:")] for p in points]
    assert fractions == [[], [], ["fraction: 0.1"], ["fraction: 0.2"]]  # the none arm's rule has no fraction


def test_a_rule_key_swept_across_rules_names_rule_settings():
    none_arm = check_invocation([*TINY, "rule=none,taylor_prune", "rule.fraction=0.1"], multirun=True)[0]
    assert none_arm.error.endswith(
        "to set it only for the rules that take it (a sweep over rules): +rule_settings.RULE.fraction=..."
    )


def test_a_bad_optimizer_argument_anywhere_in_a_sweep_stops_it_before_any_job():
    points = check_invocation([*TINY, "optimizer=sgd", "optimizer.momentum=0.9,-3"], multirun=True)
    assert [p.error for p in points] == [None, "optimizer.momentum=-3 must be a number in [0, 1]"]
