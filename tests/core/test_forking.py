"""Tests of echorl/core/forking.py against hand-computed cases and a literal loop of the paper's Eq. 6.

Run: ``.venv/bin/python -m pytest -q tests/core/test_forking.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from echorl.core.forking import ForkingConfig, forking_pg_loss, forking_token_mask, num_forking_tokens


def ref_forking_loss(logp, old_logp, adv, entropy, mask, rho, eps_low=0.2, eps_high=0.28):
    """arXiv 2506.01939 Eq. 6 with plain loops: rank the valid tokens of the batch by entropy
    (descending; ties: earlier row-major position first), keep the first max(1, int(N rho + 0.9999)),
    and return -sum_kept min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) / (number kept), plus the
    kept positions."""
    valid = [(b, t) for b in range(len(mask)) for t in range(len(mask[0])) if mask[b][t]]
    ranked = sorted(valid, key=lambda p: (-float(entropy[p[0]][p[1]]), p[0], p[1]))
    k = max(1, int(len(valid) * rho + 0.9999)) if valid else 0
    kept = set(ranked[:k])
    total = 0.0
    for b, t in kept:
        r = math.exp(float(logp[b][t]) - float(old_logp[b][t]))
        a = float(adv[b][t])
        total += min(r * a, min(max(r, 1 - eps_low), 1 + eps_high) * a)
    return -total / max(len(kept), 1), kept


def test_mask_by_hand_with_ties_and_padding():
    entropy = torch.tensor([[0.1, 0.9, 0.5], [0.9, 0.3, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # the 7.0 is padding and never kept
    # N = 5 valid tokens; rho 0.2 keeps 1: the tie 0.9 / 0.9 goes to the earlier position (0, 1)
    assert forking_token_mask(entropy, mask, 0.2).tolist() == [[False, True, False], [False, False, False]]
    # rho 0.5 keeps int(2.5 + 0.9999) = 3: both 0.9 and the 0.5
    assert forking_token_mask(entropy, mask, 0.5).tolist() == [[False, True, True], [True, False, False]]
    # rho 1 keeps every valid token and no padding
    assert forking_token_mask(entropy, mask, 1.0).tolist() == mask.bool().tolist()
    # no valid token: nothing kept
    assert not forking_token_mask(entropy, torch.zeros_like(mask), 0.2).any()


def test_kept_count_is_the_authors_rounded_up_count():
    assert [num_forking_tokens(n, 0.2) for n in (0, 1, 4, 5, 6, 10, 11, 15)] == [0, 1, 1, 1, 2, 2, 3, 3]
    assert num_forking_tokens(15, 0.2) == 3  # 15 * 0.2 is 3.0000000000000004 in floating point; not 4
    assert num_forking_tokens(7, 1.0) == 7 and num_forking_tokens(3, 0.01) == 1


def test_loss_by_hand_and_split_invariance():
    pg = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    keep = torch.tensor([[False, True, False], [True, False, False]])
    assert forking_pg_loss(pg, keep).item() == 3.0  # (2 + 4) / 2 kept tokens
    assert forking_pg_loss(pg, keep, denominator=4).item() == 1.5
    # micro-batches with the mini-batch's kept count fixed before the update sum to the whole
    parts = forking_pg_loss(pg[:1], keep[:1], denominator=2) + forking_pg_loss(pg[1:], keep[1:], denominator=2)
    assert parts.item() == 3.0
    # nothing kept: 0, still differentiable
    x = pg.clone().requires_grad_(True)
    z = forking_pg_loss(x, torch.zeros_like(keep))
    z.backward()
    assert z.item() == 0.0 and x.grad.abs().sum().item() == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_matches_literal_loops_on_random_batches(seed):
    g = torch.Generator().manual_seed(seed)
    B, L = 6, 11
    lengths = torch.randint(0, L + 1, (B,), generator=g)
    mask = (torch.arange(L)[None] < lengths[:, None]).long()
    # entropies on a coarse grid so that ties happen
    entropy = torch.randint(0, 6, (B, L), generator=g).double() / 2
    logp = -torch.rand(B, L, generator=g, dtype=torch.float64) * 3
    old = logp + 0.3 * torch.randn(B, L, generator=g, dtype=torch.float64)
    adv = torch.randn(B, 1, generator=g, dtype=torch.float64).expand(B, L)
    for rho in (0.1, 0.2, 0.5, 1.0):
        keep = forking_token_mask(entropy, mask, rho)
        r = torch.exp(logp - old)
        pg = -torch.minimum(r * adv, r.clamp(1 - 0.2, 1 + 0.28) * adv)
        got = forking_pg_loss(pg, keep)
        want, kept = ref_forking_loss(logp.tolist(), old.tolist(), adv.tolist(), entropy.tolist(), mask.tolist(), rho)
        assert {tuple(p) for p in keep.nonzero().tolist()} == kept
        assert got.item() == pytest.approx(want, abs=1e-12)


def test_config_and_bad_inputs():
    assert ForkingConfig().rho == 0.2
    assert ForkingConfig.from_dict({"rho": 1}).rho == 1.0
    for bad in (0, 1.5, -0.1, math.nan, True, "0.2"):
        with pytest.raises(ValueError, match=r"ForkingConfig.rho must be a number in \(0, 1\]"):
            ForkingConfig(rho=bad)
    with pytest.raises(ValueError, match=r"method.forking.rho must be a number in \(0, 1\]"):
        ForkingConfig.from_dict({"rho": 0}, prefix="method.forking")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['forking.ratio'\]; valid keys: \['rho'\]"):
        ForkingConfig.from_dict({"ratio": 0.2})
    e = torch.tensor([[0.1, math.nan]])
    with pytest.raises(ValueError, match="entropy has NaN or inf at valid response positions"):
        forking_token_mask(e, torch.ones(1, 2), 0.2)
    assert forking_token_mask(e, torch.tensor([[1, 0]]), 0.2).tolist() == [[True, False]]
    with pytest.raises(ValueError, match="must share one"):
        forking_token_mask(torch.ones(2, 3), torch.ones(2, 2), 0.2)
    with pytest.raises(ValueError, match="denominator must be a positive count"):
        forking_pg_loss(torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool), denominator=0)


class _ActorCfg(dict):
    """The three clip settings verl's vanilla policy loss reads, as an actor config."""

    clip_ratio, clip_ratio_low, clip_ratio_high = 0.2, 0.2, 0.28
    global_batch_info: dict = {}


def test_verl_vanilla_loss_on_the_kept_tokens_is_eq6():
    """The authors' code path (verl's vanilla policy loss, token-mean over ``response_mask * keep``)
    gives Eq. 6's value, and so does :func:`forking_pg_loss` on the same per-token losses."""
    from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla

    g = torch.Generator().manual_seed(7)
    B, L = 5, 13
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    mask = (torch.arange(L)[None] < lengths[:, None]).long()
    entropy = torch.rand(B, L, generator=g, dtype=torch.float64) * 3
    logp = -torch.rand(B, L, generator=g, dtype=torch.float64) * 3
    old = logp + 0.3 * torch.randn(B, L, generator=g, dtype=torch.float64)
    adv = torch.randn(B, 1, generator=g, dtype=torch.float64).expand(B, L).contiguous()
    keep = forking_token_mask(entropy, mask, 0.2)
    verl_loss, _ = compute_policy_loss_vanilla(old, logp, adv, mask.bool() & keep, "token-mean", _ActorCfg())
    want, _ = ref_forking_loss(logp.tolist(), old.tolist(), adv.tolist(), entropy.tolist(), mask.tolist(), 0.2)
    r = torch.exp(logp - old)
    ours = forking_pg_loss(-torch.minimum(r * adv, r.clamp(0.8, 1.28) * adv), keep)
    assert verl_loss.item() == pytest.approx(want, abs=1e-12) and ours.item() == pytest.approx(want, abs=1e-12)
