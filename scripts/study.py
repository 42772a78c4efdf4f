#!/usr/bin/env python
"""The controlled study of EchoRL on the chain testbed (docs/results.md).

    python scripts/study.py                      # the full study: every arm, resumes, skips finished runs
    python scripts/study.py --arms grpo,echorl   # only these arms (their seed counts from the table)
    python scripts/study.py --arms echorl --seeds 6,7   # other seeds
    python scripts/study.py --quick              # reduced study (2 arms, 1 seed, 30 steps), results/study_quick/
    python scripts/study.py --pilot --model DIR  # grpo/echorl, 2 seeds, 60 steps, results/study_pilot/
    python scripts/study.py --report             # docs/results.md + docs/images/results_*.png from results/study/
    python scripts/study.py --dry-run            # print the plan (runs left, runs done)

Arms are the table ``echorl.study.arms.ARMS`` (name -> overrides of ``echorl/config/testbed.yaml``).
Each finished (arm, seed) run writes ``<folder>/<arm>/seed<k>.json``; with ``--commit`` that file
(and the regenerated report) is committed right away (``git commit --only``: nothing else staged is
touched). Before the first run the held-out sets are checked and written to ``<folder>/splits.json``,
and the untrained model is evaluated once (``<folder>/initial.json``). Run folders (checkpoints,
``metrics.jsonl``, validation samples) go to ``outputs/study/<full|quick>/<arm>/seed<k>/``;
an interrupted run resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _settings(args):
    import dataclasses

    from echorl.study.arms import FULL, PILOT, QUICK

    s = QUICK if args.quick else PILOT if args.pilot else FULL
    if args.model:
        s = dataclasses.replace(s, model=args.model)
    if args.steps:
        s = dataclasses.replace(s, steps=args.steps)
    if args.folder:
        s = dataclasses.replace(s, folder=args.folder)
    if args.threads:
        s = dataclasses.replace(s, extra=s.extra + (f"trainer.num_threads={args.threads}",))
    return s


def _report_paths(s, folder: Path) -> tuple[Path, Path]:
    """docs/results.md for the most complete study that has results (full, else quick, else pilot),
    ``<folder>/report.md`` for the others."""
    from echorl.study.report import load_results

    default = {"full": "results/study", "quick": "results/study_quick", "pilot": "results/study_pilot"}
    lead = next((name for name in ("full", "quick", "pilot") if load_results(ROOT / default[name])), "full")
    if s.name == lead and folder == ROOT / default[s.name]:
        return ROOT / "docs/results.md", ROOT / "docs/images"
    return folder / "report.md", folder / "images"


def report(s, folder: Path) -> list[Path]:
    from echorl.study.report import write_report

    md, images = _report_paths(s, folder)
    cmd = "python scripts/study.py --report" + {"quick": " --quick", "pilot": " --pilot"}.get(s.name, "")
    write_report(folder, s, md, images, command=cmd, full_folder=None if s.name == "full" else ROOT / "results/study")
    return [md, *sorted(images.glob("results_*.png"))]


def initial_eval(s, folder: Path) -> Path:
    """Evaluate the untrained model once with the study's evaluation (``initial.json``)."""
    from echorl.eval.run import make_pool
    from echorl.local import load_config
    from echorl.local.trainer import load_model
    from echorl.study.runner import _final_eval_block, eval_policy

    path = folder / "initial.json"
    if path.exists():
        return path
    cfg = load_config([f"model.name={s.model}", *s.extra], config_name="testbed")
    model, tok = load_model(str(cfg.model.name))
    pool = make_pool(int(cfg.reward.num_workers), float(cfg.reward.timeout_s))
    t0 = time.time()
    try:
        ev = eval_policy(model, tok, s, pool)
    finally:
        pool.close()
    res = {"model": str(cfg.model.name), "eval_s": round(time.time() - t0, 1), "final": _final_eval_block(ev, s), **ev}
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", default=None, help="comma-separated arm names (default: every arm of the settings)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds for every selected arm (default: the table's)")
    ap.add_argument("--quick", action="store_true", help="the reduced study (under 20 minutes), results/study_quick/")
    ap.add_argument("--pilot", action="store_true", help="the pilot (grpo/echorl, 2 seeds, 60 steps), results/study_pilot/")
    ap.add_argument("--model", default=None, help="model.name for every run (default tiny-chain)")
    ap.add_argument("--report", action="store_true", help="only regenerate the report from the results folder")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    ap.add_argument("--commit", action="store_true", help="git-commit each result file (and the report) when written")
    ap.add_argument("--folder", default=None, help="results folder (default results/study or results/study_quick)")
    ap.add_argument("--runs-dir", default=None, help="run folders (default outputs/study/<full|quick>)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the settings')")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (trainer.num_threads; default 1)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads or 1))
    os.chdir(ROOT)
    from echorl.study.arms import get_arms
    from echorl.study.runner import commit_file, plan_runs, run_one

    s = _settings(args)
    folder = ROOT / s.folder
    if args.report:
        for p in report(s, folder):
            print(p)
        return 0
    names = args.arms.split(",") if args.arms else (list(s.arms) if s.arms else None)
    arms = get_arms(names)
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
    todo, done = plan_runs(arms, s, folder, seeds)
    print(f"{len(done)} runs done, {len(todo)} to run: " + ", ".join(f"{a.name}/seed{k}" for a, k in todo), flush=True)
    if args.dry_run:
        return 0
    runs_dir = Path(args.runs_dir or f"outputs/study/{s.name}")
    if not (folder / "splits.json").exists():
        from echorl.study.splits import split_record

        folder.mkdir(parents=True, exist_ok=True)
        (folder / "splits.json").write_text(json.dumps(split_record(s, list(range(1, 11)), 4096), indent=1))
        if args.commit:
            commit_file(folder / "splits.json", f"study ({s.name}): held-out and OOD sets fixed before the first run")
    p = initial_eval(s, folder)
    if args.commit:
        commit_file(p, f"study ({s.name}): evaluation of the untrained model")
    for arm, seed in todo:
        t0 = time.time()
        print(f"=== {arm.name} seed {seed} ({time.strftime('%H:%M:%S')})", flush=True)
        res = run_one(arm, seed, s, folder, runs_dir)
        f = res["final"]
        print(f"=== {arm.name} seed {seed}: test {f['test_avg']:.3f} ood {f['ood_avg']:.3f} "
              f"pass@1 {f['pass@k']['1']:.3f} dev {f.get('dev_start', float('nan')):.3f}->{f.get('dev_avg', float('nan')):.3f} "
              f"{time.time() - t0:.0f} s ({res['s_per_step']:.2f} s/step)", flush=True)
        paths = [folder / arm.name / f"seed{seed}.json"]
        try:
            paths += report(s, folder)
        except Exception as e:  # the result file matters more than the report; say so and go on
            print(f"report failed: {e!r}", flush=True)
        if args.commit:
            commit_file(paths, f"study ({s.name}): {arm.name} seed {seed}: test {f['test_avg']:.3f}, "
                               f"ood {f['ood_avg']:.3f}, {res['steps']} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
