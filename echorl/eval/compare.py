"""``echorl eval compare A B``: paired per-problem differences of two evaluations, with a bootstrap.

Both runs must hold the same problems (paired by ``(benchmark, problem_id)``). For each problem the
metric (default ``avg@n``; or ``pass@k`` / ``maj@k``, :mod:`echorl.eval.metrics`) is computed from
each run's samples; ``d_i = B_i - A_i``. A benchmark reports ``mean(d)`` and a percentile bootstrap
interval over problems: ``resamples`` times, draw its problems with replacement (numpy
``default_rng(seed)``) and take the mean. A group's macro difference is the mean over its
benchmarks of their mean differences; its interval resamples every benchmark's problems
independently in the same replicate (stratified) and averages the replicate means.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from echorl.eval import metrics as M

__all__ = ["compare_samples", "format_comparison", "per_problem"]


def per_problem(samples: Sequence[dict[str, Any]], metric: str) -> dict[str, dict[str, float]]:
    """``{benchmark: {problem_id: value}}`` of ``metric`` (``avg`` means ``avg@n``)."""
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for s in samples:
        grouped.setdefault(s["benchmark"], {}).setdefault(str(s["problem_id"]), []).append(s)
    out: dict[str, dict[str, float]] = {}
    for bench, probs in grouped.items():
        vals = {}
        for pid, ss in probs.items():
            ss = sorted(ss, key=lambda s: s["sample"])
            n = len(ss)
            key = f"avg@{n}" if metric in ("avg", f"avg@{n}") else metric
            k = int(key.split("@")[1])
            if not 1 <= k <= n:
                raise ValueError(f"--metric {metric}: benchmark {bench!r} has n={n} samples per problem; k must be <= n")
            m = M.problem_metrics([s["correct"] for s in ss], [s["pred"] for s in ss], ks=[k])
            if key not in m:
                raise ValueError(f"--metric must be avg, pass@k or maj@k, got {metric!r}")
            vals[pid] = m[key]
        out[bench] = vals
    return out


def compare_samples(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], *, metric: str = "avg",
                    resamples: int = 10000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Paired differences ``B - A`` per benchmark and per group macro (see the module docstring).

    Returns ``{"metric", "resamples", "seed", "level", "benchmarks": {name: {"group", "problems",
    "a", "b", "diff", "lo", "hi"}}, "groups": {tag: {"benchmarks", "a", "b", "diff", "lo", "hi"}}}``.
    """
    if resamples < 1:
        raise ValueError(f"--resamples must be >= 1, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"--level must be in (0, 1), got {level}")
    pa, pb = per_problem(a, metric), per_problem(b, metric)
    if set(pa) != set(pb):
        raise ValueError(f"the runs cover different benchmarks: only in A {sorted(set(pa) - set(pb))}, "
                         f"only in B {sorted(set(pb) - set(pa))}")
    group = {s["benchmark"]: s["group"] for s in a}
    rng = np.random.default_rng(seed)
    q = ((1 - level) / 2, 1 - (1 - level) / 2)
    benches: dict[str, dict[str, Any]] = {}
    reps: dict[str, np.ndarray] = {}
    for name in sorted(pa):
        ids = sorted(pa[name])
        if set(ids) != set(pb[name]):
            miss = sorted(set(ids) ^ set(pb[name]))[:5]
            raise ValueError(f"benchmark {name!r}: the runs hold different problems (e.g. {miss}); compare runs of "
                             "the same benchmark files")
        va = np.array([pa[name][i] for i in ids], dtype=np.float64)  # [m]
        vb = np.array([pb[name][i] for i in ids], dtype=np.float64)
        d = vb - va
        idx = rng.integers(0, len(d), size=(resamples, len(d)))  # [R, m]
        reps[name] = d[idx].mean(axis=1)  # [R]
        lo, hi = np.quantile(reps[name], q)
        benches[name] = {"group": group[name], "problems": len(d), "a": float(va.mean()), "b": float(vb.mean()),
                         "diff": float(d.mean()), "lo": float(lo), "hi": float(hi)}
    groups: dict[str, dict[str, Any]] = {}
    for tag in sorted({v["group"] for v in benches.values()}) + ["all"]:
        names = [n for n, v in benches.items() if tag == "all" or v["group"] == tag]
        r = np.mean([reps[n] for n in names], axis=0)  # [R]
        lo, hi = np.quantile(r, q)
        groups[tag] = {"benchmarks": names, **{k: M.mean([benches[n][k] for n in names]) for k in ("a", "b", "diff")},
                       "lo": float(lo), "hi": float(hi)}
    return {"metric": metric, "resamples": resamples, "seed": seed, "level": level, "benchmarks": benches,
            "groups": groups}


def format_comparison(res: dict[str, Any], name_a: str = "A", name_b: str = "B") -> str:
    """A plain-text table of :func:`compare_samples`' result."""
    pct = int(round(res["level"] * 100))
    head = f"{'benchmark':24s} {'group':6s} {'problems':>8s} {name_a[:10]:>10s} {name_b[:10]:>10s} {'B-A':>8s}  {pct}% CI"
    lines = [f"metric {res['metric']}, paired over problems, bootstrap {res['resamples']} resamples (seed {res['seed']})",
             head, "-" * len(head)]
    for n, v in res["benchmarks"].items():
        lines.append(f"{n[:24]:24s} {v['group'][:6]:6s} {v['problems']:8d} {v['a']:10.4f} {v['b']:10.4f} "
                     f"{v['diff']:+8.4f}  [{v['lo']:+.4f}, {v['hi']:+.4f}]")
    for tag, v in res["groups"].items():
        lines.append(f"{'macro/' + tag:24s} {tag[:6]:6s} {len(v['benchmarks']):8d} {v['a']:10.4f} {v['b']:10.4f} "
                     f"{v['diff']:+8.4f}  [{v['lo']:+.4f}, {v['hi']:+.4f}]")
    return "\n".join(lines)
