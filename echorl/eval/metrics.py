"""Evaluation estimators as pure functions (docs/evaluation.md, "Metrics").

For one problem with ``n`` sampled answers of which ``c`` are correct:

* ``avg@n``  = c / n, the mean accuracy of the samples (the paper's avg@k with k = n);
* ``pass@k`` = 1 - C(n-c, k) / C(n, k), the unbiased estimator of "at least one of k samples is
  correct" (Chen et al. 2021), computed in the product form
  ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``, which never forms a binomial coefficient (no overflow,
  no cancellation of huge numbers);
* ``maj@k``  = correctness of the majority answer among the **first** ``k`` samples: samples whose
  answer could not be extracted (``None``) do not vote; the answer with the most votes wins, and a
  tie goes to the tied answer that appears first in sample order; no vote at all counts as wrong.

A benchmark's value of each metric is the mean over its problems; a macro average is the
unweighted mean over benchmarks. ``ks_for(n)`` lists the k reported: 1, 2, 4, ... below n, and n.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

__all__ = ["avg_at_k", "ks_for", "maj_at_k", "majority_vote", "mean", "pass_at_k", "problem_metrics"]


def _check_counts(n: int, c: int, k: int) -> None:
    for name, v in (("n", n), ("c", c), ("k", k)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"pass_at_k: {name} must be an int, got {type(v).__name__} {v!r}")
    if n < 1:
        raise ValueError(f"pass_at_k: n (samples) must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c (correct samples) must be in [0, n={n}], got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k must be in [1, n={n}], got {k}; draw at least k samples per problem")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem: ``1 - C(n-c, k) / C(n, k)``.

    Product form: ``C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)``; when ``n - c < k`` every
    k-subset holds a correct sample and the value is exactly 1.0.

    Args:
        n: samples drawn for the problem (>= 1).
        c: correct samples (0 <= c <= n).
        k: 1 <= k <= n.
    """
    _check_counts(n, c, k)
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def avg_at_k(correct: Sequence[float]) -> float:
    """Mean of per-sample correctness (or scores) of one problem: ``avg@n`` with ``n = len(correct)``."""
    if len(correct) == 0:
        raise ValueError("avg_at_k: no samples")
    return float(sum(float(x) for x in correct) / len(correct))


def majority_vote(answers: Sequence[Hashable | None]) -> int | None:
    """Index (into ``answers``) of the first sample carrying the majority answer, or None.

    ``None`` answers do not vote. Ties between answers with the same vote count go to the answer
    that appears first in ``answers``.
    """
    counts: dict[Hashable, int] = {}
    first: dict[Hashable, int] = {}
    for i, a in enumerate(answers):
        if a is None:
            continue
        counts[a] = counts.get(a, 0) + 1
        first.setdefault(a, i)
    if not counts:
        return None
    best = max(counts.values())
    return min(first[a] for a, c in counts.items() if c == best)


def maj_at_k(answers: Sequence[Hashable | None], correct: Sequence[bool], k: int) -> float:
    """maj@k of one problem: 1.0 when the majority answer of the first ``k`` samples is correct.

    Args:
        answers: ``[n]`` extracted (normalised) answers, None where none was found.
        correct: ``[n]`` per-sample correctness.
        k: 1 <= k <= n.
    """
    if len(answers) != len(correct):
        raise ValueError(f"maj_at_k: {len(answers)} answers but {len(correct)} correctness flags")
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj_at_k: k must be in [1, n={len(answers)}], got {k}")
    winner = majority_vote(answers[:k])
    return 0.0 if winner is None else float(bool(correct[winner]))


def ks_for(n: int) -> list[int]:
    """The k values reported for ``n`` samples: powers of two below ``n``, then ``n``."""
    if n < 1:
        raise ValueError(f"ks_for: n must be >= 1, got {n}")
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def problem_metrics(correct: Sequence[bool], answers: Sequence[Hashable | None],
                    ks: Sequence[int] | None = None) -> dict[str, float]:
    """``avg@n``, ``pass@k`` and ``maj@k`` (k in ``ks``, default :func:`ks_for`) of one problem."""
    n = len(correct)
    ks = ks_for(n) if ks is None else list(ks)
    c = int(sum(bool(x) for x in correct))
    out = {f"avg@{n}": c / n}
    for k in ks:
        out[f"pass@{k}"] = pass_at_k(n, c, k)
    for k in ks:
        out[f"maj@{k}"] = maj_at_k(answers, correct, k)
    return out


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean (NaN for an empty sequence, so a missing value is visible, never 0)."""
    return float(math.fsum(values) / len(values)) if len(values) else float("nan")
