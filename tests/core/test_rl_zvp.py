"""Tests of echorl/core/rl_zvp.py against hand-computed cases and a literal loop of the paper's Eq. 5.

Run: ``.venv/bin/python -m pytest -q tests/core/test_rl_zvp.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from echorl.core.rl_zvp import RlZvpConfig, rl_zvp_advantages, rl_zvp_shape, zero_variance_signs


def ref_rl_zvp(adv, scores, uids, entropy, mask, alpha, positive_above=0.0, tol=1e-6):
    """Arxiv 2509.21880 Eq. 5 with plain loops: a group (rows with a valid token sharing a uid, at
    least two) whose rewards lie within tol is zero-variance; its rows get alpha * H_t (reward >
    positive_above) or -alpha * (max_k H_k - H_t); every other row keeps adv. float64 lists."""
    B, L = len(scores), len(adv[0])
    members = {}
    for b in range(B):
        if any(mask[b]):
            members.setdefault(uids[b], []).append(b)
    out = [list(map(float, adv[b])) for b in range(B)]
    for rows in members.values():
        rs = [float(scores[b]) for b in rows]
        if len(rows) < 2 or max(rs) - min(rs) > tol:
            continue
        for b in rows:
            hs = [float(entropy[b][t]) for t in range(L) if mask[b][t]]
            h_max = max(hs)
            for t in range(L):
                if not mask[b][t]:
                    out[b][t] = 0.0
                elif float(scores[b]) > positive_above:
                    out[b][t] = alpha * float(entropy[b][t])
                else:
                    out[b][t] = -alpha * (h_max - float(entropy[b][t]))
    return out


def _batch():
    # rows 0-1: all-success group 10; rows 2-3: all-fail group 11; rows 4-5: mixed group 12;
    # row 6: a group of one (keeps its base advantage).
    entropy = torch.tensor([
        [0.5, 1.0, 2.0],
        [0.2, 0.4, 9.0],  # last position invalid
        [1.0, 3.0, 0.5],
        [0.0, 5.0, 5.0],  # only the first position valid
        [1.0, 1.0, 1.0],
        [2.0, 2.0, 2.0],
        [4.0, 4.0, 4.0],
    ], dtype=torch.float32)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1]])
    scores = torch.tensor([1.0, 1.0 + 1e-7, 0.0, 0.0, 1.0, 0.0, 1.0])
    uids = [10, 10, 11, 11, 12, 12, 13]
    adv = torch.tensor([[0.0] * 3] * 4 + [[0.7] * 3, [-0.7, -0.7, 0.0], [0.3] * 3])
    return adv, scores, uids, entropy, mask


def test_signs_by_hand():
    _, scores, uids, _, mask = _batch()
    assert zero_variance_signs(scores, uids, mask).tolist() == [1, 1, -1, -1, 0, 0, 0]
    # a row without a valid token is no member: it gets 0 and does not break its group's variance
    m3 = torch.tensor([[1], [1], [0]])
    assert zero_variance_signs(torch.tensor([1.0, 1.0, 0.0]), [0, 0, 0], m3).tolist() == [1, 1, 0]
    # ... and a group left with one member keeps its base advantage
    mask2 = mask.clone()
    mask2[5] = 0
    assert zero_variance_signs(scores, uids, mask2).tolist() == [1, 1, -1, -1, 0, 0, 0]
    # rewards 0.5 > positive_above=0 are positive; with positive_above=0.5 they are negative
    s = torch.tensor([0.5, 0.5])
    m = torch.ones(2, 1)
    assert zero_variance_signs(s, [0, 0], m).tolist() == [1, 1]
    assert zero_variance_signs(s, [0, 0], m, positive_above=0.5).tolist() == [-1, -1]
    # tol: 1e-7 apart is equal at the default tol, not at tol=0
    assert zero_variance_signs(torch.tensor([1.0, 1.0 + 1e-4]), [0, 0], m, tol=1e-3).tolist() == [1, 1]
    assert zero_variance_signs(torch.tensor([1.0, 1.0 + 1e-4]), [0, 0], m, tol=0.0).tolist() == [0, 0]


def test_advantages_by_hand():
    adv, scores, uids, entropy, mask = _batch()
    out, signs = rl_zvp_advantages(adv, scores, uids, entropy, mask, RlZvpConfig())
    expected = torch.tensor([
        [0.05, 0.10, 0.20],      # 0.1 * H
        [0.02, 0.04, 0.0],       # invalid position: 0
        [-0.20, 0.0, -0.25],     # -0.1 * (3 - H)
        [0.0, 0.0, 0.0],         # one valid token: max - H = 0
        [0.7, 0.7, 0.7],         # mixed group: the base advantage, untouched
        [-0.7, -0.7, 0.0],
        [0.3, 0.3, 0.3],         # group of one: untouched
    ])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-7)
    assert out.dtype == adv.dtype and signs.tolist() == [1, 1, -1, -1, 0, 0, 0]
    # alpha scales the shaped rows only
    out2, _ = rl_zvp_advantages(adv, scores, uids, entropy, mask, RlZvpConfig(alpha=0.2))
    torch.testing.assert_close(out2[:4], 2 * expected[:4], rtol=0, atol=1e-7)
    torch.testing.assert_close(out2[4:], expected[4:], rtol=0, atol=0)


def test_entropy_is_detached_and_rows_are_independent():
    adv, scores, uids, entropy, mask = _batch()
    h = entropy.clone().requires_grad_(True)
    out, signs = rl_zvp_advantages(adv, scores, uids, h, mask, RlZvpConfig())
    assert not out.requires_grad  # the entropy acts as a constant factor (paper footnote 3)
    # row-local: shaping any split of the rows gives the same rows
    parts = [rl_zvp_shape(adv[i:j], signs[i:j], entropy[i:j], mask[i:j], 0.1) for i, j in ((0, 3), (3, 7))]
    torch.testing.assert_close(torch.cat(parts), out, rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(6))
def test_matches_literal_loops_on_random_batches(seed):
    g = torch.Generator().manual_seed(seed)
    G, n, L = 5, 4, 9
    B = G * n
    uids = [f"p{i // n}" for i in range(B)]
    # rewards in {0, 1}; some groups forced to all-0 / all-1
    scores = (torch.rand(B, generator=g) < 0.5).double()
    scores[:n] = 1.0
    scores[n:2 * n] = 0.0
    lengths = torch.randint(0, L + 1, (B,), generator=g)
    mask = (torch.arange(L)[None] < lengths[:, None]).long()
    entropy = torch.rand(B, L, generator=g, dtype=torch.float64) * 4
    adv = torch.randn(B, L, generator=g, dtype=torch.float64)
    out, _ = rl_zvp_advantages(adv, scores, uids, entropy, mask, RlZvpConfig(alpha=0.15))
    ref = ref_rl_zvp(adv.tolist(), scores.tolist(), uids, entropy.tolist(), mask.tolist(), 0.15)
    torch.testing.assert_close(out, torch.tensor(ref, dtype=torch.float64), rtol=0, atol=1e-12)


def test_config_defaults_and_errors():
    cfg = RlZvpConfig()
    assert (cfg.alpha, cfg.positive_above, cfg.tol) == (0.1, 0.0, 1e-6)
    assert RlZvpConfig.from_dict({"alpha": 0.2}).alpha == 0.2
    with pytest.raises(ValueError, match=r"method.rl_zvp.alpha must be > 0"):
        RlZvpConfig.from_dict({"alpha": 0}, prefix="method.rl_zvp")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['rl_zvp.beta'\]; valid keys: \['alpha', 'positive_above', 'tol'\]"):
        RlZvpConfig.from_dict({"beta": 1})
    with pytest.raises(ValueError, match="RlZvpConfig.tol must be a finite number"):
        RlZvpConfig(tol=math.nan)
    with pytest.raises(ValueError, match="RlZvpConfig.alpha must be a finite number"):
        RlZvpConfig(alpha=True)


def test_bad_inputs_are_named():
    adv, scores, uids, entropy, mask = _batch()
    with pytest.raises(ValueError, match="scores has NaN"):
        zero_variance_signs(torch.tensor([1.0, math.nan]), [0, 0], torch.ones(2, 1))
    with pytest.raises(ValueError, match=r"response_mask must be a \[B=7, L\] tensor"):
        zero_variance_signs(scores, uids, mask[:3])
    with pytest.raises(ValueError, match=r"signs must have shape \[B\]"):
        rl_zvp_shape(adv, torch.zeros(3), entropy, mask, 0.1)
    bad = entropy.clone()
    bad[0, 0] = math.inf
    with pytest.raises(ValueError, match="entropy has NaN or inf at valid response positions"):
        rl_zvp_shape(adv, torch.ones(7), bad, mask, 0.1)
    bad[0, 0] = 0.5
    bad[1, 2] = math.nan  # an invalid position is never read
    rl_zvp_shape(adv, torch.ones(7), bad, mask, 0.1)
