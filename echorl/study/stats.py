"""Statistics of the study report: per-arm summaries, paired differences over shared seeds, Holm.

The unit of replication is the training seed. For an arm ``A`` and its base ``B`` (the same method
without EchoRL), run at seeds ``S_A`` and ``S_B``, the paired differences are
``d_s = A_s - B_s`` for ``s`` in ``S_A & S_B``; the report gives their mean, a two-sided Student t
interval ``mean +- t_{n-1, (1+level)/2} * sd / sqrt(n)`` (sd with ``n - 1``) and the two-sided
p-value of the paired t test ``2 * (1 - F_{n-1}(|mean| / (sd / sqrt(n))))``. With one shared seed
there is no interval (NaN). Several comparisons are corrected together with Holm's step-down
procedure (:func:`holm`), which controls the family-wise error rate.

No bootstrap: a percentile bootstrap over 3-5 seeds under-covers (its interval is too narrow at
that size), so the report cites t intervals only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["holm", "mean_sd", "paired_difference", "t_cdf", "t_quantile", "t_test_p"]


def t_cdf(x: float, df: int) -> float:
    """CDF of Student's t with ``df`` degrees of freedom: Simpson's rule on the density after the
    substitution ``t = tan u`` (600 panels; the quantiles match printed tables to 6 digits)."""
    if df < 1:
        raise ValueError(f"t_cdf: df must be >= 1, got {df}")
    c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def pdf(t: float) -> float:
        return math.exp(c - (df + 1) / 2 * math.log1p(t * t / df))

    a = abs(x)
    # substitute t = tan(u) on [0, atan(a)]: a smooth integrand even for df = 1 (Cauchy)
    ua, m = math.atan(a), 600
    h = ua / m
    s = 0.0
    for i in range(m + 1):
        u = i * h
        w = 1 if i in (0, m) else (4 if i % 2 else 2)
        s += w * pdf(math.tan(u)) / math.cos(u) ** 2
    half = s * h / 3
    return 0.5 + half if x >= 0 else 0.5 - half


def t_quantile(p: float, df: int) -> float:
    """``q`` with ``t_cdf(q, df) = p`` (bisection to 1e-10), ``0.5 < p < 1``."""
    if not 0.5 < p < 1:
        raise ValueError(f"t_quantile: p must be in (0.5, 1), got {p}")
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    while hi - lo > 1e-10:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def t_test_p(t: float, df: int) -> float:
    """Two-sided p-value of a t statistic: ``2 * (1 - F_df(|t|))``, clipped to ``[0, 1]``."""
    return min(1.0, max(0.0, 2.0 * (1.0 - t_cdf(abs(t), df))))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order.

    Sorted ascending ``p_(1) <= ... <= p_(m)``, the adjusted value of the i-th (1-based) is
    ``max_{j <= i} min(1, (m - j + 1) p_(j))``; a hypothesis is rejected at family-wise level alpha
    when its adjusted value is <= alpha. NaN p-values (comparisons without an interval) stay NaN and
    do not count in ``m``.
    """
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    m = len(idx)
    out = [float("nan")] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def mean_sd(values: Sequence[float]) -> tuple[float, float, int]:
    """``(mean, sample sd with n - 1 (NaN for n < 2), n)``; NaN mean for no values."""
    x = np.asarray(list(values), dtype=np.float64)
    n = len(x)
    if n == 0:
        return float("nan"), float("nan"), 0
    return float(x.mean()), float(x.std(ddof=1)) if n > 1 else float("nan"), n


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], level: float = 0.95) -> dict[str, float | int | list[int]]:
    """Paired differences ``a[s] - b[s]`` over the seeds both have.

    Args:
        a, b: seed -> value (e.g. held-out accuracy of the arm and of its base).

    Returns:
        ``{"n", "seeds", "diffs", "mean", "sd", "t_low", "t_high", "p"}`` (NaN where undefined; a zero
        sd with a nonzero mean gives ``p = 0``, with a zero mean ``p = 1``).
    """
    seeds = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in seeds], dtype=np.float64)
    n = len(d)
    nan = float("nan")
    out: dict[str, float | int | list[int]] = {"n": n, "seeds": seeds, "diffs": [float(x) for x in d]}
    if n == 0:
        return {**out, "mean": nan, "sd": nan, "t_low": nan, "t_high": nan, "p": nan}
    mean = float(d.mean())
    out["mean"] = mean
    if n < 2:
        return {**out, "sd": nan, "t_low": nan, "t_high": nan, "p": nan}
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    half = t_quantile((1 + level) / 2, n - 1) * se
    if se > 0:
        p = t_test_p(mean / se, n - 1)
    else:
        p = 0.0 if mean != 0 else 1.0
    return {**out, "sd": sd, "t_low": mean - half, "t_high": mean + half, "p": p}
