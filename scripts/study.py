#!/usr/bin/env python
"""The controlled study of EchoRL on the chain testbed (docs/results.md).

    python scripts/study.py                      # the full study: every arm, resumes, skips finished runs
    python scripts/study.py --arms grpo,echorl   # only these arms (their seed counts from the table)
    python scripts/study.py --arms echorl --seeds 6,7   # other seeds
    python scripts/study.py --quick              # reduced study (2 arms, 1 seed, 30 steps), results/study_quick/
    python scripts/study.py --pilot --model DIR  # grpo/echorl, 2 seeds, 60 steps, results/study_pilot/
    python scripts/study.py --report             # docs/results.md + docs/images/results_*.png from results/study/
    python scripts/study.py --dry-run            # print the plan (runs left, runs done) and the time left
    python scripts/study.py --study confirm --jobs 2 --commit   # the confirmatory study (results/confirm/PLAN.md)
    python scripts/study.py --study confirm --report            # results/confirm/report.md
    python scripts/study.py --study competitors --dry-run --jobs 2   # results/confirm/PLAN_competitors.md
    python scripts/study.py --study competitors --report        # results/confirm/report_competitors.md

Arms are the table ``echorl.study.arms.ARMS`` (``CONFIRM_ARMS`` for ``--study confirm``,
``COMPETITOR_ARMS`` for ``--study competitors``: the new arms only, written to results/confirm/ next
to the confirmatory arms, whose runs are the plan's shared arms; name -> overrides of
``echorl/config/testbed.yaml``). ``--jobs N`` runs N (arm, seed) runs at once, each in
its own process with one torch thread (log: ``<run dir>.log``); this process writes the report and
commits each finished run, one commit at a time (``commit_file`` holds a lock on the repository).
Each finished (arm, seed) run writes ``<folder>/<arm>/seed<k>.json``; with ``--commit`` that file
(and the regenerated report) is committed right away (``git commit --only``: nothing else staged is
touched). Before the first run the held-out sets are checked and written to ``<folder>/splits.json``,
and the untrained model is evaluated once (``<folder>/initial.json``). Run folders (checkpoints,
``metrics.jsonl``, validation samples) go to ``outputs/study/<study>/<arm>/seed<k>/``;
an interrupted run resumes from its last checkpoint. ``scripts/study_reproduce.py`` checks that a
later checkout still reproduces committed runs (their first steps, number for number).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _settings(args):
    from echorl.study.arms import STUDIES, Settings

    if args.settings_json:  # a study defined in a file (tests: tiny settings)
        s = Settings.from_dict(json.loads(Path(args.settings_json).read_text()))
    else:
        s = STUDIES["quick" if args.quick else "pilot" if args.pilot else args.study]
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
    if s.name == "competitors":
        from echorl.study.competitors import write_competitors_report

        write_competitors_report(folder, folder / "report_competitors.md", s)
        return [folder / "report_competitors.md"]
    if s.name == "confirm":
        from echorl.study.confirm import write_confirm_report

        write_confirm_report(folder, folder / "report.md", s)
        return [folder / "report.md"]
    if s.name not in ("full", "quick", "pilot"):  # a study defined in a file: its folder only
        from echorl.study.report import write_report

        write_report(folder, s, folder / "report.md", folder / "images")
        return [folder / "report.md", *sorted((folder / "images").glob("results_*.png"))]
    from echorl.study.report import write_report

    md, images = _report_paths(s, folder)
    cmd = "python scripts/study.py --report" + {"quick": " --quick", "pilot": " --pilot"}.get(s.name, "")
    write_report(folder, s, md, images, command=cmd, full_folder=None if s.name == "full" else ROOT / "results/study")
    return [md, *sorted(images.glob("results_*.png"))]


def initial_eval(s, folder: Path) -> tuple[Path, bool]:
    """Evaluate the untrained model once with the study's evaluation (``initial.json``); the path and
    whether this call wrote it."""
    from echorl.eval.run import make_pool
    from echorl.local import load_config
    from echorl.models.loading import load_model
    from echorl.study.runner import _final_eval_block, eval_policy

    path = folder / "initial.json"
    if path.exists():
        return path, False
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
    return path, True


def _finished(s, folder: Path, arm, seed: int, res: dict, t0: float, commit: bool, write_report: bool) -> None:
    """Print the run's line, regenerate the report, commit the result (and the report)."""
    f = res["final"]
    print(f"=== {arm.name} seed {seed}: test {f['test_avg']:.3f} ood {f['ood_avg']:.3f} "
          f"pass@1 {f['pass@k']['1']:.3f} dev {f.get('dev_start', float('nan')):.3f}->{f.get('dev_avg', float('nan')):.3f} "
          f"{time.time() - t0:.0f} s ({res['s_per_step']:.2f} s/step)", flush=True)
    paths = [folder / arm.name / f"seed{seed}.json"]
    if write_report:
        try:
            paths += report(s, folder)
        except Exception as e:  # the result file matters more than the report; say so and go on
            print(f"report failed: {e!r}", flush=True)
    if commit:
        from echorl.study.runner import commit_file

        commit_file(paths, f"study ({s.name}): {arm.name} seed {seed}: test {f['test_avg']:.3f}, "
                           f"ood {f['ood_avg']:.3f}, {res['steps']} steps")


def _child_args(args, arm: str, seed: int) -> list[str]:
    """The command line of one (arm, seed) run in its own process (one torch thread, no report, no commit)."""
    out = [sys.executable, str(Path(__file__).resolve()), "--arms", arm, "--seeds", str(seed), "--threads", "1",
           "--no-report"]
    for flag in ("study", "model", "folder", "runs_dir", "steps", "settings_json"):
        v = getattr(args, flag)
        if v is not None and not (flag == "study" and v == "full"):
            out += [f"--{flag.replace('_', '-')}", str(v)]
    if args.quick:
        out.append("--quick")
    if args.pilot:
        out.append("--pilot")
    return out


def run_parallel(args, s, folder: Path, runs_dir: Path, todo: list, jobs: int) -> int:
    """Run ``todo`` with ``jobs`` processes at once; report and commit each run as it finishes.
    Returns the number of runs that failed (their logs say why)."""
    from echorl.study.runner import result_path

    queue, running, failed = list(todo), {}, 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    while queue or running:
        while queue and len(running) < jobs:
            arm, seed = queue.pop(0)
            log = runs_dir / arm.name / f"seed{seed}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            fh = open(log, "a")
            p = subprocess.Popen(_child_args(args, arm.name, seed), stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            running[p] = (arm, seed, log, fh, time.time())
            print(f"=== {arm.name} seed {seed} started ({time.strftime('%H:%M:%S')}, pid {p.pid}, log {log})", flush=True)
        time.sleep(1)
        for p in [p for p in running if p.poll() is not None]:
            arm, seed, log, fh, t0 = running.pop(p)
            fh.close()
            path = result_path(folder, arm.name, seed)
            if p.returncode != 0 or not path.exists():
                failed += 1
                print(f"=== {arm.name} seed {seed} FAILED (exit {p.returncode}); see {log}", flush=True)
                continue
            _finished(s, folder, arm, seed, json.loads(path.read_text()), t0, args.commit, True)
    return failed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="full", choices=("full", "quick", "pilot", "confirm", "competitors"),
                    help="which study: its settings, arm table and results folder (default full)")
    ap.add_argument("--arms", default=None, help="comma-separated arm names (default: every arm of the settings)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds for every selected arm (default: the table's)")
    ap.add_argument("--quick", action="store_true", help="the reduced study (same as --study quick), results/study_quick/")
    ap.add_argument("--pilot", action="store_true", help="the pilot (same as --study pilot), results/study_pilot/")
    ap.add_argument("--model", default=None, help="model.name for every run (default tiny-chain)")
    ap.add_argument("--report", action="store_true", help="only regenerate the report from the results folder")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    ap.add_argument("--commit", action="store_true", help="git-commit each result file (and the report) when written")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs at once, each in its own process with one torch thread (default 1: in this process)")
    ap.add_argument("--folder", default=None, help="results folder (default: the study's, e.g. results/study)")
    ap.add_argument("--runs-dir", default=None, help="run folders (default outputs/study/<study>)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the settings')")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (trainer.num_threads; default 1)")
    ap.add_argument("--settings-json", default=None, help=argparse.SUPPRESS)  # Settings.to_dict() of a custom study
    ap.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)  # a --jobs worker: the parent reports
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads or 1))
    os.chdir(ROOT)
    from echorl.study.arms import arms_of, get_arms
    from echorl.study.runner import commit_file, estimate_left, plan_runs, run_one

    s = _settings(args)
    folder = ROOT / s.folder
    if args.report:
        for p in report(s, folder):
            print(p)
        return 0
    names = args.arms.split(",") if args.arms else (list(s.arms) if s.arms else None)
    arms = get_arms(names, arms_of(s))
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
    todo, done = plan_runs(arms, s, folder, seeds)
    print(f"{len(done)} runs done, {len(todo)} to run: " + ", ".join(f"{a.name}/seed{k}" for a, k in todo), flush=True)
    runs_dir = Path(args.runs_dir or f"outputs/study/{s.name}")
    if args.dry_run:
        est = estimate_left(todo, done, s, folder, runs_dir)
        if todo and est["median_s"] == est["median_s"]:  # not NaN: some run has finished
            print(f"Estimate: {est['seconds_left'] / 3600:.1f} h of run time left ({est['median_s']:.0f} s per finished "
                  f"run, median; {est['partly_done']:.0f} run(s) resume from a checkpoint), about "
                  f"{est['seconds_left'] / 3600 / args.jobs:.1f} h of wall time at --jobs {args.jobs} on free cores.")
        return 0
    if not (folder / "splits.json").exists():
        from echorl.study.splits import split_record

        train_seeds = sorted(set(range(1, 11)) | set(s.seed_list or ()))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "splits.json").write_text(json.dumps(split_record(s, train_seeds, 4096), indent=1))
        if args.commit:
            commit_file(folder / "splits.json", f"study ({s.name}): held-out and OOD sets fixed before the first run")
    p, written = initial_eval(s, folder)
    if args.commit and written:  # a resumed study finds it committed already
        commit_file(p, f"study ({s.name}): evaluation of the untrained model")
    if args.jobs > 1 and len(todo) > 1:
        return 1 if run_parallel(args, s, folder, runs_dir, todo, args.jobs) else 0
    for arm, seed in todo:
        t0 = time.time()
        print(f"=== {arm.name} seed {seed} ({time.strftime('%H:%M:%S')})", flush=True)
        res = run_one(arm, seed, s, folder, runs_dir)
        _finished(s, folder, arm, seed, res, t0, args.commit, not args.no_report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
