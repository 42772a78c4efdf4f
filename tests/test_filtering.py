"""Tests of echorl/filtering.py: DAPO dynamic sampling with EchoRL (SPEC 2.7).

Which rows enter the RL term and which the EchoRL term, for every scope x filter on/off x
keep_filtered on a batch with known groups; mini-batch cutting with kept rows.
Run: ``.venv/bin/python -m pytest -q tests/test_filtering.py``.
"""

from __future__ import annotations

import pytest
import torch

from echorl import EchoConfig, run_echo_stage
from echorl.filtering import (
    FilterConfig,
    check_filter_groups,
    plan_rows,
    rl_response_mask,
    split_minibatches,
    zero_variance_rows,
)

N = 198
# Groups of two rollouts [5, 6, N, 7] with flat entropy: every eligible row has a clip of its first
# step (3 tokens, ties go to the earliest step).
#   A rows 0-1 all-success, equal scores     B rows 2-3 mixed (row 2 succeeds)
#   C rows 4-5 all-fail                      D rows 6-7 all-success, scores 1.0 / 1.5
#   E row 8 a single success (a group of one is never zero-variance in verl's rule)
SCORES = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.5, 1.0])
GROUPS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4])
B, L = 9, 4


def stage_rows(scope: str, filter_on: bool, keep: bool, metric: str = "acc"):
    """(RL rows, EchoRL rows) of the batch after dynamic sampling, as the hosts run it."""
    echo = EchoConfig(boundary="fixed", scope=scope, per="rollout", keep_filtered=keep)
    plan = plan_rows(SCORES, GROUPS, FilterConfig(enable=filter_on, metric=metric), echo)
    kept = plan.rl | plan.echo_only
    idx = kept.nonzero().flatten()
    resp = torch.tensor([[5, 6, N, 7]] * B)[idx]
    mask = torch.ones(B, L, dtype=torch.long)[idx]
    out = run_echo_stage(resp, mask, torch.ones(len(idx), L), SCORES[idx], GROUPS[idx], echo,
                         echo_only=plan.echo_only[idx])
    echo_rows = idx[out.echo_mask.any(dim=1)].tolist()
    assert not (plan.rl & plan.echo_only).any()
    return plan.rl.nonzero().flatten().tolist(), echo_rows, out.metrics


ALL = list(range(B))


@pytest.mark.parametrize(
    "scope, filter_on, keep, rl, echo_rows",
    [
        # no dynamic sampling: every row is an RL row; keep_filtered has nothing to keep
        ("success", False, False, ALL, [0, 1, 2, 6, 7, 8]),
        ("degenerate", False, False, ALL, [0, 1, 8]),  # E: one success, trivially zero-variance
        # dynamic sampling on acc: A, C and D (all acc=1) are dropped; B and the single E survive
        ("success", True, False, [2, 3, 8], [2, 8]),
        # kept: the dropped all-success groups A and D give their clips, C (all-fail) does not
        ("success", True, True, [2, 3, 8], [0, 1, 2, 6, 7, 8]),
        ("degenerate", True, True, [2, 3, 8], [0, 1, 8]),  # D's scores differ: not degenerate
    ],
)
def test_rows_of_the_rl_and_echorl_terms(scope, filter_on, keep, rl, echo_rows):
    got_rl, got_echo, m = stage_rows(scope, filter_on, keep)
    assert got_rl == rl and got_echo == echo_rows
    if filter_on and keep:
        assert m["echo/kept_rows"] == 4.0  # A and D
        kept_clips = len([r for r in echo_rows if r in (0, 1, 6, 7)])
        assert m["echo/clips_from_kept"] == kept_clips and m["echo/kept_clip_tokens"] == 3.0 * kept_clips


def test_filter_on_score_keeps_groups_with_different_scores():
    rl, echo_rows, _ = stage_rows("success", True, True, metric="score")
    assert rl == [2, 3, 6, 7, 8]  # D (1.0 vs 1.5) has score variance
    assert echo_rows == [0, 1, 2, 6, 7, 8]


def test_refused_combinations_say_why():
    with pytest.raises(ValueError, match=r"scope=degenerate would select nothing.*all-success zero-variance"):
        check_filter_groups(True, EchoConfig(preset="degenerate"))
    with pytest.raises(ValueError, match=r"keep_filtered=true.*filter_groups.enable=false"):
        check_filter_groups(False, EchoConfig(keep_filtered=True))
    check_filter_groups(True, EchoConfig())  # paper scope: allowed
    check_filter_groups(True, EchoConfig(preset="degenerate", enable=False))  # the DAPO baseline
    check_filter_groups(True, EchoConfig(preset="degenerate", keep_filtered=True))  # kept groups give clips
    with pytest.raises(ValueError, match=r"keep_filtered=true with echorl.mode='advantage'.*train nothing"):
        check_filter_groups(True, EchoConfig(keep_filtered=True, mode="advantage", adv_coef=0.1))
    with pytest.raises(ValueError, match=r"filter_groups.metric must be one of"):
        FilterConfig.from_node({"enable": True, "metric": "bleu"})
    with pytest.raises(ValueError, match=r"max_num_gen_batches must be an int >= 0"):
        FilterConfig.from_node({"enable": True, "metric": "acc", "max_num_gen_batches": -1})


def test_zero_variance_is_exact_and_needs_two_rows():
    v = torch.tensor([1.0, 1.0, 1.0, 1.0 + 1e-9, 0.5, 2.0, 2.0], dtype=torch.float64)
    g = torch.tensor([0, 0, 1, 1, 2, 3, 3])
    assert zero_variance_rows(v, g).tolist() == [True, True, False, False, False, True, True]


def test_rl_response_mask_zeroes_only_kept_rows():
    m = torch.ones(3, 4, dtype=torch.long)
    assert rl_response_mask(m, None) is m
    assert rl_response_mask(m, torch.zeros(3, dtype=torch.bool)) is m
    out = rl_response_mask(m, torch.tensor([False, True, False]))
    assert out.tolist() == [[1] * 4, [0] * 4, [1] * 4] and out.dtype == m.dtype


def test_split_minibatches_deals_kept_rows_over_the_rl_minibatches():
    order = torch.tensor([7, 0, 1, 2, 3, 4, 5, 6])
    kept = torch.zeros(8, dtype=torch.bool)
    kept[[1, 5, 6]] = True
    chunks = split_minibatches(order, kept, 3)
    # RL rows in order: 7 0 2 3 4 -> [7 0 2] [3 4]; kept rows in order 1 5 6 -> dealt 1, 5, 6
    assert [c.tolist() for c in chunks] == [[7, 0, 2, 1, 6], [3, 4, 5]]
    plain = split_minibatches(order, None, 3)
    assert [c.tolist() for c in plain] == [[7, 0, 1], [2, 3, 4], [5, 6]]
