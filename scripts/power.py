#!/usr/bin/env python
"""Seeds for the confirmatory study (results/confirm/PLAN.md) from the full study's paired SD.

    python scripts/power.py --replace results/study_superseded   # the registered calculation (results/confirm/power.json)
    python scripts/power.py --out /tmp/power.json                 # the same on today's results/study/

From ``results/study/`` (the exploratory study) it takes, for every arm with a base, the paired
differences (points) of

* ``test``: final test accuracy (step 150), the exploratory study's endpoint;
* ``dev_ckpt``: the mean of the ``dev`` validations at steps 100, 125 and 150, the only held-out
  measurement at the confirmatory endpoint's checkpoints (test was evaluated at step 150 only);

pools their SD (``echorl.study.power.pooled_sd``), and computes the seeds a two-sided paired t test
needs for 80% power at a 2-point difference with the planned correction (Holm over 4 comparisons
in the dose family, 3 in the clip-rule family; planned at Holm's first step, alpha / m, which is
Bonferroni's and the strictest Holm applies). It also gives the EchoRL coefficient of each clip
rule that matches the highest-entropy clip's gradient share at the plan's coef (the shares measured
at coef 1e-3 in the exploratory study).

The plan was registered before the LUFFY/UFT arms of the exploratory study were re-run under their
authors' rules; the runs it was computed from are kept in ``results/study_superseded/``. On today's
``results/study/`` the same calculation gives 15 seeds instead of 14 (``results/confirm/notes.md``);
the plan's seed count stays fixed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from echorl.study.power import (  # noqa: E402
    min_detectable,
    paired_sds,
    pooled_sd,
    power_paired_t,
    sd_upper_bound,
    seeds_for_power,
)
from echorl.study.report import _vals, load_results  # noqa: E402

DELTA, TARGET, ALPHA = 2.0, 0.8, 0.05
FAMILIES = {"dose": 4, "rule": 3}
CKPT_STEPS = (100, 125, 150)
RULES = {"sel_random_prefix": "random_prefix", "sel_full": "full", "nll_success_full": "nll_full"}
PEAK_COEF = 0.03


def dev_ckpt(r: dict) -> float:
    val = dict(zip(r["val"]["step"], r["val"]["dev"]))
    return 100 * statistics.mean(val[s] for s in CKPT_STEPS)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", default=str(ROOT / "results/study"), help="the exploratory study's results")
    ap.add_argument("--replace", default=None,
                    help="a results folder whose arms replace the same arms of --folder (the registered calculation "
                         "used results/study_superseded/ for the LUFFY/UFT arms, re-run after registration)")
    ap.add_argument("--out", default=str(ROOT / "results/confirm/power.json"), help="where the calculation goes")
    args = ap.parse_args(argv)
    results = load_results(args.folder)
    if not results:
        raise SystemExit(f"no results in {args.folder}")
    if args.replace:
        replaced = load_results(args.replace)
        if not replaced:
            raise SystemExit(f"--replace {args.replace}: no results there")
        results.update(replaced)
    bases = {a: next(iter(runs.values()))["base"] for a, runs in results.items()}
    out: dict = {"delta": DELTA, "target_power": TARGET, "alpha": ALPHA, "families": FAMILIES, "sd": {}}
    print(f"paired SDs (points) from {Path(args.folder).relative_to(ROOT) if Path(args.folder).is_relative_to(ROOT) else args.folder}:")
    for name, fn in (("test", lambda r: 100 * r["final"]["test_avg"]), ("dev_ckpt", dev_ckpt)):
        for label, excl in (("all", ()), ("without coef_1e-1", ("coef_1e-1",))):
            diffs = paired_sds(results, bases, fn, exclude=excl)
            sd, df = pooled_sd(diffs.values())
            ub = sd_upper_bound(sd, df, 0.8)
            out["sd"][f"{name}/{label}"] = {"sd": sd, "df": df, "sd_upper80": ub,
                                             "per_arm": {a: statistics.stdev(d) for a, d in diffs.items()}}
            print(f"  {name:8s} {label:18s} SD {sd:.2f} (df {df}), 80% upper bound {ub:.2f}")
    plan = out["sd"]["dev_ckpt/all"]
    sigma = plan["sd_upper80"]
    out["sigma_plan"] = sigma
    out["sigma_rule"] = "80% upper confidence bound of the pooled paired SD of dev_ckpt over every comparison"
    print(f"\nplanning SD: {out['sigma_rule']} = {sigma:.2f} points")
    out["seeds"] = {}
    for fam, m in FAMILIES.items():
        n = seeds_for_power(DELTA, sigma, ALPHA / m, TARGET)
        out["seeds"][fam] = n
        print(f"  {fam}: m={m}, alpha/m={ALPHA / m:.4f}: n={n} (power {power_paired_t(n, DELTA, sigma, ALPHA / m):.3f}; "
              f"n-1 gives {power_paired_t(n - 1, DELTA, sigma, ALPHA / m):.3f})")
    n = max(max(out["seeds"].values()), 8)
    out["n"] = n
    print(f"  seeds per arm: {n}")
    sens = {}
    for key in ("test/all", "test/without coef_1e-1", "dev_ckpt/all", "dev_ckpt/without coef_1e-1"):
        s = out["sd"][key]["sd"]
        sens[key] = {"power_at_n": power_paired_t(n, DELTA, s, ALPHA / 4), "mde_at_n": min_detectable(n, s, ALPHA / 4),
                     "n_needed": seeds_for_power(DELTA, s, ALPHA / 4, TARGET)}
        print(f"  if the SD is {key} ({s:.2f}): power {sens[key]['power_at_n']:.2f} at n={n}, "
              f"80%-power difference {sens[key]['mde_at_n']:.1f}, n needed {sens[key]['n_needed']}")
    out["sensitivity"] = sens
    print("\nexploratory study at n=5 (alpha 0.05, 80% power): smallest detectable difference "
          + ", ".join(f"{k}: {min_detectable(5, v['sd']):.1f}" for k, v in out["sd"].items()))
    shares = {a: statistics.mean(s / (1 - s) for s in _vals(results[a], "grad_echo_share").values())
              for a in ("echorl", *RULES)}
    out["matched_coef"] = {"peak_coef": PEAK_COEF, "x_per_1e-3": shares, "coef": {}}
    print(f"\ngradient share at coef 1e-3 as x = share / (1 - share) (mean over seeds); coefs matched to the peak "
          f"clip at coef {PEAK_COEF}:")
    for a, rule in RULES.items():
        c = PEAK_COEF * shares["echorl"] / shares[a]
        c2 = float(f"{c:.2g}")
        out["matched_coef"]["coef"][rule] = {"exact": c, "rounded": c2}
        print(f"  {rule:14s} x {shares[a]:.6f}: coef {c:.4f} -> {c2}")
    x = PEAK_COEF / 1e-3 * shares["echorl"]
    out["matched_coef"]["expected_share"] = x / (1 + x)
    print(f"  expected share of the peak clip at {PEAK_COEF}: {100 * x / (1 + x):.1f}%")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
    print(f"\n{args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
