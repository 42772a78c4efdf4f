"""VerifierPool: run a reward verifier in worker processes with a hard per-check timeout.

Shared by the verl reward function and the embedded engine. A verifier is a picklable,
module-level ``score_fn(*args) -> float``. The processes are a ``pebble.ProcessPool`` (long-lived
workers, one scheduled call per check with its own timeout, workers replaced when they are killed
or die) started with ``forkserver`` on POSIX, ``spawn`` elsewhere -- never ``fork``, which is
unsafe in the multithreaded Ray / torch processes that call it. This module adds the scoring rules
and their counts:

- a **hang** (the check exceeds ``timeout_s``, counted from the moment a worker took it) scores
  0.0 and is counted in ``timeouts``; pebble kills the worker and starts a new one;
- a **crash** scores 0.0 and is counted in ``crashes``: either ``score_fn`` raised (also counted
  in ``exceptions``; the worker survives) or the worker process died (``os._exit``, segfault,
  OOM kill; also counted in ``deaths``; the worker is replaced);
- an **invalid return** (not a real number -- ``bool``/``int``/``float`` are accepted -- or NaN /
  infinite) scores 0.0 and is counted in ``errors``.

Training never stalls: every check ends within ``timeout_s`` of the moment its worker took it,
whatever ``score_fn`` does. Workers are reused, so a batch of 1024 checks costs 1024 pipe round
trips, not 1024 process starts. ``score`` returns once the pool is back at full size.

``score`` is thread-safe: several threads may score at once (verl's reward manager calls the
reward function from an executor thread pool); pebble's scheduler serialises the dispatch.

Example::

    with VerifierPool(my_module.check, num_workers=4, timeout_s=5.0) as pool:
        scores, stats = pool.score([(solution, answer), ...])

Tests: ``tests/rewards/test_pool.py``.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import numbers
import os
import pickle
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from pebble import ProcessExpired, ProcessPool
from pebble.common import CONSTS

# pebble stops a timed-out worker with SIGTERM and waits ``term_timeout`` (3 s) before SIGKILL. A
# check stuck in C code (sympy's big-integer power) never runs the SIGTERM handler, so the 3 s
# would be added to every such timeout: SIGKILL after 0.1 s instead.
CONSTS.term_timeout = min(CONSTS.term_timeout, 0.1)

__all__ = ["VerifierPool", "STAT_KEYS", "valid_score"]

# Keys of the stats dict returned by ``VerifierPool.score`` (and of ``VerifierPool.totals``).
STAT_KEYS = (
    "checked",     # checks submitted
    "ok",          # checks that returned a valid number
    "timeouts",    # checks that ran past timeout_s (worker killed and replaced)
    "crashes",     # exceptions + deaths
    "exceptions",  # score_fn raised (worker kept)
    "deaths",      # the worker process died during the check (replaced)
    "errors",      # score_fn returned a non-number, NaN or inf
    "restarts",    # workers started to replace killed / dead ones
)

_STARTUP_ERROR = "startup"

# Per worker process: score_fn, unpickled once (the first check, or the initializer's warm-up).
_FN: dict[bytes, Callable[..., Any]] = {}
# True in a VerifierPool worker process (set by its initializer).
_IN_WORKER = False


def in_verifier_worker() -> bool:
    """Whether this process is a :class:`VerifierPool` worker: a verifier that would start its own
    pool (``echorl.rewards.math.compute_score``) checks in-process there instead: the calling
    pool's timeout already bounds the check, and a second pool inside every worker would only
    multiply processes."""
    return _IN_WORKER


def valid_score(value: Any) -> bool:
    """A verifier's return is valid when it is a finite real number (``bool``/``int``/``float``)."""
    return isinstance(value, numbers.Real) and not isinstance(value, complex) and math.isfinite(float(value))


def _load(fn_bytes: bytes) -> Callable[..., Any]:
    fn = _FN.get(fn_bytes)
    if fn is None:
        fn = _FN[fn_bytes] = pickle.loads(fn_bytes)
    return fn


def _warm_up(fn_bytes: bytes, warmup_args: tuple | None) -> None:
    """Worker initializer: import ``score_fn`` and pay its first-call costs before any check's clock
    starts. Never raises (pebble would restart a failing worker forever); a module that cannot be
    imported is reported by the first check (``_check``)."""
    global _IN_WORKER
    _IN_WORKER = True
    try:
        fn = _load(fn_bytes)
        if warmup_args is not None:
            fn(*warmup_args)
    except BaseException:  # noqa: BLE001 - reported by the first real check
        pass


def _noop() -> None:
    """Scheduled once per pool to start its workers."""


def _check(fn_bytes: bytes, args: tuple) -> tuple[str, Any]:
    """One check in a worker: ``("ok", float)``, ``("invalid", type and value)``,
    ``("exception", text)`` or ``("startup", traceback)`` when ``score_fn`` cannot be unpickled."""
    try:
        fn = _load(fn_bytes)
    except BaseException:  # noqa: BLE001 - the parent raises with it
        return _STARTUP_ERROR, traceback.format_exc(limit=5)
    try:
        value = fn(*args)
    except BaseException as e:  # noqa: BLE001 - any failure of the check scores 0
        return "exception", f"{type(e).__name__}: {e}"[:500]
    if valid_score(value):
        return "ok", float(value)
    return "invalid", f"{type(value).__name__}: {value!r}"[:200]


def _shutdown(pool: ProcessPool) -> None:
    """Stop a pool's workers: at ``close()``, or when the VerifierPool is garbage-collected."""
    pool.close()
    pool.join(timeout=5)
    pool.stop()  # kills what did not exit
    pool.join()


class _WorkerView:
    """A worker process of the pool (``.proc``), for inspection."""

    def __init__(self, proc: Any):
        self.proc = proc


class VerifierPool:
    """Score many checks with a picklable ``score_fn(*args) -> float`` in worker processes.

    Args:
        score_fn: module-level function (picklable by reference), called as ``score_fn(*args)``.
        num_workers: worker processes (default ``min(4, os.cpu_count())``).
        timeout_s: per-check wall-clock limit in seconds; past it the check scores 0.0 and its
            worker is killed and replaced.
        start_method: ``"forkserver"`` (default on POSIX) or ``"spawn"``. ``"fork"`` is refused.
        startup_timeout_s: how long the pool may take to get back to ``num_workers`` workers after
            one was replaced (a new worker imports ``score_fn``'s module).
        preload: modules the forkserver imports once so that new workers start in milliseconds
            (default: ``score_fn``'s module; this module is always added). Only effective if
            the process's forkserver is not running yet.
        warmup_args: if given, each worker calls ``score_fn(*warmup_args)`` once when it starts,
            so first-call costs do not count against the first real check.

    As with any ``spawn``/``forkserver`` use of multiprocessing, a script that creates a pool must
    guard its entry point with ``if __name__ == "__main__":`` (workers re-import ``__main__``).
    """

    def __init__(self, score_fn: Callable[..., float], num_workers: int | None = None,
                 timeout_s: float = 10.0, *, start_method: str | None = None,
                 startup_timeout_s: float = 120.0, preload: Sequence[str] | None = None,
                 warmup_args: Sequence[Any] | None = None):
        self.num_workers, self.timeout_s, self._closed = num_workers, timeout_s, True  # for repr
        if not callable(score_fn):
            raise TypeError(f"VerifierPool: score_fn must be callable, got {type(score_fn).__name__}")
        try:
            fn_bytes = pickle.dumps(score_fn)
        except Exception as e:  # noqa: BLE001
            raise TypeError(
                f"VerifierPool: score_fn {score_fn!r} is not picklable ({e}); use a function defined "
                "at module level (not a lambda or a nested function)") from e
        if num_workers is None:
            num_workers = min(4, os.cpu_count() or 1)
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"VerifierPool: num_workers must be an int >= 1, got {num_workers!r}")
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0 and math.isfinite(timeout_s)):
            raise ValueError(f"VerifierPool: timeout_s must be a finite number > 0, got {timeout_s!r}")
        if start_method is None:
            start_method = "forkserver" if os.name == "posix" else "spawn"
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(
                f"VerifierPool: start_method must be 'forkserver' or 'spawn', got {start_method!r} "
                "('fork' is unsafe in the multithreaded processes that score rewards)")
        self.timeout_s = float(timeout_s)
        self.startup_timeout_s = float(startup_timeout_s)
        self.num_workers = num_workers
        self._fn_bytes = fn_bytes
        ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            # The forkserver imports these once; each worker is then a cheap fork of it. This
            # module is always included: importing it imports the echorl package (and torch).
            module = getattr(score_fn, "__module__", None)
            mods = [__name__] + (list(preload) if preload is not None else
                                 [module] if module and module != "__main__" else [])
            ctx.set_forkserver_preload(mods)
        self._ctx = ctx
        self._warmup_args = tuple(warmup_args) if warmup_args is not None else None
        self._lock = threading.Lock()
        self._new_pool()
        self._closed = False
        self.totals = dict.fromkeys(STAT_KEYS, 0)

    def _new_pool(self) -> None:
        self._pool = ProcessPool(max_workers=self.num_workers, initializer=_warm_up,
                                 initargs=(self._fn_bytes, self._warmup_args), context=self._ctx)
        self._finalizer = weakref.finalize(self, _shutdown, self._pool)
        # pebble starts its workers at the first scheduled call: start them now, so that they import
        # and warm up score_fn while the caller prepares its first batch.
        self._pool.schedule(_noop)

    def _ensure_pool(self, stats: dict) -> None:
        """pebble marks its whole pool broken when a worker dies while no check runs on it (an OOM
        kill of an idle worker): start a new one, counted as ``num_workers`` restarts."""
        with self._lock:
            if self._pool.active or self._closed:
                return
            self._finalizer()
            self._new_pool()
            stats["restarts"] += self.num_workers

    @property
    def _workers(self) -> list[_WorkerView]:
        """The live worker processes (pebble's, by pid)."""
        procs = self._pool._pool_manager.worker_manager.workers  # pebble's pid -> process map
        return [_WorkerView(p) for p in list(procs.values())]

    def _wait_full(self) -> None:
        """Wait until replaced workers are running again (at most ``startup_timeout_s``)."""
        end = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < end:
            procs = list(self._pool._pool_manager.worker_manager.workers.values())
            if len(procs) >= self.num_workers and all(p.is_alive() for p in procs):
                return
            time.sleep(0.01)

    # ------------------------------------------------------------------ scoring
    def score(self, arg_tuples: Sequence[Sequence[Any]]) -> tuple[list[float], dict]:
        """Run ``score_fn(*args)`` for every tuple; return (scores, stats) in input order.

        Failed checks (timeout, exception, dead worker, invalid return) score 0.0. ``stats`` has
        the counts of ``STAT_KEYS`` for this call plus ``seconds`` (wall time); they are also
        added to ``self.totals``.
        """
        if self._closed:
            raise RuntimeError("VerifierPool.score called after close()")
        t0 = time.monotonic()
        tasks = [tuple(a) for a in arg_tuples]
        for i, args in enumerate(tasks):  # refuse before anything runs, naming the check
            try:
                pickle.dumps(args)
            except Exception as e:  # noqa: BLE001
                raise TypeError(f"VerifierPool.score: arguments of check {i} are not picklable: {e}") from e
        stats = dict.fromkeys(STAT_KEYS, 0)
        stats["checked"] = len(tasks)
        self._ensure_pool(stats)
        futures = [self._pool.schedule(_check, (self._fn_bytes, args), timeout=self.timeout_s) for args in tasks]
        results = [0.0] * len(tasks)
        startup_error = None
        try:
            for i, fut in enumerate(futures):
                try:
                    kind, value = fut.result()
                except FutureTimeout:
                    stats["timeouts"] += 1
                    stats["restarts"] += 1
                    continue
                except ProcessExpired:
                    stats["deaths"] += 1
                    stats["crashes"] += 1
                    stats["restarts"] += 1
                    continue
                except BrokenProcessPool:  # pebble gave up its pool while this check waited
                    stats["deaths"] += 1
                    stats["crashes"] += 1
                    continue
                if kind == "ok":
                    results[i] = value
                    stats["ok"] += 1
                elif kind == "invalid":
                    stats["errors"] += 1
                elif kind == _STARTUP_ERROR:
                    startup_error = value
                else:
                    stats["exceptions"] += 1
                    stats["crashes"] += 1
        except BaseException:
            for fut in futures:
                fut.cancel()  # a running check's worker is stopped and replaced by pebble
            raise
        if startup_error is not None:
            raise RuntimeError(
                "VerifierPool: a worker could not start score_fn. Is its module importable in a fresh "
                f"process?\n{startup_error}")
        self._ensure_pool(stats)
        if stats["restarts"]:
            self._wait_full()
        stats["seconds"] = time.monotonic() - t0
        with self._lock:
            for k in STAT_KEYS:
                self.totals[k] += stats[k]
        return results, stats

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop every worker (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            self._finalizer()

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"VerifierPool(num_workers={self.num_workers}, timeout_s={self.timeout_s}, "
                f"closed={self._closed})")
