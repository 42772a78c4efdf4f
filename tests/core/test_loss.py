"""Tests of echorl/core/loss.py: the EchoRL term, its fixed normaliser, the advantage variant (SPEC 2.4).

Run: ``.venv/bin/python -m pytest -q tests/core/test_loss.py``.
"""

from __future__ import annotations

import pytest
import torch

from echorl import apply_echo_advantage, echo_loss_term, echo_normalizer, echo_row_denominators
from echorl.core.loss import LOSS_AGGS

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_echo_loss_term_by_hand(device, dtype):
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -4.0, -8.0]], dtype=dtype, device=device)
    m = torch.tensor([[1, 1, 0], [0, 1, 0]], device=device)
    for mask in (m, m.bool(), m.float()):
        for D in (2.0, torch.tensor([2.0, 2.0], device=device), torch.tensor(2.0, device=device)):
            out = echo_loss_term(lp, mask, D)
            assert out.dtype == torch.float32 and out.shape == ()
            assert out.item() == (1 + 2 + 4) / 2


def test_echo_loss_term_gradient_is_minus_mask_over_d():
    lp = torch.tensor([[-1.0, -2.0, -3.0]], dtype=torch.float64, requires_grad=True)
    echo_loss_term(lp, torch.tensor([[True, False, True]]), 4.0).backward()
    assert lp.grad.tolist() == [[-0.25, 0.0, -0.25]]


def test_empty_selection_is_exactly_zero_with_zero_grad():
    lp = torch.tensor([[-1.0, float("nan"), float("-inf")]], requires_grad=True)
    out = echo_loss_term(lp, torch.zeros(1, 3, dtype=torch.bool), echo_normalizer(torch.zeros(1, 3, dtype=torch.bool), torch.ones(1, 3)))
    assert out.item() == 0.0 and not torch.isnan(out)
    out.backward()
    assert torch.equal(lp.grad, torch.zeros(1, 3))


def test_nan_at_masked_positions_does_not_leak():
    lp = torch.tensor([[-1.0, float("nan"), float("-inf")]], requires_grad=True)
    out = echo_loss_term(lp, torch.tensor([[True, False, False]]), 1.0)
    out.backward()
    assert out.item() == 1.0 and lp.grad.tolist() == [[-1.0, 0.0, 0.0]]


def test_coef_zero_gives_zero_term_and_zero_grad():
    lp = torch.log_softmax(torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0)), -1)[..., 0]
    lp = lp.detach().requires_grad_()
    out = 0.0 * echo_loss_term(lp, torch.ones(2, 5, dtype=torch.bool), 10.0)
    out.backward()
    assert out.item() == 0.0 and torch.equal(lp.grad, torch.zeros(2, 5))


def test_shape_mismatch():
    with pytest.raises(ValueError, match=r"log_prob \[2, 3\] and echo_mask \[2, 4\]"):
        echo_loss_term(torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.bool), 1.0)


# ---------------------------------------------------------------------------- the normaliser
ECHO = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
RESP = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])


@pytest.mark.parametrize("agg, n_mb, expected", [
    ("clip_token_mean", 1, 6.0), ("clip_token_mean", 2, 3.0), ("clip_token_mean", 4, 1.5),
    ("token_mean", 1, 10.0), ("token_mean", 2, 5.0), ("token_mean", 4, 2.5),
])
def test_echo_normalizer(agg, n_mb, expected):
    assert echo_normalizer(ECHO, RESP, agg, n_mb) == expected
    assert echo_normalizer(ECHO, RESP.float(), agg, n_mb) == expected


def test_echo_normalizer_is_at_least_one_and_validates():
    assert echo_normalizer(torch.zeros(2, 3, dtype=torch.bool), torch.zeros(2, 3)) == 1.0
    assert echo_normalizer(ECHO, RESP, "clip_token_mean", 8) == 1.0  # 6 / 8 < 1
    with pytest.raises(ValueError, match="num_minibatches must be a positive int, got 0"):
        echo_normalizer(ECHO, RESP, num_minibatches=0)
    with pytest.raises(ValueError, match="num_minibatches must be a positive int, got 2.0"):
        echo_normalizer(ECHO, RESP, num_minibatches=2.0)
    with pytest.raises(ValueError, match=r"loss_agg: unknown name 'seq_mean'; valid names are "
                                         r"\['clip_mean', 'clip_token_mean', 'token_mean'\]"):
        echo_normalizer(ECHO, RESP, "seq_mean")
    assert LOSS_AGGS.names() == ["clip_mean", "clip_token_mean", "token_mean"]
    with pytest.raises(ValueError, match="no single denominator; use echo_row_denominators"):
        echo_normalizer(ECHO, RESP, "clip_mean")


@pytest.mark.parametrize("n_mb, expected", [
    # clip lengths 2, 0, 3, 1; C = 3 clips; D_b = |c_b| * C / M, 1 on the row without a clip
    (1, [6.0, 1.0, 9.0, 3.0]), (2, [3.0, 1.0, 4.5, 1.5]), (3, [2.0, 1.0, 3.0, 1.0]), (6, [1.0, 1.0, 1.5, 0.5]),
])
def test_clip_mean_row_denominators(n_mb, expected):
    assert echo_row_denominators(ECHO, RESP, "clip_mean", n_mb).tolist() == expected
    assert echo_row_denominators(ECHO, RESP.float(), num_minibatches=n_mb).tolist() == expected  # the default
    # the token normalisations: one value on every row
    assert echo_row_denominators(ECHO, RESP, "clip_token_mean", n_mb).tolist() == [max(6 / n_mb, 1.0)] * 4
    none = echo_row_denominators(torch.zeros(4, 4, dtype=torch.bool), RESP, "clip_mean", n_mb)
    assert none.tolist() == [1.0] * 4


def test_clip_mean_term_by_hand():
    """L_echo = (1 / C) sum_c (1 / |c|) sum_{t in c} -log p_t, one mini-batch."""
    lp = -torch.tensor([[1.0, 2.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0], [3.0, 4.0, 5.0, 9.0], [6.0, 9.0, 9.0, 9.0]])
    d = echo_row_denominators(ECHO, RESP, "clip_mean", 1)
    term = echo_loss_term(lp, ECHO, d)
    assert term.item() == pytest.approx(((1 + 2) / 2 + (3 + 4 + 5) / 3 + 6 / 1) / 3, rel=1e-7)
    with pytest.raises(ValueError, match=r"one value per row \[b\]=\[4\], got \[3\]"):
        echo_loss_term(lp, ECHO, d[:3])


# ---------------------------------------------------------------------------- micro-batch invariance
def _policy_grad(split_sizes, loss_agg, per_micro_batch_norm=False):
    """Gradient of sum over micro-batches of echo_loss_term on a tiny log-linear policy (float64)."""
    g = torch.Generator().manual_seed(0)
    B, L, d, V = 8, 12, 6, 11
    feats = torch.randn(B, L, d, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, V, (B, L), generator=g)
    lengths = torch.tensor([12, 3, 9, 1, 12, 7, 5, 10])
    resp = (torch.arange(L) < lengths[:, None]).long()
    clip_len = torch.tensor([5, 0, 9, 1, 0, 2, 5, 4])  # uneven clip counts across micro-batches
    echo = torch.arange(L) < clip_len[:, None]
    W = torch.randn(d, V, generator=g, dtype=torch.float64, requires_grad=True)
    D = echo_row_denominators(echo, resp, loss_agg, num_minibatches=1)  # [B], fixed before the update
    total = torch.zeros((), dtype=torch.float64)
    start = 0
    for size in split_sizes:
        sl = slice(start, start + size)
        lp = torch.log_softmax(feats[sl] @ W, -1).gather(-1, tokens[sl, :, None]).squeeze(-1)  # [b, L]
        denom = max(float(echo[sl].sum()), 1.0) if per_micro_batch_norm else D[sl]
        total = total + echo_loss_term(lp, echo[sl], denom)
        start += size
    total.backward()
    return W.grad, total.detach()


@pytest.mark.parametrize("loss_agg", ["clip_mean", "clip_token_mean", "token_mean"])
def test_same_gradient_for_1_2_4_micro_batches(loss_agg):
    g1, l1 = _policy_grad([8], loss_agg)
    assert g1.abs().sum() > 0
    for split in ([4, 4], [2, 2, 2, 2], [1, 3, 2, 2], [3, 5]):
        g, loss = _policy_grad(split, loss_agg)
        # echo_loss_term returns float32, so the per-micro-batch terms carry float32 rounding
        torch.testing.assert_close(loss, l1, rtol=1e-6, atol=0)
        torch.testing.assert_close(g, g1, rtol=1e-6, atol=1e-12)


def test_a_per_micro_batch_count_would_break_invariance():
    """The control: normalising each micro-batch by its own clip count changes the gradient."""
    g1, _ = _policy_grad([8], "clip_token_mean")
    g4, _ = _policy_grad([2, 2, 2, 2], "clip_token_mean", per_micro_batch_norm=True)
    assert not torch.allclose(g1, g4, rtol=1e-3)


# ---------------------------------------------------------------------------- mode='advantage'
def test_apply_echo_advantage_adds_exactly_on_clip_tokens():
    adv = torch.tensor([[0.0, 0.0, 0.0], [0.5, -0.25, 1.0]])
    mask = torch.tensor([[True, True, False], [False, True, False]])
    before = adv.clone()
    out = apply_echo_advantage(adv, mask, 0.125)
    assert out.tolist() == [[0.125, 0.125, 0.0], [0.5, -0.125, 1.0]]
    assert torch.equal(adv, before) and out is not adv and out.dtype == adv.dtype
    with pytest.raises(ValueError, match=r"advantages \[2, 3\] and echo_mask \[2, 2\]"):
        apply_echo_advantage(adv, mask[:, :2], 0.1)
