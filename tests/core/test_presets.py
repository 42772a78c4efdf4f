"""Tests of the named presets of echorl/core/config.py against the study arms they name.

Run: ``.venv/bin/python -m pytest -q tests/core/test_presets.py``.
"""

from __future__ import annotations

import dataclasses

import pytest
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


def test_positive_nll_with_clip_token_mean_is_vapos_term():
    """VAPO's positive-example NLL (arXiv 2504.05118, Sec. 4.3; NeMo-RL's ``positive_example_nll_weight``):
    the mean NLL over every token of the batch's correct responses. ``preset=positive_nll`` with
    ``loss_agg=clip_token_mean`` must be that term, whatever the micro-batch split; the preset's own
    ``clip_mean`` weighs each correct response alike instead."""
    import torch

    from echorl import select_echo_clips
    from echorl.core.loss import echo_loss_term, echo_row_denominators

    # two groups of three rollouts; rewards 1, 0, 1 | 1, 1, 0; lengths 3, 4, 5 | 2, 6, 1; 11 = step boundary
    lengths, scores = [3, 4, 5, 2, 6, 1], torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    B, L = 6, 6
    mask = torch.tensor([[t < n for t in range(L)] for n in lengths])
    responses = torch.where(mask, 5, 0)
    responses[:, 1] = torch.where(mask[:, 1], 11, 0)
    logp = -torch.arange(1, B * L + 1, dtype=torch.float32).reshape(B, L) / 10  # -0.1, -0.2, ...
    cfg = EchoConfig(preset="positive_nll", loss_agg="clip_token_mean", coef=0.1, boundary_token_ids=(11,))
    sel = select_echo_clips(responses, mask, torch.rand(B, L), scores, [0, 0, 0, 1, 1, 1], cfg)
    correct = mask & (scores > 0).unsqueeze(1)
    assert torch.equal(sel.mask, correct)  # every correct response whole; wrong ones untouched

    # VAPO / NeMo-RL, literally: sum of -logp over correct tokens / number of correct tokens
    ntok = 3 + 5 + 2 + 6
    nll_sum = sum(-float(logp[b, t]) for b in range(B) for t in range(L) if correct[b, t])
    vapo = nll_sum / ntok
    D = echo_row_denominators(sel.mask, mask, cfg.loss_agg)
    assert float(echo_loss_term(logp, sel.mask, D)) == pytest.approx(vapo, rel=1e-6)
    # split into micro-batches {0, 1, 2} and {3, 4, 5}: the parts add up to the same term
    parts = [float(echo_loss_term(logp[i], sel.mask[i], D[i])) for i in (slice(0, 3), slice(3, 6))]
    assert sum(parts) == pytest.approx(vapo, rel=1e-6)

    # the preset's clip_mean: each correct response's token mean, averaged over the 4 of them
    per_resp = [sum(-float(logp[b, t]) for t in range(lengths[b])) / lengths[b] for b in (0, 2, 3, 4)]
    D_cm = echo_row_denominators(sel.mask, mask, "clip_mean")
    assert float(echo_loss_term(logp, sel.mask, D_cm)) == pytest.approx(sum(per_resp) / 4, rel=1e-6)
    assert sum(per_resp) / 4 != pytest.approx(vapo, rel=1e-3)  # the two normalisers differ here
