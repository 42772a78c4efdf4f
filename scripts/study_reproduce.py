#!/usr/bin/env python
"""Does the current code reproduce committed study runs? Retrain the first steps of each and compare.

    python scripts/study_reproduce.py --study confirm --arms grpo,coef_3e-2 --seed 101

For each arm, the run ``<folder>/<arm>/seed<k>.json`` (committed, possibly at an older commit) is
retrained for ``--window`` steps with this checkout's code and the study's own trainer
(:func:`echorl.study.runner.replay_steps`), and the first window of every training curve (means over
steps 1..window) and the validation before training are compared with the committed ones. A study
whose later arms pair with runs made at an older commit (``results/confirm/PLAN_competitors.md``'s
shared arms) needs these to agree. Prints a table, writes JSON, exits 1 when a number differs by more
than ``--tol``. Bit-for-bit equality needs the same torch build and CPU kernels (results record them as
``machine``); on another CPU the continuous numbers may differ by ~1e-7 while every count agrees.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from echorl.study.arms import STUDIES, arms_of, get_arms
    from echorl.study.runner import first_window_diffs, machine_info, replay_steps, result_path

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default="confirm", choices=sorted(STUDIES))
    ap.add_argument("--arms", required=True, help="comma-separated arm names of the study")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--window", type=int, default=10, help="steps to retrain: the committed curves' window")
    ap.add_argument("--folder", help="results folder (default: the study's)")
    ap.add_argument("--tol", type=float, default=1e-6, help="largest absolute difference counted as equal")
    ap.add_argument("--out", default=None, help="JSON output (default: <tmp>/study_reproduce.json)")
    args = ap.parse_args(argv)

    s = STUDIES[args.study]
    folder = Path(args.folder or ROOT / s.folder)
    report, bad = {}, 0
    here = machine_info()
    print(f"this machine: {here}")
    for arm in get_arms(args.arms.split(","), arms_of(s)):
        committed = json.loads(result_path(folder, arm.name, args.seed).read_text())
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            rows = replay_steps(arm, args.seed, s, tmp, args.window)
        diffs = first_window_diffs(committed, rows, args.window)
        worst = max((d["abs_diff"] for d in diffs if d["abs_diff"] is not None), default=0.0)
        bad += sum(d["abs_diff"] is not None and d["abs_diff"] > args.tol for d in diffs)
        then = committed.get("machine")  # absent from runs made before results recorded it
        report[arm.name] = {"committed_at": committed.get("git_commit"), "committed_on": then,
                            "seconds": round(time.time() - t0, 1), "max_abs_diff": worst, "numbers": diffs}
        print(f"\n{arm.name} seed {args.seed} (committed at {str(committed.get('git_commit'))[:7]} on "
              f"{'the same kind of machine' if then == here else then or 'an unrecorded machine'}; "
              f"{args.window} steps retrained in {time.time() - t0:.0f} s)")
        print(f"| {'number':<22} | {'committed':>14} | {'now':>14} | {'|diff|':>9} |")
        for d in diffs:
            fmt = (lambda v: f"{v:14.8g}" if v is not None else f"{'-':>14}")
            diff = f"{d['abs_diff']:9.2e}" if d["abs_diff"] is not None else f"{'-':>9}"
            print(f"| {d['key']:<22} | {fmt(d['committed'])} | {fmt(d['now'])} | {diff} |")
    out = Path(args.out or Path(tempfile.gettempdir()) / "study_reproduce.json")
    out.write_text(json.dumps(report, indent=1))
    print(f"\n{'reproduced' if not bad else f'{bad} number(s) differ by more than {args.tol:g}'}; JSON: {out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
