"""InProcessVerifier: :class:`~echorl.rewards.pool.VerifierPool`'s interface, run in the caller.

For verifiers that are cheap and cannot hang -- exact string or number matching such as the
arithmetic and chain tasks -- the pool's pipe round trip per check costs more than the check.
This class calls ``score_fn`` directly, with the pool's scoring rules: an exception scores 0.0
and is counted in ``crashes`` and ``exceptions``; a return that is not a finite real number scores
0.0 and is counted in ``errors``. There is no timeout and no process isolation, so a verifier that
may hang, crash the interpreter or run for long (math-verify, code execution) belongs in the pool.

Example::

    with InProcessVerifier(echorl.tasks.compute_score) as v:
        scores, stats = v.score([(data_source, solution, answer, extra_info), ...])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from echorl.rewards.pool import STAT_KEYS, VerifierPool, valid_score

__all__ = ["InProcessVerifier", "make_verifier"]


class InProcessVerifier:
    """``score_fn(*args)`` for each tuple, in this process (see the module docstring).

    Args:
        score_fn: any callable ``score_fn(*args) -> float``.
    """

    def __init__(self, score_fn: Callable[..., float]):
        if not callable(score_fn):
            raise TypeError(f"InProcessVerifier: score_fn must be callable, got {type(score_fn).__name__}")
        self.score_fn = score_fn
        self.totals = dict.fromkeys(STAT_KEYS, 0)
        self._closed = False

    def score(self, arg_tuples: Sequence[Sequence[Any]]) -> tuple[list[float], dict]:
        """Scores in input order and ``stats`` (``STAT_KEYS`` counts and ``seconds``), as ``VerifierPool.score``."""
        if self._closed:
            raise RuntimeError("InProcessVerifier.score called after close()")
        t0 = time.monotonic()
        stats = dict.fromkeys(STAT_KEYS, 0)
        stats["checked"] = len(arg_tuples)
        results = []
        for args in arg_tuples:
            try:
                value = self.score_fn(*args)
            except Exception:  # noqa: BLE001 - any failure of the check scores 0, as in the pool
                stats["crashes"] += 1
                stats["exceptions"] += 1
                results.append(0.0)
                continue
            if valid_score(value):
                stats["ok"] += 1
                results.append(float(value))
            else:
                stats["errors"] += 1
                results.append(0.0)
        stats["seconds"] = time.monotonic() - t0
        for k in STAT_KEYS:
            self.totals[k] += stats[k]
        return results, stats

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> InProcessVerifier:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"InProcessVerifier({getattr(self.score_fn, '__name__', self.score_fn)!r})"


def make_verifier(score_fn: Callable[..., float], *, in_process: bool, num_workers: int,
                  timeout_s: float) -> InProcessVerifier | VerifierPool:
    """``reward.in_process=true``: an :class:`InProcessVerifier`; otherwise a :class:`VerifierPool`."""
    if not isinstance(in_process, bool):
        raise ValueError(f"reward.in_process must be true or false, got {in_process!r}")
    if in_process:
        return InProcessVerifier(score_fn)
    return VerifierPool(score_fn, num_workers=num_workers, timeout_s=timeout_s)
