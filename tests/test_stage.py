"""Tests of echorl/stage.py: run_echo_stage, the one call both hosts make (SPEC 2.4-2.5).

Run: ``.venv/bin/python -m pytest -q tests/test_stage.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from echorl import EchoConfig, echo_loss_term, run_echo_stage, select_echo_clips

N = 198
# rows 0-1: an all-success group (clips: peak step 1 -> 6 tokens; peak step 0 -> 2 tokens);
# rows 2-3: a mixed group (advantages non-zero); row 4: a padding row.
ROWS = [[5, 6, N, 7, 8, N, 9], [5, N, 7, N, 9, 9, 0], [5, 6, 7, 0, 0, 0, 0], [5, N, 6, 6, 0, 0, 0], [0] * 7]
LENS = [7, 6, 3, 4, 0]
ENTS = [[1, 1, 1, 3, 3, 3, 2], [4, 4, 1, 1, 2, 2, 0], [1] * 7, [1] * 7, [0] * 7]
SCORES = [1.0, 1.0, 1.0, 0.0, 0.0]
UIDS = ["a", "a", "b", "b", "pad"]


def batch():
    resp = torch.tensor(ROWS)
    mask = (torch.arange(7) < torch.tensor(LENS)[:, None]).long()
    ent = torch.tensor(ENTS, dtype=torch.float32)
    adv = torch.zeros(5, 7)
    adv[2, :3], adv[3, :4] = 0.7, -0.7
    return resp, mask, ent, torch.tensor(SCORES), adv


CLIP = [[1] * 6 + [0], [1, 1, 0, 0, 0, 0, 0], [0] * 7, [0] * 7, [0] * 7]


def test_mode_loss_degenerate_preset():
    resp, mask, ent, scores, adv = batch()
    out = run_echo_stage(resp, mask, ent, scores, UIDS, EchoConfig(boundary="fixed", preset="degenerate"), advantages=adv,
                         num_minibatches=2)
    assert out.echo_mask.tolist() == [[bool(x) for x in r] for r in CLIP]
    assert out.echo_denom == 8 / 2
    assert out.echo_denom_rows.tolist() == [4.0] * 5
    assert out.advantages is adv  # untouched object in mode='loss'
    m = out.metrics
    assert m["echo/active"] == 1.0 and m["echo/denom"] == 4.0 and m["echo/clips"] == 2
    # 20 valid tokens; non-zero advantages on 7 (rows 2-3); with EchoRL 7 + 8 clip tokens
    assert m["echo/grad_token_frac_base"] == pytest.approx(7 / 20)
    assert m["echo/grad_token_frac_echo"] == pytest.approx(15 / 20)
    assert torch.equal(out.selection.mask, out.echo_mask)


# The paper's rule (default preset): group a (all-success) gives the clip of its rollout with the
# largest peak h: row 0 peaks at step 1 (h=3), row 1 at step 0 (h=4) -> row 1, 2 tokens. Group b
# (mixed) gives the clip of its only success, row 2: one step (h=1), 3 tokens.
CLIP_PAPER = [[0] * 7, [1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0], [0] * 7, [0] * 7]


def test_mode_loss_paper_default_clip_mean():
    resp, mask, ent, scores, adv = batch()
    out = run_echo_stage(resp, mask, ent, scores, UIDS, EchoConfig(boundary="fixed"), advantages=adv, num_minibatches=2)
    assert out.echo_mask.tolist() == [[bool(x) for x in r] for r in CLIP_PAPER]
    # clip_mean: D_b = |c_b| * C / M = |c_b| * 2 / 2; rows without a clip get 1
    assert out.echo_denom_rows.tolist() == [1.0, 2.0, 3.0, 1.0, 1.0]
    m = out.metrics
    assert out.echo_denom == m["echo/denom"] == 1.0  # clips per mini-batch
    assert (m["echo/clips"], m["echo/clips_from_all_success"], m["echo/clips_from_mixed"]) == (2, 1, 1)
    assert m["echo/grad_token_frac_echo"] == pytest.approx((7 + 2) / 20)  # row 2 already carries gradient
    # the successes (rows 0-2) have 3, 3 and 1 steps: what both hosts log about the boundaries
    assert m["echo/steps_per_response"] == pytest.approx(7 / 3) and m["echo/single_step_frac"] == pytest.approx(1 / 3)
    # hand-computed term: the mean over the mini-batch's C/M = 1 clip of each clip's token-mean NLL
    lp = -torch.arange(1, 36, dtype=torch.float32).reshape(5, 7) / 10
    term = echo_loss_term(lp, out.echo_mask, out.echo_denom_rows)
    clip1 = (0.8 + 0.9) / 2  # row 1, positions 0-1: -lp = 0.8, 0.9
    clip2 = (1.5 + 1.6 + 1.7) / 3  # row 2, positions 0-2
    assert term.item() == pytest.approx((clip1 + clip2) / 1.0, rel=1e-6)


def test_token_mean_normaliser():
    resp, mask, ent, scores, _ = batch()
    out = run_echo_stage(resp, mask, ent, scores, UIDS, EchoConfig(boundary="fixed", loss_agg="token_mean"), num_minibatches=4)
    assert out.echo_denom == 20 / 4 and out.advantages is None
    assert out.echo_denom_rows.tolist() == [5.0] * 5


def test_echo_only_rows_are_counted():
    resp, mask, ent, scores, _ = batch()
    kept = torch.tensor([True, True, False, False, False])  # group a kept for the EchoRL term only
    out = run_echo_stage(resp, mask, ent, scores, UIDS, EchoConfig(boundary="fixed"), echo_only=kept)
    m = out.metrics
    assert (m["echo/kept_rows"], m["echo/kept_clip_tokens"], m["echo/clips_from_kept"]) == (2, 2, 1)
    with pytest.raises(ValueError, match=r"echo_only must have shape \[B\]=\[5\], got \[4\]"):
        run_echo_stage(resp, mask, ent, scores, UIDS, EchoConfig(boundary="fixed"), echo_only=kept[:4])


@pytest.mark.parametrize("kwargs", [{"enable": False}, {"coef": 0.0}])
def test_inactive_changes_nothing(kwargs):
    resp, mask, ent, scores, adv = batch()
    adv_before = adv.clone()
    out = run_echo_stage(resp, mask, ent, scores, UIDS, EchoConfig(boundary="fixed", preset="degenerate", **kwargs), advantages=adv)
    assert not out.echo_mask.any() and out.echo_mask.shape == (5, 7)
    assert out.advantages is adv and torch.equal(adv, adv_before)
    assert out.metrics["echo/active"] == 0.0
    assert out.selection.mask.sum() == 8  # what EchoRL would echo is still reported
    # the term the hosts add is exactly 0 with zero gradient
    lp = torch.full((5, 7), -1.5, requires_grad=True)
    cfg = EchoConfig(**kwargs)
    term = cfg.coef * echo_loss_term(lp, out.echo_mask, out.echo_denom)
    term.backward()
    assert term.item() == 0.0 and torch.equal(lp.grad, torch.zeros(5, 7))


def test_mode_advantage_adds_adv_coef_exactly_on_clip_tokens():
    resp, mask, ent, scores, adv = batch()
    adv_before = adv.clone()
    out = run_echo_stage(resp, mask, ent, scores, UIDS, EchoConfig(boundary="fixed", preset="degenerate", mode="advantage", adv_coef=0.25),
                         advantages=adv)
    clip = torch.tensor(CLIP, dtype=torch.bool)
    assert torch.equal(out.advantages, torch.where(clip, adv_before + 0.25, adv_before))
    assert torch.equal(adv, adv_before)  # input not modified
    assert not out.echo_mask.any()  # no loss term in mode='advantage'
    assert out.metrics["echo/active"] == 1.0


def test_random_prefix_is_seeded_by_seed_and_step():
    row = [1, N, 2, N, 3, N, 4, N, 5, N, 6, N, 7]
    B = 16
    resp = torch.tensor([row] * B)
    mask, ent, scores = torch.ones(B, 13), torch.ones(B, 13), torch.ones(B)
    cfg = EchoConfig(boundary="fixed", selector="random_prefix", seed=3, per="rollout")
    outs = {}
    for step in (0, 1, 1):
        out = run_echo_stage(resp, mask, ent, scores, [0] * B, cfg, step=step)
        gen = torch.Generator().manual_seed(3 * 1_000_003 + step)
        direct = select_echo_clips(resp, mask, ent, scores, [0] * B, cfg, generator=gen)
        assert torch.equal(out.echo_mask, direct.mask)
        u = torch.rand(B, generator=torch.Generator().manual_seed(3 * 1_000_003 + step), dtype=torch.float64)
        assert out.selection.clip_end_step.tolist() == [math.floor(x * 7) for x in u.tolist()]
        outs.setdefault(step, out.echo_mask)
        assert torch.equal(outs[step], out.echo_mask)  # same step -> same clips
    assert not torch.equal(outs[0], outs[1])  # another step -> other clips


def test_bad_advantages_shape():
    resp, mask, ent, scores, adv = batch()
    with pytest.raises(ValueError, match=r"advantages must have shape \[B, L\]=\[5, 7\], got \[5, 6\]"):
        run_echo_stage(resp, mask, ent, scores, UIDS, EchoConfig(boundary="fixed"), advantages=adv[:, :6])
    with pytest.raises(ValueError, match="num_minibatches must be a positive int"):
        run_echo_stage(resp, mask, ent, scores, UIDS, EchoConfig(boundary="fixed"), num_minibatches=0)
