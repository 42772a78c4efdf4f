"""Power of the paired t test, seeds needed, and the paired seed-to-seed SD of a study.

The study compares an arm with its base by the paired differences ``d_s = A_s - B_s`` over seeds
(:mod:`echorl.study.stats`). With ``n`` seeds, true mean difference ``delta`` and SD of the
differences ``sigma``, the two-sided paired t test at level ``alpha`` rejects when
``|T| > c = t_{n-1, 1-alpha/2}``, where ``T`` is noncentral t with ``df = n - 1`` and noncentrality
``delta / sigma * sqrt(n)``. Its power is computed literally (no scipy)::

    T = (Z + nc) / U,   U = sqrt(V / df),  V ~ chi2(df),  Z ~ N(0, 1) independent
    P(T > c) = E_U[1 - Phi(c U - nc)],   P(T < -c) = E_U[Phi(-c U - nc)]

integrating over the density of ``U`` with Simpson's rule. :func:`seeds_for_power` is the smallest
``n`` reaching a target power; :func:`min_detectable` the smallest ``delta`` at a given ``n``.

The SD comes from a finished study: :func:`paired_sds` gives, for every arm with a base, the
differences of a per-run value (final test accuracy, or the mean of the ``dev`` validations at some
steps); :func:`pooled_sd` pools them (``sqrt(sum of squared deviations / sum of (n - 1))``) and
:func:`sd_upper_bound` gives a one-sided upper confidence bound of a pooled SD from the chi-square
distribution of ``df * s^2 / sigma^2`` (planning with an upper bound instead of the estimate
guards against an SD that happened to come out small).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from echorl.study.stats import t_quantile

__all__ = ["chi2_cdf", "chi2_quantile", "min_detectable", "paired_sds", "pooled_sd", "power_paired_t",
           "sd_upper_bound", "seeds_for_power"]


@lru_cache(maxsize=4096)
def _crit(alpha: float, df: int) -> float:
    return t_quantile(1 - alpha / 2, df)


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def power_paired_t(n: int, delta: float, sigma: float, alpha: float = 0.05, panels: int = 1000) -> float:
    """Power of the two-sided paired t test with ``n`` pairs (see the module docstring)."""
    if n < 2:
        raise ValueError(f"power_paired_t: n must be >= 2 pairs, got {n}")
    if sigma <= 0:
        raise ValueError(f"power_paired_t: sigma must be > 0, got {sigma}")
    if not 0 < alpha < 1:
        raise ValueError(f"power_paired_t: alpha must be in (0, 1), got {alpha}")
    df = n - 1
    c = _crit(alpha, df)
    nc = delta / sigma * math.sqrt(n)
    # density of U = sqrt(V / df): 2 (df/2)^(df/2) / Gamma(df/2) u^(df-1) exp(-df u^2 / 2)
    logk = math.log(2.0) + (df / 2) * math.log(df / 2) - math.lgamma(df / 2)
    hi = 1.0 + 12.0 / math.sqrt(2.0 * df) + 8.0  # the density is negligible beyond
    h = hi / panels
    total = 0.0
    for i in range(panels + 1):
        u = i * h
        if u == 0.0:
            dens = math.exp(logk) if df == 1 else 0.0
        else:
            dens = math.exp(logk + (df - 1) * math.log(u) - df * u * u / 2)
        w = 1 if i in (0, panels) else (4 if i % 2 else 2)
        total += w * dens * ((1.0 - _phi(c * u - nc)) + _phi(-c * u - nc))
    return min(1.0, total * h / 3)


def seeds_for_power(delta: float, sigma: float, alpha: float = 0.05, target: float = 0.8, n_max: int = 1000) -> int:
    """Smallest number of paired seeds ``n >= 2`` whose power reaches ``target``."""
    for n in range(2, n_max + 1):
        if power_paired_t(n, delta, sigma, alpha) >= target:
            return n
    raise ValueError(f"seeds_for_power: more than {n_max} seeds needed for delta={delta}, sigma={sigma}")


def min_detectable(n: int, sigma: float, alpha: float = 0.05, target: float = 0.8) -> float:
    """Smallest true difference with power ``target`` at ``n`` seeds (bisection to 1e-4 * sigma)."""
    lo, hi = 0.0, sigma
    while power_paired_t(n, hi, sigma, alpha) < target:
        hi *= 2
    while hi - lo > 1e-4 * sigma:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if power_paired_t(n, mid, sigma, alpha) < target else (lo, mid)
    return hi


def chi2_cdf(x: float, df: int) -> float:
    """CDF of chi-square with ``df`` degrees of freedom: the regularized lower incomplete gamma
    ``P(df/2, x/2)`` by its power series (converges for every ``x >= 0``)."""
    if df < 1:
        raise ValueError(f"chi2_cdf: df must be >= 1, got {df}")
    if x <= 0:
        return 0.0
    a, z = df / 2, x / 2
    term = 1.0 / a
    s = term
    k = 0
    while abs(term) > 1e-17 * abs(s):
        k += 1
        term *= z / (a + k)
        s += term
        if k > 100000:
            break
    return min(1.0, math.exp(a * math.log(z) - z - math.lgamma(a)) * s)


def chi2_quantile(p: float, df: int) -> float:
    """``x`` with ``chi2_cdf(x, df) = p`` (bisection to 1e-10 relative), ``0 < p < 1``."""
    if not 0 < p < 1:
        raise ValueError(f"chi2_quantile: p must be in (0, 1), got {p}")
    lo, hi = 0.0, max(1.0, 2.0 * df)
    while chi2_cdf(hi, df) < p:
        hi *= 2
    while hi - lo > 1e-10 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if chi2_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def sd_upper_bound(sd: float, df: int, confidence: float = 0.8) -> float:
    """One-sided upper confidence bound of sigma from a pooled SD with ``df`` degrees of freedom:
    ``sd * sqrt(df / chi2_{1 - confidence}(df))``."""
    return sd * math.sqrt(df / chi2_quantile(1 - confidence, df))


def pooled_sd(diffs: Iterable[Sequence[float]]) -> tuple[float, int]:
    """``(sqrt(sum_k sum_s (d_ks - mean_k)^2 / sum_k (n_k - 1)), sum_k (n_k - 1))`` over groups of
    differences with at least 2 values each (groups of fewer are an error)."""
    ss, df = 0.0, 0
    for d in diffs:
        d = [float(x) for x in d]
        if len(d) < 2:
            raise ValueError(f"pooled_sd: every group needs >= 2 differences, got {len(d)}")
        m = sum(d) / len(d)
        ss += sum((x - m) ** 2 for x in d)
        df += len(d) - 1
    if df == 0:
        raise ValueError("pooled_sd: no differences")
    return math.sqrt(ss / df), df


def paired_sds(results: Mapping[str, Mapping[int, Mapping[str, Any]]], bases: Mapping[str, str | None],
               value: Callable[[Mapping[str, Any]], float], exclude: Sequence[str] = ()) -> dict[str, list[float]]:
    """arm -> paired differences ``value(arm run) - value(base run)`` over shared seeds (sorted), for
    every arm with a base that has results and at least 2 shared seeds, except ``exclude``.

    Args:
        results: arm -> seed -> result dict (:func:`echorl.study.report.load_results`).
        bases: arm -> its base arm (None: a base method).
        value: the per-run number, e.g. ``lambda r: 100 * r["final"]["test_avg"]``.
    """
    out: dict[str, list[float]] = {}
    for arm, base in bases.items():
        if not base or arm in exclude or arm not in results or base not in results:
            continue
        seeds = sorted(set(results[arm]) & set(results[base]))
        if len(seeds) >= 2:
            out[arm] = [value(results[arm][s]) - value(results[base][s]) for s in seeds]
    return out
