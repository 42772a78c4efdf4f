"""VerifierPool: run a reward verifier in worker processes with a hard per-check timeout.

Shared by the verl reward function and the embedded engine. A verifier is a picklable, module-level ``score_fn(*args) -> float``.
Each check runs in a long-lived worker process (``forkserver`` on POSIX, ``spawn`` elsewhere;
never ``fork``, which is unsafe in the multithreaded Ray / torch processes that call it), so:

- a **hang** (the check exceeds ``timeout_s``) scores 0.0, is counted in ``timeouts``, and the
  worker is killed (SIGKILL) and replaced;
- a **crash** scores 0.0 and is counted in ``crashes``: either ``score_fn`` raised (also counted
  in ``exceptions``; the worker survives) or the worker process died (``os._exit``, segfault,
  OOM kill; also counted in ``deaths``; the worker is replaced);
- an **invalid return** (not a real number -- ``bool``/``int``/``float`` are accepted -- or NaN /
  infinite) scores 0.0 and is counted in ``errors``.

Training never stalls: every check ends within ``timeout_s`` of the moment its worker took it
(plus the worker's start-up time if the worker was just replaced), whatever ``score_fn`` does.
Workers are started once and reused, so a batch of 1024 checks costs 1024 pipe round trips
(tens of microseconds each), not 1024 process starts.

``score`` is thread-safe: several threads may score at once (verl's reward manager calls the
reward function from an executor thread pool); each worker serves one caller at a time.

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
import queue
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from typing import Any

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

_READY = "__ready__"
_STARTUP_ERROR = "__startup_error__"


def valid_score(value: Any) -> bool:
    """A verifier's return is valid when it is a finite real number (``bool``/``int``/``float``)."""
    return isinstance(value, numbers.Real) and not isinstance(value, complex) and math.isfinite(float(value))


def _worker_main(conn: Any, fn_bytes: bytes, warmup_args: tuple | None = None) -> None:
    """Worker loop: unpickle score_fn, warm it up, announce readiness, then answer tasks.

    Replies are ``(task_id, "ok", float)``, ``(task_id, "invalid", type name)`` or
    ``(task_id, "exception", text)``. ``None`` or a closed pipe ends the loop.
    """
    try:
        fn = pickle.loads(fn_bytes)
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises with it
        conn.send((_STARTUP_ERROR, traceback.format_exc(limit=5)))
        return
    if warmup_args is not None:  # first-call costs (lazy imports, caches) before the clock starts
        try:
            fn(*warmup_args)
        except BaseException:  # noqa: BLE001 - a failing warm-up shows up again in real checks
            pass
    conn.send((_READY, os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        task_id, args = msg
        try:
            value = fn(*args)
        except BaseException as e:  # noqa: BLE001 - any failure of the check scores 0
            conn.send((task_id, "exception", f"{type(e).__name__}: {e}"[:500]))
            continue
        if valid_score(value):
            conn.send((task_id, "ok", float(value)))
        else:
            conn.send((task_id, "invalid", f"{type(value).__name__}: {value!r}"[:200]))


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, ctx: Any, fn_bytes: bytes, warmup_args: tuple | None):
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child_conn, fn_bytes, warmup_args), daemon=True,
                                name="echorl-verifier")
        self.proc.start()
        child_conn.close()  # so that the parent sees EOF when the child dies
        self.conn = parent_conn
        self.ready = False
        self.started_at = time.monotonic()

    def kill(self) -> None:
        try:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(timeout=5)
        except (OSError, ValueError, AssertionError):
            pass
        try:
            self.conn.close()
        except OSError:
            pass

    def stop(self) -> None:
        """Ask the worker to exit; kill it if it does not within a second."""
        try:
            self.conn.send(None)
            self.proc.join(timeout=1)
        except (OSError, ValueError, AssertionError):
            pass
        self.kill()


def _shutdown(workers: list) -> None:
    for w in list(workers):
        w.kill()


class VerifierPool:
    """Score many checks with a picklable ``score_fn(*args) -> float`` in worker processes.

    Args:
        score_fn: module-level function (picklable by reference), called as ``score_fn(*args)``.
        num_workers: worker processes (default ``min(4, os.cpu_count())``).
        timeout_s: per-check wall-clock limit in seconds; past it the check scores 0.0 and its
            worker is killed and replaced.
        start_method: ``"forkserver"`` (default on POSIX) or ``"spawn"``. ``"fork"`` is refused.
        startup_timeout_s: how long a new worker may take to import ``score_fn``'s module.
        preload: modules the forkserver imports once so that new workers start in milliseconds
            (default: ``score_fn``'s module; this module is always added). Only effective if
            the process's forkserver is not running yet.
        warmup_args: if given, each worker calls ``score_fn(*warmup_args)`` once before it
            reports ready, so first-call costs do not count against the first real check.

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
        self._warmup_args = tuple(warmup_args) if warmup_args is not None else None
        self._ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            # The forkserver imports these once; each worker is then a cheap fork of it. This
            # module is always included: importing it imports the echorl package (and torch).
            module = getattr(score_fn, "__module__", None)
            mods = [__name__] + (list(preload) if preload is not None else
                                 [module] if module and module != "__main__" else [])
            self._ctx.set_forkserver_preload(mods)
        self._lock = threading.Lock()
        self._closed = False
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._workers: list[_Worker] = []  # every live worker (for shutdown)
        self.totals = dict.fromkeys(STAT_KEYS, 0)
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)
        for _ in range(num_workers):
            self._idle.put(self._spawn())

    # ------------------------------------------------------------------ workers
    def _spawn(self) -> _Worker:
        w = _Worker(self._ctx, self._fn_bytes, self._warmup_args)
        with self._lock:
            self._workers.append(w)
        return w

    def _retire(self, w: _Worker) -> None:
        w.kill()
        with self._lock:
            if w in self._workers:
                self._workers.remove(w)

    def _replace(self, w: _Worker, stats: dict) -> None:
        self._retire(w)
        stats["restarts"] += 1
        if not self._closed:
            self._idle.put(self._spawn())

    def _startup_failed(self, w: _Worker, detail: str) -> None:
        self._retire(w)
        if not self._closed:  # keep the pool at full size; the next call fails the same way
            self._idle.put(self._spawn())
        raise RuntimeError(
            f"VerifierPool: a worker could not start score_fn (exit code {w.proc.exitcode}). "
            f"Is its module importable in a fresh process?\n{detail}")

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
        n = len(arg_tuples)
        results = [0.0] * n
        stats = dict.fromkeys(STAT_KEYS, 0)
        stats["checked"] = n
        pending = deque((i, tuple(a)) for i, a in enumerate(arg_tuples))
        inflight: dict[_Worker, list] = {}  # worker -> [task index, args, deadline or None]
        try:
            self._run(pending, inflight, results, stats)
        except BaseException:
            for w in list(inflight):  # their replies would reach the next caller: replace them
                self._replace(w, stats)
            raise
        stats["seconds"] = time.monotonic() - t0
        with self._lock:
            for k in STAT_KEYS:
                self.totals[k] += stats[k]
        return results, stats

    def _run(self, pending: deque, inflight: dict, results: list, stats: dict) -> None:
        """The dispatch loop of ``score``: fills ``results`` and ``stats`` in place."""
        while pending or inflight:
            # 1. hand tasks to idle workers (block briefly only when nothing is running)
            while pending:
                try:
                    w = self._idle.get_nowait() if inflight else self._idle.get(timeout=0.05)
                except queue.Empty:
                    break
                idx, args = pending[0]
                try:
                    payload = pickle.dumps((idx, args))
                except Exception as e:  # noqa: BLE001
                    self._idle.put(w)
                    raise TypeError(f"VerifierPool.score: arguments of check {idx} are not picklable: {e}") from e
                try:
                    w.conn.send_bytes(payload)
                except (OSError, ValueError, EOFError):  # died while idle: not this task's fault
                    stats["deaths"] += 1
                    self._replace(w, stats)
                    continue
                pending.popleft()
                now = time.monotonic()
                inflight[w] = [idx, args, now + self.timeout_s if w.ready else None]
            if not inflight:
                if self._closed:
                    raise RuntimeError("VerifierPool closed while scoring")
                continue
            # 2. wait for a reply, a death, or the nearest deadline
            now = time.monotonic()
            deadlines = [d if d is not None else w.started_at + self.startup_timeout_s
                         for w, (_, _, d) in inflight.items()]
            wait_s = max(0.0, min(deadlines) - now)
            objs = [w.conn for w in inflight] + [w.proc.sentinel for w in inflight]
            ready = set(wait(objs, timeout=wait_s))
            now = time.monotonic()
            for w in list(inflight):
                idx, args, deadline = inflight[w]
                if w.conn in ready or w.proc.sentinel in ready:
                    try:
                        msg = w.conn.recv() if w.conn.poll() else None
                    except (EOFError, OSError, pickle.UnpicklingError):
                        msg = None
                    if msg is None:  # the process died (or closed its pipe) during the check
                        del inflight[w]
                        if not w.ready:
                            self._startup_failed(w, "the worker exited before it was ready")
                        stats["deaths"] += 1
                        stats["crashes"] += 1
                        self._replace(w, stats)
                        continue
                    if msg[0] == _READY:
                        w.ready = True
                        inflight[w][2] = now + self.timeout_s
                        continue
                    if msg[0] == _STARTUP_ERROR:
                        del inflight[w]
                        self._startup_failed(w, msg[1])
                    _, kind, value = msg
                    del inflight[w]
                    if kind == "ok":
                        results[idx] = value
                        stats["ok"] += 1
                    elif kind == "invalid":
                        stats["errors"] += 1
                    else:
                        stats["exceptions"] += 1
                        stats["crashes"] += 1
                    self._idle.put(w)
                elif deadline is None and now >= w.started_at + self.startup_timeout_s:
                    del inflight[w]
                    self._startup_failed(w, f"no ready signal within {self.startup_timeout_s} s")
                elif deadline is not None and now >= deadline:
                    del inflight[w]
                    stats["timeouts"] += 1
                    self._replace(w, stats)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop every worker (idempotent)."""
        if self._closed:
            return
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().stop()
            except queue.Empty:
                break
        self._finalizer()

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"VerifierPool(num_workers={self.num_workers}, timeout_s={self.timeout_s}, "
                f"closed={self._closed})")
