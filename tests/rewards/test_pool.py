"""Tests of echorl/rewards/pool.py: real worker processes that hang, raise, exit and segfault."""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time

import pytest

from echorl.rewards.pool import STAT_KEYS, VerifierPool

TIMEOUT = 0.5


# Verifiers used by the tests: module level so that the workers can unpickle them.
def add(a, b):
    return a + b


def pid(_):
    return os.getpid()


def behave(kind, value=1.0):
    """Return ``value``, or misbehave the way ``kind`` says."""
    if kind == "hang":
        time.sleep(60)
    elif kind == "raise":
        raise ZeroDivisionError("boom")
    elif kind == "exit":
        os._exit(3)
    elif kind == "segfault":
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    elif kind == "return":
        return value
    return value


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(behave, num_workers=2, timeout_s=TIMEOUT) as p:
        p.score([("ok",)] * 2)  # workers ready
        yield p


def _only(stats, **expected):
    got = {k: stats[k] for k in STAT_KEYS}
    want = dict.fromkeys(STAT_KEYS, 0)
    want.update(expected)
    assert got == want


def test_scores_in_order():
    with VerifierPool(add, num_workers=2, timeout_s=5) as p:
        scores, stats = p.score([(i, 0.5) for i in range(50)])
    assert scores == [i + 0.5 for i in range(50)]
    _only(stats, checked=50, ok=50)
    assert stats["seconds"] > 0


def test_1024_checks_reuse_the_same_workers():
    """The fast path: no process start per check; 1024 checks take well under the timeout total."""
    with VerifierPool(pid, num_workers=2, timeout_s=5) as p:
        p.score([(0,)] * 2)
        t0 = time.monotonic()
        scores, stats = p.score([(i,) for i in range(1024)])
        elapsed = time.monotonic() - t0
        worker_pids = {w.proc.pid for w in p._workers}
    # every check ran in one of the two long-lived workers (the shared task queue may let one of them
    # take every trivial check)
    assert {int(s) for s in scores} <= worker_pids and len(worker_pids) == 2
    _only(stats, checked=1024, ok=1024)
    assert elapsed < 5.0, f"1024 trivial checks took {elapsed:.2f} s"


def test_hang_times_out_scores_zero_and_others_finish(pool):
    args = [("return", float(i)) for i in range(20)]
    args[3] = ("hang",)
    t0 = time.monotonic()
    scores, stats = pool.score(args)
    elapsed = time.monotonic() - t0
    assert scores == [0.0 if i == 3 else float(i) for i in range(20)]
    _only(stats, checked=20, ok=19, timeouts=1, restarts=1)
    assert TIMEOUT <= elapsed < TIMEOUT + 3.0
    assert len(pool._workers) == 2
    # the replacement works
    assert pool.score([("return", 7.0)] * 4)[0] == [7.0] * 4


def test_every_check_hangs_still_bounded(pool):
    t0 = time.monotonic()
    scores, stats = pool.score([("hang",)] * 4)
    elapsed = time.monotonic() - t0
    assert scores == [0.0] * 4
    _only(stats, checked=4, timeouts=4, restarts=4)
    # 2 workers: two rounds of timeouts plus restarts, never a stall
    assert elapsed < 2 * TIMEOUT + 4.0


def test_exception_scores_zero_and_keeps_the_worker(pool):
    before = {w.proc.pid for w in pool._workers}
    scores, stats = pool.score([("raise",), ("return", 1.0), ("raise",)])
    assert scores == [0.0, 1.0, 0.0]
    _only(stats, checked=3, ok=1, crashes=2, exceptions=2)
    assert {w.proc.pid for w in pool._workers} == before


@pytest.mark.parametrize("kind", ["exit", "segfault"])
def test_dead_worker_scores_zero_and_is_replaced(pool, kind):
    before = {w.proc.pid for w in pool._workers}
    scores, stats = pool.score([("return", 2.0), (kind,), ("return", 3.0), ("return", 4.0)])
    assert scores == [2.0, 0.0, 3.0, 4.0]
    _only(stats, checked=4, ok=3, crashes=1, deaths=1, restarts=1)
    after = {w.proc.pid for w in pool._workers}
    assert len(after) == 2 and len(after - before) == 1
    assert pool.score([("return", 5.0)] * 3)[0] == [5.0] * 3


def test_invalid_returns_are_errors(pool):
    bad = [None, "1.0", float("nan"), float("inf"), [1.0], 1 + 2j]
    scores, stats = pool.score([("return", v) for v in bad] + [("return", True), ("return", 3)])
    assert scores == [0.0] * len(bad) + [1.0, 3.0]
    assert all(type(s) is float for s in scores)
    _only(stats, checked=8, ok=2, errors=len(bad))


def test_totals_accumulate():
    with VerifierPool(behave, num_workers=1, timeout_s=TIMEOUT) as p:
        p.score([("raise",), ("return", 1.0)])
        p.score([("exit",), ("hang",)])
        assert {k: p.totals[k] for k in ("checked", "ok", "crashes", "exceptions", "deaths",
                                          "timeouts", "restarts")} == {
            "checked": 4, "ok": 1, "crashes": 2, "exceptions": 1, "deaths": 1, "timeouts": 1,
            "restarts": 2}


def test_concurrent_callers(pool):
    out = {}

    def run(k):
        out[k] = pool.score([("return", float(k * 100 + i)) for i in range(30)])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for k in range(4):
        scores, stats = out[k]
        assert scores == [float(k * 100 + i) for i in range(30)]
        assert stats["ok"] == 30


def test_close_stops_workers_and_refuses_work():
    p = VerifierPool(add, num_workers=2, timeout_s=5)
    p.score([(1, 2)])
    procs = [w.proc for w in p._workers]
    p.close()
    p.close()  # idempotent
    assert all(not pr.is_alive() for pr in procs)
    with pytest.raises(RuntimeError, match="after close"):
        p.score([(1, 2)])


def test_bad_arguments():
    with pytest.raises(TypeError, match="not picklable"):
        VerifierPool(lambda x: 1.0)
    with pytest.raises(ValueError, match="'fork' is unsafe"):
        VerifierPool(add, start_method="fork")
    with pytest.raises(ValueError, match="timeout_s"):
        VerifierPool(add, timeout_s=0)
    with pytest.raises(ValueError, match="num_workers"):
        VerifierPool(add, num_workers=0)
    with VerifierPool(add, num_workers=1, timeout_s=5) as p:
        with pytest.raises(TypeError, match="check 1 are not picklable"):
            p.score([(1, 2), (threading.Lock(), 1)])
        assert p.score([(1, 2)])[0] == [3.0]  # the pool survived


def test_unimportable_score_fn_fails_loudly(tmp_path, monkeypatch):
    """A worker that cannot import score_fn's module raises a clear error instead of looping."""
    mod = tmp_path / "vanishing_verifier.py"
    mod.write_text("def check(x):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import vanishing_verifier
    monkeypatch.setitem(sys.modules, "vanishing_verifier", vanishing_verifier)
    mod.unlink()  # the parent still has the module; a fresh worker cannot import it
    for f in (tmp_path / "__pycache__").glob("*"):
        f.unlink()
    with VerifierPool(vanishing_verifier.check, num_workers=1, timeout_s=5, preload=[]) as p:
        with pytest.raises(RuntimeError, match="(?s)could not start score_fn.*No module named .vanishing_verifier"):
            p.score([(1,)])


def test_worker_killed_while_idle_is_replaced():
    """A worker that dies between calls (an OOM kill) costs nothing: the next call scores normally."""
    with VerifierPool(add, num_workers=2, timeout_s=5) as p:
        assert p.score([(1, 2)] * 4)[0] == [3.0] * 4
        os.kill(p._workers[0].proc.pid, 9)
        time.sleep(0.5)
        scores, stats = p.score([(i, 1) for i in range(6)])
        assert scores == [float(i + 1) for i in range(6)]
        assert stats["ok"] == 6 and stats["crashes"] == 0 and stats["timeouts"] == 0
        assert len(p._workers) == 2
