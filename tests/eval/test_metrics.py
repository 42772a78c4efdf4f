"""echorl/eval/metrics.py: estimators against hand-computed values and the literal formulas."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from echorl.eval.metrics import avg_at_k, ks_for, maj_at_k, majority_vote, pass_at_k, problem_metrics


def literal_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """The definition, exactly: 1 - C(n-c, k) / C(n, k) (math.comb is 0 when n-c < k)."""
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


@pytest.mark.parametrize("n,c,k,expected", [
    (4, 1, 1, 0.25),          # c/n
    (4, 1, 2, 0.5),           # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (4, 2, 2, 5 / 6),         # 1 - C(2,2)/C(4,2) = 1 - 1/6
    (5, 2, 3, 0.9),           # 1 - C(3,3)/C(5,3) = 1 - 1/10
    (8, 3, 4, 13 / 14),       # 1 - C(5,4)/C(8,4) = 1 - 5/70
    (10, 0, 5, 0.0),          # c = 0
    (10, 10, 3, 1.0),         # c = n
    (6, 3, 6, 1.0),           # n = k, some correct
    (6, 0, 6, 0.0),           # n = k, none correct
    (6, 5, 2, 1.0),           # n - c < k: every pair holds a correct sample
])
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-15)


def test_pass_at_k_equals_literal_formula_on_a_grid():
    for n in range(1, 21):
        for c in range(0, n + 1):
            for k in range(1, n + 1):
                assert abs(pass_at_k(n, c, k) - float(literal_pass_at_k(n, c, k))) < 1e-12, (n, c, k)


def test_pass_at_k_stable_for_large_n():
    # C(1000, 500) has 300 digits: the product form never builds it
    for n, c, k in ((1000, 3, 500), (1000, 1, 1), (1000, 999, 1), (512, 17, 64)):
        assert abs(pass_at_k(n, c, k) - float(literal_pass_at_k(n, c, k))) < 1e-12


@pytest.mark.parametrize("n,c,k,field", [(4, 1, 5, "k"), (4, 5, 1, "c"), (4, -1, 1, "c"), (0, 0, 1, "n"),
                                         (4, 1, 0, "k")])
def test_pass_at_k_rejects_bad_counts(n, c, k, field):
    with pytest.raises(ValueError, match=f"{field} "):
        pass_at_k(n, c, k)


def test_ks_for():
    assert ks_for(1) == [1]
    assert ks_for(2) == [1, 2]
    assert ks_for(4) == [1, 2, 4]
    assert ks_for(6) == [1, 2, 4, 6]
    assert ks_for(16) == [1, 2, 4, 8, 16]


def test_avg_at_k():
    assert avg_at_k([1, 0, 0, 1]) == 0.5
    assert avg_at_k([0.5]) == 0.5
    with pytest.raises(ValueError):
        avg_at_k([])


def test_majority_vote_ties_go_to_the_first_answer_in_sample_order():
    assert majority_vote(["a", "b", "b", "a"]) == 0   # 2-2 tie: "a" appears first
    assert majority_vote(["b", "a", "a", "b"]) == 0   # 2-2 tie: "b" appears first
    assert majority_vote(["c", "a", "b", "b"]) == 2   # "b" wins 2-1-1; its first sample is 2
    assert majority_vote([None, "x", None]) == 1      # None does not vote
    assert majority_vote([None, None]) is None


def test_maj_at_k_values():
    answers = ["a", "b", "b", "a"]
    correct = [False, True, True, False]
    assert maj_at_k(answers, correct, 4) == 0.0   # tie 2-2 -> "a" (wrong)
    assert maj_at_k(answers, correct, 3) == 1.0   # first 3: "b" 2-1
    assert maj_at_k(answers, correct, 1) == 0.0   # first sample only
    assert maj_at_k([None, None, "7"], [False, False, True], 3) == 1.0
    assert maj_at_k([None, None], [False, False], 2) == 0.0  # no vote counts as wrong
    with pytest.raises(ValueError, match="k must be"):
        maj_at_k(answers, correct, 5)


def test_problem_metrics_keys_and_values():
    m = problem_metrics([True, False, False, True], ["4", "5", "6", "4"])
    assert m == pytest.approx({"avg@4": 0.5, "pass@1": 0.5, "pass@2": 1 - 1 / 6, "pass@4": 1.0,
                               "maj@1": 1.0, "maj@2": 1.0, "maj@4": 1.0})
