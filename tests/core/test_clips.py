"""Tests of echorl/core/clips.py: eligibility, selectors and select_echo_clips (SPEC 2.2-2.3, 3).

Hand-computed cases for every rule, bad-input errors, and hypothesis tests against the literal
reference in ``tests/core/reference.py``.
Run: ``.venv/bin/python -m pytest -q tests/core/test_clips.py``.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from echorl import EchoConfig, select_echo_clips
from echorl.core import clips as clips_mod
from echorl.core.clips import SELECTORS, EchoBoundaryWarning, grad_token_fractions, reset_boundary_warnings
from echorl.core.steps import EchoSingleStepWarning

from .reference import ref_pooled_group_mask, ref_select_echo_clips

N, M = 198, 271
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
INF, NAN = float("inf"), float("nan")


def make(rows, ents, masks=None, dtype=torch.float64, device="cpu"):
    """Right-pad token rows and entropy rows into ``[B, L]`` tensors (+ the response mask)."""
    B, L = len(rows), max(len(r) for r in rows)
    resp = torch.zeros(B, L, dtype=torch.long)
    ent = torch.zeros(B, L, dtype=torch.float64)
    mask = torch.zeros(B, L, dtype=torch.long)
    for i, (r, e) in enumerate(zip(rows, ents)):
        resp[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        ent[i, : len(e)] = torch.tensor(e, dtype=torch.float64)
        mask[i, : len(r)] = 1 if masks is None or masks[i] is None else torch.tensor(masks[i])
    return resp.to(device), mask.to(device), ent.to(dtype).to(device)


def sel_of(rows, ents, scores, uids, cfg=None, masks=None, dtype=torch.float64, device="cpu", generator=None):
    resp, mask, ent = make(rows, ents, masks, dtype, device)
    s = torch.tensor(scores, dtype=torch.float32, device=device)
    return select_echo_clips(resp, mask, ent, s, uids, cfg or EchoConfig(boundary="fixed", preset="degenerate"), generator=generator)


def prefix(n, L):
    return [True] * n + [False] * (L - n)


# Tests of a single selection rule use the 'degenerate' preset (scope=degenerate, per=rollout), so
# every eligible row shows its own clip; the paper's default (per=group) is tested on its own below.

# ---------------------------------------------------------------------------- the peak clip
ROW_A = [5, 6, N, 7, 8, N, 9]  # steps [0:3] [3:6] [6]
ENT_A = [1, 1, 1, 3, 3, 3, 2]  # means 1, 3, 2 -> peak step 1
ROW_B = [5, N, 7, N, 9, 9]  # steps [0:2] [2:4] [4:6]
ENT_B = [4, 4, 1, 1, 2, 2]  # means 4, 1, 2 -> peak step 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_peak_clip_by_hand(device, dtype):
    sel = sel_of([ROW_A, ROW_B], [ENT_A, ENT_B], [1.0, 1.0], ["g", "g"], dtype=dtype, device=device)
    assert sel.mask.device.type == device and sel.mask.dtype == torch.bool
    assert sel.mask.cpu().tolist() == [prefix(6, 7), prefix(2, 7)]
    assert sel.clip_end_step.tolist() == [1, 0]
    assert sel.num_steps.tolist() == [3, 3]
    assert sel.peak_h.tolist() == [3.0, 4.0]
    assert sel.eligible.tolist() == [True, True]
    assert sel.metrics["echo/clips"] == 2 and sel.metrics["echo/clip_tokens"] == 8
    assert sel.metrics["echo/eligible_rollouts"] == 2
    assert sel.metrics["echo/clip_len_frac"] == pytest.approx((6 / 7 + 2 / 6) / 2)
    assert sel.metrics["echo/clip_end_step"] == pytest.approx(0.5)
    assert sel.metrics["echo/num_steps"] == pytest.approx(3.0)
    assert sel.metrics["echo/clip_end_step_rel"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert sel.metrics["echo/peak_h"] == pytest.approx(3.5)


# step 0: [3, \n:0]   mean 1.5  sum 3  max 3
# step 1: [1 x6, \n:1] mean 1   sum 7  max 1
# step 2: [2, \n:2]   mean 2    sum 4  max 2
ROW_AGG = [5, N, 6, 6, 6, 6, 6, 6, N, 7, N]
ENT_AGG = [3, 0, 1, 1, 1, 1, 1, 1, 1, 2, 2]


@pytest.mark.parametrize("agg, k, clip_len, h", [("mean", 2, 11, 2.0), ("sum", 1, 9, 7.0), ("max", 0, 2, 3.0)])
def test_step_agg_changes_the_peak(agg, k, clip_len, h):
    sel = sel_of([ROW_AGG], [ENT_AGG], [1.0], [0], EchoConfig(boundary="fixed", preset="degenerate", step_agg=agg))
    assert sel.clip_end_step.tolist() == [k] and sel.peak_h.tolist() == [h]
    assert sel.mask.tolist() == [prefix(clip_len, 11)]


@pytest.mark.parametrize(
    "selector, agg, ent, k",
    [
        ("peak", "mean", [2, 2, 1, 2, 2], 0),  # means 2, 1.5, 2: tie -> earliest
        ("peak", "max", [1, 3, 3, 0, 3], 0),  # maxima 3, 3, 3
        ("lowest", "mean", [1, 1, 2, 2, 1], 0),  # means 1, 2, 1: tie -> earliest
        ("lowest", "sum", [4, 0, 1, 1, 2], 1),  # sums 4, 2, 2
        ("full", "mean", [9, 9, 0, 0, 1], 2),
    ],
)
def test_ties_go_to_the_earliest_step(selector, agg, ent, k):
    sel = sel_of([[5, N, 6, N, 7]], [ent], [1.0], [0], EchoConfig(boundary="fixed", preset="degenerate", selector=selector, step_agg=agg))
    assert sel.clip_end_step.tolist() == [k]
    assert sel.mask.tolist() == [prefix([2, 4, 5][k], 5)]


# steps: [5,6,6,N] (4 tokens, mean 1), [7,N] (2, mean 5), [8,8,8,N] (4, mean 3), [9] (1, mean 9)
ROW_MIN = [5, 6, 6, N, 7, N, 8, 8, 8, N, 9]
ENT_MIN = [1, 1, 1, 1, 5, 5, 3, 3, 3, 3, 9]


@pytest.mark.parametrize(
    "min_tokens, selector, k, clip_len",
    [
        (1, "peak", 3, 11), (2, "peak", 1, 6), (3, "peak", 2, 10), (4, "peak", 2, 10), (5, "peak", -1, 0),
        (2, "full", 2, 10), (1, "full", 3, 11), (2, "lowest", 0, 4), (3, "lowest", 0, 4), (5, "lowest", -1, 0),
    ],
)
def test_min_step_tokens(min_tokens, selector, k, clip_len):
    cfg = EchoConfig(boundary="fixed", preset="degenerate", min_step_tokens=min_tokens, selector=selector)
    sel = sel_of([ROW_MIN], [ENT_MIN], [1.0], [0], cfg)
    assert sel.clip_end_step.tolist() == [k]
    assert sel.mask.tolist() == [prefix(clip_len, 11)]
    assert sel.eligible.tolist() == [True] and sel.num_steps.tolist() == [4]
    expected_h = {1: 9.0, 2: 5.0, 3: 3.0, 4: 3.0, 5: NAN}[min_tokens]
    assert (math.isnan(sel.peak_h.item()) and math.isnan(expected_h)) or sel.peak_h.item() == expected_h


def test_random_prefix_picks_the_floor_u_n_th_eligible_step():
    # 5 steps: [1,N] [2,N] [3,N] [4,N] [5]; with min_step_tokens=2 the last one is not eligible
    row = [1, N, 2, N, 3, N, 4, N, 5]
    ends = [2, 4, 6, 8, 9]
    B = 16
    for min_tokens, n in ((1, 5), (2, 4)):
        cfg = EchoConfig(boundary="fixed", preset="degenerate", selector="random_prefix", min_step_tokens=min_tokens, seed=7)
        u = torch.rand(B, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
        sel = sel_of([row] * B, [[1] * 9] * B, [1.0] * B, [0] * B, cfg, generator=torch.Generator().manual_seed(123))
        k = [math.floor(x * n) for x in u.tolist()]
        assert sel.clip_end_step.tolist() == k
        assert sel.mask.tolist() == [prefix(ends[j], 9) for j in k]
        assert len(set(k)) > 1  # the draw really varies across rows
        # without a generator the core seeds one with cfg.seed and the batch's fingerprint
        fp = sum((t % 1_000_003) * (j + 1) * (i + 1) for i in range(B) for j, t in enumerate(row))
        u7 = torch.rand(B, generator=torch.Generator().manual_seed(7 * 1_000_003 + fp), dtype=torch.float64)
        sel7 = sel_of([row] * B, [[1] * 9] * B, [1.0] * B, [0] * B, cfg)
        assert sel7.clip_end_step.tolist() == [math.floor(x * n) for x in u7.tolist()]


def test_random_prefix_without_generator_draws_differ_between_batches_and_repeat_on_the_same():
    """Two successive steps (different batches) draw different clips; the same batch draws the same."""
    g = torch.Generator().manual_seed(0)
    B, L = 32, 9
    cfg = EchoConfig(boundary="fixed", preset="degenerate", selector="random_prefix", seed=7)

    def batch():  # every row: 5 steps of 1 token + a newline N, tokens 1..5 drawn at random
        toks = torch.randint(1, 6, (B, 5), generator=g).tolist()
        return [[r[0], N, r[1], N, r[2], N, r[3], N, r[4]] for r in toks]

    b1, b2 = batch(), batch()
    s1 = sel_of(b1, [[1] * L] * B, [1.0] * B, [0] * B, cfg)
    s2 = sel_of(b2, [[1] * L] * B, [1.0] * B, [0] * B, cfg)
    assert s1.clip_end_step.tolist() != s2.clip_end_step.tolist()  # step to step: new draws
    assert sel_of(b1, [[1] * L] * B, [1.0] * B, [0] * B, cfg).clip_end_step.tolist() == s1.clip_end_step.tolist()
    other_seed = sel_of(b1, [[1] * L] * B, [1.0] * B, [0] * B, EchoConfig(boundary="fixed", preset="degenerate",
                                                                           selector="random_prefix", seed=8))
    assert other_seed.clip_end_step.tolist() != s1.clip_end_step.tolist()


def test_random_prefix_row_i_uses_u_i_even_when_earlier_rows_are_not_eligible():
    row = [1, N, 2, N, 3, N, 4, N, 5]
    B = 12
    scores = [0.0] * 6 + [1.0] * 6  # groups 0..5 fail, 6..11 succeed (one row per group)
    cfg = EchoConfig(boundary="fixed", preset="degenerate", selector="random_prefix")
    sel = sel_of([row] * B, [[1] * 9] * B, scores, list(range(B)), cfg, generator=torch.Generator().manual_seed(5))
    u = torch.rand(B, generator=torch.Generator().manual_seed(5), dtype=torch.float64).tolist()
    assert sel.clip_end_step.tolist() == [-1] * 6 + [math.floor(x * 5) for x in u[6:]]


# ---------------------------------------------------------------------------- which rollouts
GROUPS = {  # uid: scores of its two rollouts
    "fail": [0.0, 0.0],
    "mixed": [1.0, 0.0],
    "succ": [1.0, 1.0],
    "near": [1.0, 1.0 + 5e-7],
    "half": [0.5, 0.5],
    "above": [2.0, 2.0],
}


def group_batch(cfg):
    uids = [g for g in GROUPS for _ in range(2)]
    scores = torch.tensor([s for g in GROUPS for s in GROUPS[g]], dtype=torch.float64)
    resp, mask, ent = make([ROW_A] * len(uids), [ENT_A] * len(uids))
    return select_echo_clips(resp, mask, ent, scores, uids, cfg)


def test_paper_default_one_clip_per_group_from_successes_of_any_group():
    """Default preset 'paper': scope=success, per=group. Group g (all-success): ROW_A peaks at
    h=3, ROW_B at h=4 -> ROW_B's clip. Group m (mixed, ROW_A succeeds): its only success's clip.
    Group f (all-fail): nothing."""
    sel = sel_of([ROW_A, ROW_B, ROW_A, ROW_B, ROW_A, ROW_B], [ENT_A, ENT_B] * 3,
                 [1.0, 1.0, 1.0, 0.0, 0.0, 0.0], ["g", "g", "m", "m", "f", "f"], EchoConfig(boundary="fixed"))
    assert sel.eligible.tolist() == [True, True, True, False, False, False]
    assert sel.clip_end_step.tolist() == [-1, 0, 1, -1, -1, -1]
    assert sel.mask.tolist() == [prefix(0, 7), prefix(2, 7), prefix(6, 7)] + [prefix(0, 7)] * 3
    assert sel.clip_len.tolist() == [0, 2, 6, 0, 0, 0]
    m = sel.metrics
    assert (m["echo/clips"], m["echo/clips_from_all_success"], m["echo/clips_from_mixed"]) == (2, 1, 1)
    deg = sel_of([ROW_A, ROW_B, ROW_A, ROW_B], [ENT_A, ENT_B] * 2, [1.0, 1.0, 1.0, 0.0], ["g", "g", "m", "m"],
                 EchoConfig(boundary="fixed", preset="degenerate"))
    assert deg.clip_end_step.tolist() == [1, 0, -1, -1]
    assert (deg.metrics["echo/clips_from_all_success"], deg.metrics["echo/clips_from_mixed"]) == (2, 0)


@pytest.mark.parametrize(
    "kwargs, eligible_groups",
    [
        ({}, {"succ": [1, 1], "near": [1, 1], "above": [1, 1]}),
        ({"tol": 1e-7}, {"succ": [1, 1], "above": [1, 1]}),
        ({"tol": 0.0}, {"succ": [1, 1], "above": [1, 1]}),
        ({"success_threshold": 0.5}, {"succ": [1, 1], "near": [1, 1], "half": [1, 1], "above": [1, 1]}),
        ({"success_threshold": 1.5}, {"above": [1, 1]}),
        ({"scope": "success"}, {"mixed": [1, 0], "succ": [1, 1], "near": [1, 1], "above": [1, 1]}),
        ({"scope": "success", "success_threshold": 0.5},
         {"mixed": [1, 0], "succ": [1, 1], "near": [1, 1], "half": [1, 1], "above": [1, 1]}),
    ],
)
def test_eligibility(kwargs, eligible_groups):
    sel = group_batch(EchoConfig(boundary="fixed", preset="degenerate", **kwargs))
    expected = [bool(x) for g in GROUPS for x in eligible_groups.get(g, [0, 0])]
    assert sel.eligible.tolist() == expected
    assert sel.mask.tolist() == [prefix(6, 7) if e else prefix(0, 7) for e in expected]
    assert sel.clip_end_step.tolist() == [1 if e else -1 for e in expected]
    assert sel.num_steps.tolist() == [3 if e else 0 for e in expected]


def test_group_metrics():
    m = group_batch(EchoConfig(boundary="fixed", preset="degenerate")).metrics
    assert m["echo/groups_all_success_frac"] == pytest.approx(3 / 6)  # succ, near, above
    assert m["echo/groups_all_fail_frac"] == pytest.approx(2 / 6)  # fail, half
    assert m["echo/groups_mixed_frac"] == pytest.approx(1 / 6)
    assert m["echo/groups_zero_var_frac"] == pytest.approx(5 / 6)
    assert m["echo/groups_degenerate_success_frac"] == pytest.approx(3 / 6)
    assert m["echo/eligible_rollouts"] == 6 and m["echo/clips"] == 6 and m["echo/clip_tokens"] == 36
    # the gradient-token fractions need advantages: run_echo_stage adds them (grad_token_fractions)
    assert "echo/grad_token_frac_base" not in m and "echo/grad_token_frac_echo" not in m


def test_grad_token_fractions_hand_case():
    # 2 rows x 5 positions; valid: 4 + 3 = 7 tokens. Non-zero advantage on valid tokens: row 0's
    # first 2 (its last valid token has advantage 0), row 1 none; a padded position with a
    # non-zero advantage does not count. Clip: row 0's first 3 tokens (2 already carry gradient,
    # 1 new), row 1's first 2 (new), and a clip bit on padding (ignored).
    adv = torch.tensor([[0.5, -0.5, 0.0, 0.0, 9.0], [0.0, 0.0, 0.0, 7.0, 7.0]])
    valid = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    clip = torch.tensor([[1, 1, 1, 0, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    m = grad_token_fractions(adv, valid, clip)
    assert m == {"echo/grad_token_frac_base": pytest.approx(2 / 7), "echo/grad_token_frac_echo": pytest.approx(5 / 7)}
    assert clip.tolist()[0] == [True, True, True, False, True]  # the caller's mask is not changed


def test_padding_rows_are_never_members_nor_eligible():
    # rows 0-1: a real all-success group "a"; row 2: padding row with uid "a" and score 0;
    # rows 3-4: padding rows sharing uid "pad" with score 0. Padding rows have an empty mask.
    resp, mask, ent = make([ROW_A] * 5, [ENT_A] * 5)
    mask[2:] = 0
    scores = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])
    for uids in (["a", "a", "a", "pad", "pad"], torch.tensor([3, 3, 3, 9, 9])):
        for scope in ("degenerate", "success"):
            sel = select_echo_clips(resp, mask, ent, scores, uids, EchoConfig(boundary="fixed", preset="degenerate", scope=scope))
            assert sel.eligible.tolist() == [True, True, False, False, False]
            assert sel.mask.tolist() == [prefix(6, 7)] * 2 + [prefix(0, 7)] * 3
            assert sel.metrics["echo/groups_all_success_frac"] == 1.0  # one real group
            assert sel.metrics["echo/groups_all_fail_frac"] == 0.0
    # a padding row with a score of 1 is still not eligible (empty mask)
    sel = select_echo_clips(resp, mask, ent, torch.ones(5), ["a"] * 5, EchoConfig(boundary="fixed", preset="degenerate", scope="success"))
    assert sel.eligible.tolist() == [True, True, False, False, False]


def test_a_batch_of_empty_rows_selects_nothing_and_does_not_warn(monkeypatch):
    monkeypatch.setattr(clips_mod, "_warned_no_boundary", set())
    resp, mask, ent = make([ROW_A] * 2, [ENT_A] * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sel = select_echo_clips(resp, torch.zeros_like(mask), ent, torch.ones(2), [0, 0], EchoConfig(boundary="fixed", preset="degenerate"))
    assert not sel.mask.any() and not sel.eligible.any()
    assert sel.metrics["echo/clips"] == 0 and sel.metrics["echo/groups_all_success_frac"] == 0.0


# ---------------------------------------------------------------------------- per='group'
def test_per_group_keeps_the_largest_peak_first_row_on_ties():
    # group 0: peak h 2, 3, 3 -> row 1; group 1: peak h 5, 4 -> row 3
    rows = [[5, N, 6]] * 5
    ents = [[2, 2, 1], [3, 3, 1], [1, 1, 3], [5, 5, 0], [4, 4, 4]]
    uids = ["x", "x", "x", "y", "y"]
    sel = sel_of(rows, ents, [1.0] * 5, uids, EchoConfig(boundary="fixed", preset="degenerate", per="group"))
    assert sel.clip_end_step.tolist() == [-1, 0, -1, 0, -1]
    assert sel.mask.tolist() == [prefix(0, 3), prefix(2, 3), prefix(0, 3), prefix(2, 3), prefix(0, 3)]
    assert sel.eligible.tolist() == [True] * 5  # eligibility is before `per`
    assert sel.peak_h.tolist() == [2, 3, 3, 5, 4]
    # whatever the selector, the row is chosen by its peak h; the clip ends at the selector's step
    sel = sel_of(rows, ents, [1.0] * 5, uids, EchoConfig(boundary="fixed", preset="degenerate", per="group", selector="lowest"))
    assert sel.clip_end_step.tolist() == [-1, 1, -1, 1, -1]
    assert sel.mask.tolist() == [prefix(0, 3), prefix(3, 3), prefix(0, 3), prefix(3, 3), prefix(0, 3)]


def test_per_group_skips_rows_without_a_clip():
    # min_step_tokens=2: row 0 has one eligible step (mean 1) and an ineligible 1-token step with
    # entropy 10; row 1's eligible step has mean 2 -> row 1; row 2 (group z) has no eligible step.
    rows = [[5, N, 9], [5, N, 9], [9]]
    ents = [[1, 1, 10], [2, 2, 0], [7]]
    sel = sel_of(rows, ents, [1.0] * 3, [0, 0, 1], EchoConfig(boundary="fixed", preset="degenerate", per="group", min_step_tokens=2))
    assert sel.clip_end_step.tolist() == [-1, 0, -1]
    assert sel.mask.tolist() == [prefix(0, 3), prefix(2, 3), prefix(0, 3)]
    assert sel.peak_h.tolist()[:2] == [1.0, 2.0] and math.isnan(sel.peak_h[2].item())


def test_uid_types_give_the_same_selection():
    rows, ents = [ROW_A, ROW_B, ROW_A, ROW_B], [ENT_A, ENT_B, ENT_A, ENT_B]
    scores = [1.0, 1.0, 1.0, 0.0]
    expected = [prefix(6, 7), prefix(2, 7), prefix(0, 7), prefix(0, 7)]
    for uids in (["p", "p", "q", "q"], torch.tensor([7, 7, -2, -2]), [("p", 1), ("p", 1), ("q", 1), ("q", 1)],
                 ["p", "p", 3, 3], torch.tensor([1, 1, 0, 0], dtype=torch.int32)):
        assert sel_of(rows, ents, scores, uids).mask.tolist() == expected


def test_response_mask_dtypes_and_holes():
    resp, mask, ent = make([ROW_A], [ENT_A])
    mask[0, 3] = 0  # a hole inside step 1: the token is neither in the step nor in the clip
    ent[0, 3] = 100.0  # ... so its entropy is not counted
    expected = [[True, True, True, False, True, True, False]]
    for m in (mask, mask.bool(), mask.float(), mask.int()):
        sel = select_echo_clips(resp, m, ent, torch.ones(1), [0], EchoConfig(boundary="fixed", preset="degenerate"))
        assert sel.mask.tolist() == expected and sel.peak_h.tolist() == [3.0]


def test_nan_entropy_at_masked_positions_is_ignored():
    resp, mask, ent = make([ROW_A, ROW_A[:4]], [ENT_A, ENT_A[:4]])
    ent[1, 4:] = NAN  # padding of row 1
    ent[0, 6] = INF
    mask[0, 6] = 0
    sel = select_echo_clips(resp, mask, ent, torch.ones(2), [0, 0], EchoConfig(boundary="fixed", preset="degenerate", step_agg="max"))
    assert sel.mask.tolist() == [prefix(6, 7), prefix(4, 7)]


# ---------------------------------------------------------------------------- the boundary warning
def test_no_boundary_is_one_step_and_warns_once(monkeypatch):
    monkeypatch.setattr(clips_mod, "_warned_no_boundary", set())
    rows, ents = [[5, 6, 7, 8], [5, 6]], [[1, 2, 3, 4], [1, 1]]
    with pytest.warns(EchoBoundaryWarning, match=r"no response in this batch contains a boundary token \[198, 271\]"):
        sel = sel_of(rows, ents, [1.0, 1.0], [0, 0])
    assert sel.mask.tolist() == [prefix(4, 4), prefix(2, 4)]  # one step: the whole response
    assert sel.num_steps.tolist() == [1, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # second batch: no second warning
        sel_of(rows, ents, [1.0, 0.0], [0, 0])
    # a batch with a boundary never warns, even when the warning was not yet given for its ids
    monkeypatch.setattr(clips_mod, "_warned_no_boundary", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sel_of([[5, 6], [5, N]], [[1, 1], [1, 1]], [0.0, 0.0], [0, 0])


def test_no_boundary_warning_when_no_row_is_eligible(monkeypatch):
    monkeypatch.setattr(clips_mod, "_warned_no_boundary", set())
    with pytest.warns(EchoBoundaryWarning):
        sel_of([[5, 6, 7, 8]], [[1, 2, 3, 4]], [0.0], [0])


# ---------------------------------------------------------------------------- steps per response
def test_steps_per_response_and_single_step_frac_by_hand():
    """Means over the eligible rows: scope=success -> the successes (rows 0, 1, 3: 3, 1 and 2 steps;
    the failed row 2 with 4 steps and the empty row 4 do not count); scope=degenerate -> only group
    'a' (rows 0, 1)."""
    rows = [ROW_A, [5, 6, N], [5, N, 6, N, 7, N, 8], [5, N, N, 6], [0]]
    ents = [[1] * len(r) for r in rows]
    masks = [None, None, None, None, [0]]
    m = sel_of(rows, ents, [1.0, 1.0, 0.0, 1.0, 0.0], ["a", "a", "b", "b", "pad"],
               EchoConfig(boundary="fixed"), masks=masks).metrics
    assert m["echo/eligible_rollouts"] == 3.0
    assert m["echo/steps_per_response"] == 2.0 and m["echo/single_step_frac"] == pytest.approx(1 / 3)
    deg = sel_of(rows, ents, [1.0, 1.0, 0.0, 1.0, 0.0], ["a", "a", "b", "b", "pad"],
                 EchoConfig(boundary="fixed", preset="degenerate"), masks=masks).metrics
    assert (deg["echo/steps_per_response"], deg["echo/single_step_frac"]) == (2.0, 0.5)
    none = sel_of(rows, ents, [0.0] * 5, list("abcde"), EchoConfig(boundary="fixed"), masks=masks).metrics
    assert (none["echo/steps_per_response"], none["echo/single_step_frac"]) == (0.0, 0.0)  # no eligible row


def _single_step_batch(n_single: int, n_multi: int):
    """``n_single`` one-step successes (a trailing boundary only) and ``n_multi`` two-step ones."""
    rows = [[5, 6, N]] * n_single + [[5, N, 6]] * n_multi
    return rows, [[1.0] * 3] * len(rows), [1.0] * len(rows), list(range(len(rows)))


def test_most_successes_single_step_warns_once_per_run(monkeypatch):
    monkeypatch.setattr(clips_mod, "_warned_single_step", set())
    rows, ents, scores, uids = _single_step_batch(5, 3)
    cfg = EchoConfig(boundary="fixed")
    with pytest.warns(EchoSingleStepWarning) as rec:
        sel = sel_of(rows, ents, scores, uids, cfg)
    assert len(rec) == 1 and sel.metrics["echo/single_step_frac"] == 5 / 8
    msg = str(rec[0].message)
    assert "5 of 8 successful responses of this batch are a single step" in msg
    assert "echorl.boundary=fixed the steps end only at [198, 271]" in msg and "Fix: echorl.boundary=auto" in msg
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same run: not again
        sel_of(rows, ents, scores, uids, cfg)
    reset_boundary_warnings()  # a new run (the hosts call it at start-up)
    with pytest.warns(EchoSingleStepWarning):
        sel_of(rows, ents, scores, uids, cfg)
    auto = EchoConfig(boundary="auto", boundary_token_ids=(N, M))  # as resolved from a tokenizer
    with pytest.warns(EchoSingleStepWarning, match=r"echorl.boundary=auto uses this tokenizer's 2 newline-ending"):
        sel_of(rows, ents, scores, uids, auto)


@pytest.mark.parametrize("n_single, n_multi", [(4, 4), (7, 0)])
def test_no_single_step_warning_for_half_or_fewer_than_8_rows(monkeypatch, n_single, n_multi):
    """4 of 8 is not most; 7 one-step successes are too few to judge the boundaries by."""
    monkeypatch.setattr(clips_mod, "_warned_single_step", set())
    rows, ents, scores, uids = _single_step_batch(n_single, n_multi)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sel_of(rows, ents, scores, uids, EchoConfig(boundary="fixed"))


# ---------------------------------------------------------------------------- bad input
def good_inputs():
    resp, mask, ent = make([ROW_A, ROW_B], [ENT_A, ENT_B])
    return dict(responses=resp, response_mask=mask, entropy=ent.float(), scores=torch.ones(2), group_ids=[0, 0],
                cfg=EchoConfig(boundary="fixed", preset="degenerate"))


def _nan_at_valid(d):
    d["entropy"] = d["entropy"].clone()
    d["entropy"][1, 2] = NAN


def _inf_at_valid(d):
    d["entropy"] = d["entropy"].clone()
    d["entropy"][0, 0] = -INF


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda d: d.update(responses=d["responses"][0]), r"responses must have shape \[B, L\]"),
        (lambda d: d.update(responses=d["responses"].float()), "responses must hold integer token ids"),
        (lambda d: d.update(responses=d["responses"].tolist()), "responses must be a torch.Tensor"),
        (lambda d: d.update(response_mask=d["response_mask"][:, :5]), "response_mask must have the shape"),
        (lambda d: d.update(response_mask=d["response_mask"].to(torch.complex64)), "response_mask must be bool"),
        (lambda d: d.update(entropy=d["entropy"][:1]), "entropy must have the shape"),
        (lambda d: d.update(entropy=d["entropy"].long()), "entropy must be a floating tensor"),
        (lambda d: d.update(entropy=d["entropy"].numpy()), "entropy must be a torch.Tensor"),
        (_nan_at_valid, r"entropy has NaN or inf at 1 valid response positions \(rows \[1\]"),
        (_inf_at_valid, r"entropy has NaN or inf at 1 valid response positions \(rows \[0\]"),
        (lambda d: d.update(scores=torch.ones(3)), r"scores must have shape \[B\]=\[2\]"),
        (lambda d: d.update(scores=torch.ones(2, 1)), r"scores must have shape \[B\]=\[2\]"),
        (lambda d: d.update(scores=torch.tensor([1.0, NAN])), r"scores contain NaN or inf \(rows \[1\]"),
        (lambda d: d.update(scores=torch.tensor([INF, 1.0])), r"scores contain NaN or inf \(rows \[0\]"),
        (lambda d: d.update(scores=torch.ones(2, dtype=torch.bool)), "scores must be a real tensor"),
        (lambda d: d.update(group_ids=[0, 0, 0]), "group_ids must be a sequence of B=2 uids, got length 3"),
        (lambda d: d.update(group_ids="ab"), "group_ids must be a sequence of B=2 uids, got a string"),
        (lambda d: d.update(group_ids=torch.zeros(3, dtype=torch.long)), r"group_ids must have shape \[B\]=\[2\]"),
        (lambda d: d.update(group_ids=torch.zeros(2)), "group_ids must be an integer tensor"),
        (lambda d: d.update(cfg={"scope": "success"}), "cfg must be an EchoConfig"),
        (lambda d: d.update(cfg=EchoConfig(boundary="auto", boundary_token_ids=())), "cfg.boundary_token_ids is empty"),
    ],
)
def test_bad_input_names_the_argument(change, match):
    d = good_inputs()
    change(d)
    with pytest.raises(ValueError, match=match):
        select_echo_clips(d["responses"], d["response_mask"], d["entropy"], d["scores"], d["group_ids"], d["cfg"])


def test_unknown_selector_lists_valid_names():
    with pytest.raises(ValueError, match=r"selector: unknown name 'best'; valid names are \['full', 'lowest', 'peak', 'random_prefix'\]"):
        SELECTORS.get("best")


# ---------------------------------------------------------------------------- against the reference
@st.composite
def batches(draw):
    B = draw(st.integers(1, 8))
    L = draw(st.integers(1, 20))
    p_b = draw(st.sampled_from([0.0, 0.15, 0.4, 0.9]))
    p_hole = draw(st.sampled_from([0.0, 0.0, 0.25]))
    n_groups = draw(st.integers(1, 3))
    tokens, mask, ent = [], [], []
    for _ in range(B):
        n = draw(st.integers(0, L))  # right padding after n
        tokens.append([draw(st.sampled_from([N, M])) if draw(st.floats(0, 1)) < p_b else draw(st.integers(0, 5)) for _ in range(L)])
        mask.append([int(t < n and draw(st.floats(0, 1)) >= p_hole) for t in range(L)])
        ent.append([draw(st.integers(0, 24)) / 8 for _ in range(L)])  # dyadic grid: exact, real ties
    groups = [draw(st.integers(0, n_groups - 1)) for _ in range(B)]
    scores = [draw(st.sampled_from([0.0, 0.5, 1.0, 1.0, 1.0, 1.0 + 2e-7, 2.0])) for _ in range(B)]
    cfg = EchoConfig(
        boundary_token_ids=draw(st.sampled_from([(N, M), (N,)])),
        scope=draw(st.sampled_from(["degenerate", "success"])),
        per=draw(st.sampled_from(["rollout", "group"])),
        step_agg=draw(st.sampled_from(["mean", "sum", "max"])),
        min_step_tokens=draw(st.integers(1, 3)),
        selector=draw(st.sampled_from(["peak", "lowest", "full", "random_prefix"])),
        success_threshold=draw(st.sampled_from([1.0, 0.5])),
        tol=draw(st.sampled_from([1e-6, 0.0])),
        seed=draw(st.integers(0, 3)),
    )
    dtype = draw(st.sampled_from([torch.float64, torch.float32, torch.bfloat16, torch.float16]))
    uid_kind = draw(st.sampled_from(["tensor", "str"]))
    uids = torch.tensor(groups) if uid_kind == "tensor" else [f"uid-{g}" for g in groups]
    return (torch.tensor(tokens), torch.tensor(mask), torch.tensor(ent, dtype=torch.float64).to(dtype),
            torch.tensor(scores, dtype=torch.float64), uids, cfg)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(batches(), st.booleans())
def test_select_echo_clips_matches_reference(batch, pass_generator):
    resp, mask, ent, scores, uids, cfg = batch
    before = [t.clone() for t in (resp, mask, ent, scores)]
    uids_before = uids.clone() if torch.is_tensor(uids) else list(uids)
    gen_core = torch.Generator().manual_seed(11) if pass_generator else None
    gen_ref = torch.Generator().manual_seed(11) if pass_generator else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EchoBoundaryWarning)
        sel = select_echo_clips(resp, mask, ent, scores, uids, cfg, generator=gen_core)
    ref = ref_select_echo_clips(resp, mask, ent, scores, uids, cfg, generator=gen_ref)

    assert torch.equal(sel.mask, ref.mask)
    assert torch.equal(sel.eligible, ref.eligible)
    assert torch.equal(sel.clip_end_step, ref.clip_end_step)
    assert torch.equal(sel.num_steps, ref.num_steps)
    assert torch.allclose(sel.peak_h, torch.tensor(ref.peak_h, dtype=torch.float64), rtol=1e-6, atol=0, equal_nan=True)

    # invariants: inputs unchanged; clip mask within the response mask and a prefix of its valid positions
    for a, b in zip((resp, mask, ent, scores), before):
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan()))
    assert (torch.equal(uids, uids_before) if torch.is_tensor(uids) else uids == uids_before)
    valid = mask != 0
    assert not (sel.mask & ~valid).any()
    for i in range(resp.shape[0]):
        pos = valid[i].nonzero().flatten()
        n_clip = int(sel.mask[i].sum())
        assert sel.mask[i, pos[:n_clip]].all()
        assert (n_clip > 0) == (sel.clip_end_step[i].item() >= 0)
    if cfg.per == "group" and cfg.selector == "peak":  # the paper's pooled-steps wording, literally
        assert torch.equal(sel.mask, ref_pooled_group_mask(resp, mask, ent, scores, uids, cfg))
    if cfg.per == "group":  # at most one clip per group
        g = uids.tolist() if torch.is_tensor(uids) else uids
        clipped = [g[i] for i in range(len(g)) if sel.clip_end_step[i] >= 0]
        assert len(clipped) == len(set(clipped))


def test_method_doc_worked_example():
    """The worked example of docs/method.md."""
    T = [11, 12, N, 13, 14, 15, N, N, 16, M, 17]
    H = [0.5, 0.5, 0.2, 2.0, 1.0, 2.4, 0.3, 0.3, 0.8, 0.2, 0.1]
    for agg in ("mean", "sum", "max"):
        sel = sel_of([T], [H], [1.0], [0], EchoConfig(boundary="fixed", step_agg=agg))
        assert sel.clip_end_step.tolist() == [1] and sel.mask.tolist() == [prefix(8, 11)]
    assert sel_of([T], [H], [1.0], [0], EchoConfig(boundary="fixed", selector="lowest")).mask.tolist() == [prefix(11, 11)]
    assert sel_of([T], [H], [1.0], [0], EchoConfig(boundary="fixed", min_step_tokens=6)).clip_end_step.tolist() == [-1]
    hole = [[1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1]]
    sel = sel_of([T], [H], [1.0], [0], masks=hole)
    assert sel.peak_h.item() == pytest.approx(1.25)
    assert sel.mask.tolist() == [[True] * 4 + [False] + [True] * 3 + [False] * 3]
    # its group: A (this rollout), B = [x, \n, y, z] with h 0.9 then 0.45, C failed
    B_ = [21, N, 22, 23]
    rows, ents = [T, B_, B_], [H, [0.9, 0.9, 0.5, 0.4], [0.9, 0.9, 0.5, 0.4]]
    sel = sel_of(rows, ents, [1.0, 1.0, 0.0], [0, 0, 0], EchoConfig(boundary="fixed"))
    assert sel.clip_end_step.tolist() == [1, -1, -1] and sel.mask[0].tolist() == prefix(8, 11)
    assert sel.peak_h[1].item() == pytest.approx(0.9)  # B was a candidate, its peak lost to A's 1.2
    assert not sel_of(rows, ents, [1.0, 1.0, 0.0], [0, 0, 0], EchoConfig(boundary="fixed", preset="degenerate")).mask.any()
    from echorl import echo_row_denominators

    assert echo_row_denominators(sel.mask, sel.mask, "clip_mean", 1).tolist() == [8.0, 1.0, 1.0]
    two = sel.mask.clone()
    two[1, :4] = True  # a second clip of 4 tokens in the batch
    assert echo_row_denominators(two, two, "clip_mean", 1).tolist() == [16.0, 8.0, 1.0]


@pytest.mark.parametrize("agg", ["mean", "sum", "max"])
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("all_eligible", [True, False])
def test_non_finite_entropy_at_a_valid_position_is_refused(agg, bad, all_eligible):
    """Whether or not every row is eligible (then the check rides on the step aggregates)."""
    resp = torch.tensor([[5, N, 6, 7]] * 3)
    mask = torch.ones(3, 4, dtype=torch.long)
    mask[0, 3] = 0
    ent = torch.ones(3, 4)
    scores = torch.tensor([1.0, 1.0, 1.0 if all_eligible else 0.0])
    ent[0, 3] = bad  # masked: ignored
    sel = select_echo_clips(resp, mask, ent, scores, [0, 0, 1], EchoConfig(boundary="fixed", step_agg=agg))
    assert sel.eligible.tolist() == [True, True, all_eligible]
    ent[2, 2] = bad  # valid position of row 2
    with pytest.raises(ValueError, match=r"entropy has NaN or inf at 1 valid response positions \(rows \[2\]"):
        select_echo_clips(resp, mask, ent, scores, [0, 0, 1], EchoConfig(boundary="fixed", step_agg=agg))


def test_default_generator_fingerprint_over_several_row_chunks_is_the_literal_one():
    """The fingerprint is summed over row chunks (bounded temporaries); at L=8192 a chunk is 64 rows,
    so 130 rows take three passes: the seed must equal the literal one-pass sum of the docstring."""
    from echorl.core.clips import default_generator

    g = torch.Generator().manual_seed(5)
    for B, L in ((130, 8192), (3, 7)):
        toks = torch.randint(0, 160_000, (B, L), generator=g)
        col = torch.arange(1, L + 1, dtype=torch.long)
        row = torch.arange(1, B + 1, dtype=torch.long)
        fp = int((((toks % 1_000_003) * col).sum(dim=1) * row).sum())
        want = torch.rand(8, generator=torch.Generator().manual_seed((11 * 1_000_003 + fp) % (2**63 - 1)))
        assert torch.equal(torch.rand(8, generator=default_generator(toks, 11)), want)
