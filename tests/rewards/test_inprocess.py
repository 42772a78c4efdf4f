"""Tests of echorl/rewards/inprocess.py: the pool's scores and counts, without the processes."""

from __future__ import annotations

import pytest

from echorl.rewards.inprocess import InProcessVerifier, make_verifier
from echorl.rewards.pool import STAT_KEYS, VerifierPool
from echorl.tasks import compute_score

CASES = [("return", 0.25), ("raise",), ("return", None), ("return", "1.0"), ("return", float("nan")),
         ("return", float("inf")), ("return", [1.0]), ("return", 1 + 2j), ("return", True), ("return", 3)]


def behave(kind, value=1.0):
    if kind == "raise":
        raise ZeroDivisionError("boom")
    return value


def test_same_scores_and_counts_as_the_pool():
    with VerifierPool(behave, num_workers=1, timeout_s=5) as pool:
        ref, ref_stats = pool.score(CASES)
    v = InProcessVerifier(behave)
    got, stats = v.score(CASES)
    assert got == ref == [0.25, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 3.0]
    assert all(type(s) is float for s in got)
    assert {k: stats[k] for k in STAT_KEYS} == {k: ref_stats[k] for k in STAT_KEYS}
    assert {k: stats[k] for k in STAT_KEYS} == {**dict.fromkeys(STAT_KEYS, 0), "checked": 10, "ok": 3, "crashes": 1,
                                                "exceptions": 1, "errors": 6}
    v.score(CASES[:1])
    assert v.totals["checked"] == 11 and v.totals["ok"] == 4


def test_task_verifier_in_process():
    with make_verifier(compute_score, in_process=True, num_workers=1, timeout_s=5) as v:
        assert isinstance(v, InProcessVerifier)
        scores, _ = v.score([("echorl/arithmetic", "3+4=7\nAnswer: 7", "7", None),
                             ("echorl/arithmetic", "Answer: 8", "7", None), ("nope", "x", "1", None)])
    assert scores == [1.0, 0.0, 0.0]  # unknown data_source raises in compute_score: scored 0, counted
    with pytest.raises(RuntimeError, match="after close"):
        v.score([])


def test_bad_arguments():
    with pytest.raises(ValueError, match="reward.in_process must be true or false, got 'yes'"):
        make_verifier(behave, in_process="yes", num_workers=1, timeout_s=1)
    with pytest.raises(TypeError, match="score_fn must be callable"):
        InProcessVerifier(3)
