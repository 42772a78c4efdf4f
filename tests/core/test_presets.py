"""Tests of the named presets of echorl/core/config.py against the study arms they name.

Run: ``.venv/bin/python -m pytest -q tests/core/test_presets.py``.
"""

from __future__ import annotations

import dataclasses

import yaml

from echorl import EchoConfig
from echorl.core.config import PRESETS
from echorl.study.arms import ARMS, CONFIRM_ARMS, get_arms


def _echo_overrides(overrides) -> dict:
    """``echorl.<key>=<value>`` strings of an arm as EchoConfig keyword arguments (others skipped), each
    value read as Hydra reads it (YAML)."""
    out = {}
    for o in overrides:
        key, _, value = o.partition("=")
        if key.startswith("echorl."):
            out[key.removeprefix("echorl.")] = yaml.safe_load(value)
    return out


def _fields_but_preset(cfg: EchoConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d.pop("preset")
    return d


def test_positive_nll_preset_is_the_nll_success_full_arm():
    (arm,) = get_arms(["nll_success_full"])
    from_arm = EchoConfig.from_dict(_echo_overrides(arm.overrides))
    preset = EchoConfig.from_dict({"preset": "positive_nll"})
    assert (preset.scope, preset.per, preset.selector, preset.loss_agg) == ("success", "rollout", "full", "clip_mean")
    assert _fields_but_preset(preset) == _fields_but_preset(from_arm)
    # the confirmatory study's rule arm is the same reading at another coef
    (rule,) = get_arms(["rule_nll_full"], table=CONFIRM_ARMS)
    from_rule = EchoConfig.from_dict(_echo_overrides(rule.overrides))
    assert _fields_but_preset(EchoConfig(preset="positive_nll", coef=from_rule.coef)) == _fields_but_preset(from_rule)


def test_selector_comes_from_the_preset_and_explicit_keys_win():
    assert EchoConfig().selector == "peak" and EchoConfig(preset="degenerate").selector == "peak"
    assert EchoConfig(preset="positive_nll", selector="peak").selector == "peak"
    assert EchoConfig.from_dict({"preset": "positive_nll", "selector": None}).selector == "full"
    # every arm of the exploratory study composes the same config as before the selector default moved
    for a in ARMS:
        assert EchoConfig.from_dict(_echo_overrides(a.overrides)).selector == _echo_overrides(a.overrides).get(
            "selector", "peak")
    assert set(PRESETS) == {"paper", "degenerate", "positive_nll"}
    assert all(set(v) == {"scope", "per", "selector", "loss_agg"} for v in PRESETS.values())
