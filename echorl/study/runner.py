"""Run one (arm, seed) of the study and write its result file; plan which runs are left.

A run trains with the embedded engine (:class:`echorl.local.trainer.LocalTrainer`, ``resume=auto``:
a killed run continues from its last checkpoint), validates on ``dev`` during training (the engine's
``trainer.test_freq``, ``val-core/dev/...``), then evaluates the final policy on ``test`` and ``ood``
(avg@n) and pass@k on a ``test`` subset with :func:`echorl.eval.run.evaluate` (the code of
``echorl eval``). The result is one JSON file, ``<folder>/<arm>/seed<k>.json`` (:data:`SCHEMA`):

    {"schema", "arm", "seed", "overrides", "settings", "git_commit", "git_dirty", "threads", "machine",
     "steps", "wall_s", "train_s", "eval_s", "s_per_step", "resumed", "wall_s_attempts", "attempts",
     "final": {"test_avg", "ood_avg", "dev_avg", "pass@k": {k: v}, "entropy", "reward",
               "test_ckpt", "ood_ckpt",                    # with Settings.eval_steps only
               "all_success_frac", "mixed_frac", "all_fail_frac", "clips", "clip_len_frac",
               "clip_tokens", "pg_clipfrac", "grad_norm", "grad_norm_rl", "grad_norm_echo",
               "grad_echo_share", "grad_cos", "echo_loss"},
     "curves": {"step": [...], <key>: [...]},          # means over windows of `window` steps
     "val": {"step": [...], "dev": [...]},             # dev mean@n at each validation
     "eval": {"test": {...}, "ood": {...}, "passk": {...}},   # echorl.eval summaries
     "per_problem": {"test": [correct counts], "ood": [...], "passk": [...]},
     "checkpoints": {"step": [...], "test_avg": [...], "ood_avg": [...]}}   # with Settings.eval_steps only

With ``Settings.eval_steps`` the engine's validator is wrapped (:class:`CheckpointEval`): at those
steps the policy is also evaluated on ``test`` and ``ood`` (same sampling as the final evaluation),
each result kept in ``<run dir>/checkpoint_eval.json`` so that a resumed run keeps them.

``machine`` (:func:`machine_info`) names what computed the run: float results equal bit for bit only
on the same torch build and CPU kernels (a run replayed elsewhere may differ by ~1e-7 and then part).

``wall_s`` is the time of the attempt that finished; ``wall_s_attempts`` adds every earlier attempt of
the run (one killed and resumed), work lost after its last checkpoint included, as :class:`RunClock`
recorded it in ``<run dir>/run_time.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from echorl import metric_names as M
from echorl.metric_names import timing_name
from echorl.metrics_file import read_metrics
from echorl.study.arms import Arm, Settings, compose, run_overrides

__all__ = ["SCHEMA", "CURVE_KEYS", "CheckpointEval", "RunClock", "FINAL_KEYS", "plan_runs", "result_path", "run_one", "summarize_run",
           "commit_file", "estimate_left", "eval_policy", "first_window_diffs", "machine_info",
           "replay_steps", "run_wall_s", "seeds_for", "study_trainer"]

SCHEMA = 1
# training metric -> short name (curves and the "final" block, mean of the last `tail` steps); rows are read
# under the current names (metric_names.canonical), so runs logged before the names were unified count too
STEP_TIME = timing_name("step")
FINAL_KEYS = {
    "reward/mean": "reward", "actor/entropy": "entropy", M.GROUPS_ALL_SUCCESS_FRAC: "all_success_frac",
    M.GROUPS_MIXED_FRAC: "mixed_frac", M.GROUPS_ALL_FAIL_FRAC: "all_fail_frac", M.CLIPS: "clips",
    M.CLIP_LEN_FRAC: "clip_len_frac", M.CLIP_TOKENS: "clip_tokens", M.LOSS: "echo_loss",
    "actor/pg_clipfrac": "pg_clipfrac", "actor/grad_norm": "grad_norm", "response_length/mean": "response_length",
    "study/grad_norm_rl": "grad_norm_rl", "study/grad_norm_echo": "grad_norm_echo",
    "study/grad_echo_share": "grad_echo_share", "study/grad_cos": "grad_cos",
    "filter_groups/num_gen_batches": "gen_batches", STEP_TIME: "s_per_step",
}
CURVE_KEYS = tuple(FINAL_KEYS)
# averaged over the whole run instead of the last `tail` steps (measured every k steps / a cost)
WHOLE_RUN_KEYS = ("study/grad_norm_rl", "study/grad_norm_echo", "study/grad_echo_share", "study/grad_cos",
                  STEP_TIME, "filter_groups/num_gen_batches")


def seeds_for(arm: Arm, s: Settings, override: Sequence[int] | None = None) -> list[int]:
    """Seeds of an arm: ``override`` (``--seeds``), else ``settings.seed_list``, else
    ``1..settings.seeds``, else ``1..arm.seeds``."""
    if override:
        return [int(x) for x in override]
    if s.seed_list:
        return [int(x) for x in s.seed_list]
    return list(range(1, (s.seeds or arm.seeds) + 1))


def result_path(folder: str | os.PathLike, arm: str, seed: int) -> Path:
    return Path(folder) / arm / f"seed{seed}.json"


def plan_runs(arms: Sequence[Arm], s: Settings, folder: str | os.PathLike,
              seeds: Sequence[int] | None = None) -> tuple[list[tuple[Arm, int]], list[tuple[Arm, int]]]:
    """``(todo, done)``: (arm, seed) pairs in run order, split by whether the result file exists.

    Run order: the arms' order, seed by seed, with base arms and their EchoRL arm interleaved
    (``grpo`` 1, ``echorl`` 1, ``grpo`` 2, ...) for arms of the same group, so paired results come first.
    """
    order: list[tuple[Arm, int]] = []
    groups: dict[str, list[Arm]] = {}
    for a in arms:
        groups.setdefault(a.group, []).append(a)
    for g_arms in groups.values():
        longest = max(len(seeds_for(a, s, seeds)) for a in g_arms)
        for i in range(longest):
            for a in g_arms:
                ss = seeds_for(a, s, seeds)
                if i < len(ss):
                    order.append((a, ss[i]))
    todo = [(a, k) for a, k in order if not result_path(folder, a.name, k).exists()]
    done = [(a, k) for a, k in order if result_path(folder, a.name, k).exists()]
    return todo, done


def estimate_left(todo: Sequence[tuple[Arm, int]], done: Sequence[tuple[Arm, int]], s: Settings,
                  folder: str | os.PathLike, runs_dir: str | os.PathLike) -> dict[str, float]:
    """Run time left for ``todo`` from the finished runs' median (:func:`run_wall_s`), each run counted
    by the share of its steps not yet checkpointed in ``<runs_dir>/<arm>/seed<k>/checkpoints``.
    Returns ``{"median_s", "runs_left", "partly_done", "seconds_left"}`` (NaN without a finished run)."""
    walls = [run_wall_s(json.loads(result_path(folder, a.name, k).read_text())) for a, k in done]
    median = float(np.median(walls)) if walls else float("nan")
    left, partly = 0.0, 0
    for a, k in todo:
        marker = Path(runs_dir) / a.name / f"seed{k}" / "checkpoints" / "latest_checkpointed_iteration.txt"
        step = int(marker.read_text().strip()) if marker.exists() else 0
        partly += step > 0
        left += 1.0 - min(step, s.steps) / s.steps
    return {"median_s": median, "runs_left": float(len(todo)), "partly_done": float(partly), "seconds_left": left * median}


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict[str, str]:
    """What computed a run: ``torch`` (version), ``cpu_capability`` (the SIMD kernels torch dispatches
    to: ``AVX2``, ``AVX512``, ...) and ``cpu`` (the processor's model name)."""
    import platform

    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu}


def _git_dir(cwd: Path) -> Path | None:
    out = subprocess.run(["git", "rev-parse", "--absolute-git-dir"], cwd=cwd, capture_output=True, text=True)
    return Path(out.stdout.strip()) if out.returncode == 0 else None


def commit_file(paths: str | os.PathLike | Sequence[str | os.PathLike], message: str, retries: int = 20) -> bool:
    """``git add`` + ``git commit --only`` of these files in the repository that holds the first one
    (other staged work is left alone). Commits are serialised across processes by an exclusive
    ``flock`` on ``<git dir>/echorl-study-commit.lock`` (parallel runs, two study processes), and
    retried while another program holds ``.git/index.lock``. True when committed."""
    import fcntl

    files = [str(Path(paths).resolve())] if isinstance(paths, (str, os.PathLike)) else [str(Path(p).resolve()) for p in paths]
    cwd = Path(files[0]).parent
    while not cwd.exists():
        cwd = cwd.parent
    gd = _git_dir(cwd)
    if gd is None:
        print(f"git commit of {files}: not inside a git repository", flush=True)
        return False
    with open(gd / "echorl-study-commit.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for _ in range(retries):
            add = subprocess.run(["git", "add", "--", *files], cwd=cwd, capture_output=True, text=True)
            if add.returncode == 0:
                c = subprocess.run(["git", "commit", "-q", "--only", "-m", message, "--", *files], cwd=cwd,
                                   capture_output=True, text=True)
                if c.returncode == 0:
                    return True
                if "index.lock" not in c.stderr:
                    print(f"git commit of {files} failed: {c.stderr.strip() or c.stdout.strip()}", flush=True)
                    return False
            time.sleep(3)
    return False


def _window_means(rows: list[dict[str, Any]], key: str, window: int) -> list[float | None]:
    out = []
    for i in range(0, len(rows), window):
        vals = [r[key] for r in rows[i:i + window] if key in r and r[key] is not None]
        out.append(float(np.mean(vals)) if vals else None)
    return out


def summarize_run(rows: list[dict[str, Any]], window: int = 10, tail: int = 20) -> dict[str, Any]:
    """Curves (window means of :data:`CURVE_KEYS` and the dev validations) and the training part of
    the ``final`` block from the engine's ``metrics.jsonl`` rows (step 0 = validation before training)."""
    rows = [M.canonical(r) for r in rows]
    train = [r for r in rows if r.get("step", 0) >= 1 and STEP_TIME in r]
    curves: dict[str, list] = {"step": [min(i + window, len(train)) for i in range(0, len(train), window)]}
    for key in CURVE_KEYS:
        if any(key in r for r in train):
            curves[FINAL_KEYS[key]] = _window_means(train, key, window)
    dev_key = next((k for r in rows for k in r if k.startswith("val-core/dev/reward/mean@")), None)
    val = {"step": [], "dev": []}
    if dev_key:
        for r in rows:
            if dev_key in r:
                val["step"].append(int(r["step"]))
                val["dev"].append(float(r[dev_key]))
    final: dict[str, float] = {}
    for key, short in FINAL_KEYS.items():
        src = train if key in WHOLE_RUN_KEYS else train[-tail:]
        vals = [r[key] for r in src if key in r]
        if vals:
            final[short] = float(np.mean(vals))
    if val["dev"]:
        final["dev_avg"] = val["dev"][-1]
        final["dev_start"] = val["dev"][0]
    return {"curves": curves, "val": val, "final": final}


def eval_policy(model: Any, tok: Any, s: Settings, pool: Any,
                which: Sequence[str] = ("test", "ood", "passk")) -> dict[str, Any]:
    """Held-out evaluation through :func:`echorl.eval.run.evaluate`: ``test`` and ``ood``
    (avg@``eval_n`` at ``eval_temperature``; ``ood`` is the ``chain`` split ``s.ood_split``), ``passk``
    (first ``passk_rows`` test problems, ``passk_n`` samples at ``passk_temperature``); ``which``
    picks among them. Returns summaries and per-problem correct counts."""
    # transformers and verl load when a run starts; planning and the report import this module without them
    from echorl.eval.backends import SamplingSettings, TransformersBackend
    from echorl.eval.benchmarks import BenchmarkSpec  # with the backend above: loaded when a run evaluates
    from echorl.eval.run import evaluate  # with the backend above: loaded when a run evaluates

    backend = TransformersBackend(model, tok, batch_size=s.eval_batch_size)
    jobs = {
        "test": (BenchmarkSpec("test", "chain", "id", num_rows=s.test_rows, task_kwargs={"split": "test"}),
                 SamplingSettings(n=s.eval_n, temperature=s.eval_temperature, max_new_tokens=s.max_new_tokens,
                                  seed=s.eval_seed)),
        "ood": (BenchmarkSpec("ood", "chain", "ood", num_rows=s.ood_rows, task_kwargs={"split": s.ood_split}),
                SamplingSettings(n=s.eval_n, temperature=s.eval_temperature, max_new_tokens=s.max_new_tokens,
                                 seed=s.eval_seed)),
        "passk": (BenchmarkSpec("passk", "chain", "id", num_rows=s.passk_rows, task_kwargs={"split": "test"}),
                  SamplingSettings(n=s.passk_n, temperature=s.passk_temperature, max_new_tokens=s.max_new_tokens,
                                   seed=s.eval_seed)),
    }
    out: dict[str, Any] = {"eval": {}, "per_problem": {}}
    for name in which:
        spec, sampling = jobs[name]
        samples, summary = evaluate(backend, tok, [(spec, None)], sampling, pool, chat_template="auto")
        out["eval"][name] = summary["benchmarks"][name]
        counts: dict[str, int] = {}
        for r in samples:
            counts[r["problem_id"]] = counts.get(r["problem_id"], 0) + int(r["correct"])
        out["per_problem"][name] = [counts[k] for k in sorted(counts, key=int)]
    return out


def _final_eval_block(ev: dict[str, Any], s: Settings) -> dict[str, Any]:
    e = ev["eval"]
    return {"test_avg": e["test"][f"avg@{s.eval_n}"], "ood_avg": e["ood"][f"avg@{s.eval_n}"],
            "passk_avg": e["passk"][f"avg@{s.passk_n}"],
            "pass@k": {k.split("@")[1]: v for k, v in e["passk"].items() if k.startswith("pass@")}}


class CheckpointEval:
    """The engine's validator (or None) plus ``test``/``ood`` evaluations at ``steps``.

    The trainer calls ``due(step, total)`` after every step and ``run(model, step)`` when it is due
    (before the checkpoint of that step is saved). At a step of ``steps`` this runs ``evaluate(model)``
    and stores its result under the step in ``path`` (JSON, rewritten atomically); the inner
    validator runs when it is due itself. Results already in ``path`` (a resumed run) are kept.
    """

    def __init__(self, inner: Any, steps: Sequence[int], total: int, evaluate: Any, path: str | os.PathLike):
        self.inner, self.steps, self.total, self.evaluate = inner, {int(k) for k in steps}, int(total), evaluate
        self.path = Path(path)
        self.before_train = bool(inner.before_train) if inner is not None else False
        self.results: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def due(self, step: int, total: int) -> bool:
        return step in self.steps or (self.inner is not None and self.inner.due(step, total))

    def run(self, model: Any, step: int) -> dict[str, float]:
        metrics = dict(self.inner.run(model, step)) if self.inner is not None and self.inner.due(step, self.total) else {}
        if step in self.steps:
            self.results[str(step)] = self.evaluate(model)
            tmp = self.path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(self.results))
            tmp.replace(self.path)
        return metrics

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


class RunClock:
    """Wall time of a run over all its attempts, kept in ``path`` (JSON ``{"attempts": [seconds, ...]}``).

    Each clock is one attempt: it appends its entry to those already in ``path`` and rewrites it every
    ``every`` seconds from a daemon thread (and at :meth:`stop`), so a killed attempt's time is on disk
    to within ``every`` seconds. Use as a context manager around the attempt.
    """

    def __init__(self, path: str | os.PathLike, every: float = 30.0):
        self.path, self.every = Path(path), float(every)
        self.earlier: list[float] = json.loads(self.path.read_text())["attempts"] if self.path.exists() else []
        self.t0 = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="run-clock")

    def __enter__(self) -> RunClock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"attempts": [*self.earlier, round(time.time() - self.t0, 1)]}))
        tmp.replace(self.path)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self._write()

    @property
    def attempts(self) -> int:
        return len(self.earlier) + 1

    def total(self) -> float:
        """Seconds over every attempt, this one up to now."""
        return sum(self.earlier) + time.time() - self.t0


def run_wall_s(res: dict[str, Any]) -> float:
    """A result's run time in seconds: every attempt's (``wall_s_attempts``) where it was recorded, else
    the last attempt's (``wall_s``)."""
    return res["wall_s_attempts"] if res.get("wall_s_attempts") is not None else res["wall_s"]


def _checkpoint_block(at_steps: dict[str, Any], final_step: int, final_ev: dict[str, Any], s: Settings) -> dict[str, Any]:
    """``{"step", "test_avg", "ood_avg"}`` over ``s.eval_steps`` and the last step."""
    evs = [(int(k), at_steps[str(k)]) for k in s.eval_steps if str(k) in at_steps] + [(final_step, final_ev)]
    return {"step": [k for k, _ in evs], "test_avg": [e["eval"]["test"][f"avg@{s.eval_n}"] for _, e in evs],
            "ood_avg": [e["eval"]["ood"][f"avg@{s.eval_n}"] for _, e in evs]}


def study_trainer(arm: Arm, seed: int, s: Settings, out_dir: str | os.PathLike) -> tuple[Any, Any]:
    """The engine's trainer of one (arm, seed) run as the study trains it (its loss wrapped by
    :class:`~echorl.study.gradshare.GradShareLoss`), resumed from ``out_dir`` when it holds a
    checkpoint. Returns ``(trainer, composed config)``."""
    from echorl.local.trainer import LocalTrainer  # imports verl (seconds): planning and the report skip it
    from echorl.study.gradshare import GradShareLoss  # imports torch: planning and the report skip it

    cfg = compose(arm, seed, s, str(out_dir))
    tr = LocalTrainer(cfg)
    ec = tr.echo_cfg
    coef = ec.coef if ec.adds_loss_term else 0.0
    tr.loss_fn = GradShareLoss(tr.loss_fn, tr.model, lambda: tr.global_step, s.grad_share_every, coef)
    return tr, cfg


def replay_steps(arm: Arm, seed: int, s: Settings, out_dir: str | os.PathLike, steps: int) -> list[dict[str, Any]]:
    """The first ``steps`` training steps of a study run (:meth:`LocalTrainer.train` with ``until_step``:
    validation where the full run has it), without the checkpoint evaluations or the final evaluation.
    Returns the run's metric rows (``step`` included; step 0 is the validation before training)."""
    from echorl.checkpoints import latest_checkpoint  # imports torch: planning and the report skip it

    held = latest_checkpoint(Path(out_dir) / "checkpoints")
    if held is not None:  # checked before the trainer starts (and resumes from it)
        raise ValueError(f"replay_steps: {out_dir} holds a checkpoint ({held.name}); give an empty folder")
    tr, _ = study_trainer(arm, seed, s, out_dir)
    tr.train(until_step=steps)
    return read_metrics(Path(out_dir) / "metrics.jsonl")


def first_window_diffs(committed: dict[str, Any], rows: list[dict[str, Any]], window: int = 10) -> list[dict[str, Any]]:
    """Compare a committed result's first curve window (means over steps 1..``window``) and its
    validation before training with the same numbers from ``rows`` (:func:`replay_steps`). One dict per
    number: ``key``, ``committed``, ``now``, ``abs_diff`` (timings are left out: they are the machine's)."""
    now = summarize_run(rows, window=window)
    out = []
    for key, vals in committed["curves"].items():
        if key in ("step", "s_per_step") or key not in now["curves"] or not vals:
            continue
        a, b = vals[0], now["curves"][key][0]
        diff = None if a is None or b is None else abs(float(a) - float(b))
        out.append({"key": key, "committed": a, "now": b, "abs_diff": diff})
    if committed.get("val", {}).get("step", [None])[0] == 0 and now["val"]["step"][:1] == [0]:
        a, b = committed["val"]["dev"][0], now["val"]["dev"][0]
        out.append({"key": "val dev @0", "committed": a, "now": b, "abs_diff": abs(a - b)})
    return out


def run_one(arm: Arm, seed: int, s: Settings, folder: str | os.PathLike, runs_dir: str | os.PathLike,
            window: int = 10) -> dict[str, Any]:
    """Train and evaluate one (arm, seed); write and return its result (see the module docstring)."""
    out_dir = Path(runs_dir) / arm.name / f"seed{seed}"
    with RunClock(out_dir / "run_time.json") as clock:
        res = _train_and_evaluate(arm, seed, s, out_dir, window, clock)
    path = result_path(folder, arm.name, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(path)
    return res


def _train_and_evaluate(arm: Arm, seed: int, s: Settings, out_dir: Path, window: int, clock: RunClock) -> dict[str, Any]:
    import torch

    # transformers and verl load when a run starts; planning and the report import this module without them
    from echorl.eval.run import make_pool

    t0 = time.time()
    tr, cfg = study_trainer(arm, seed, s, out_dir)
    resumed = tr.global_step > 0
    ckpt_eval = None
    if s.eval_steps:
        def evaluate(model):
            p = make_pool(int(cfg.reward.num_workers), float(cfg.reward.timeout_s))
            try:
                return eval_policy(model, tr.tok, s, p, which=("test", "ood"))
            finally:
                p.close()

        ckpt_eval = CheckpointEval(tr.validator, s.eval_steps, s.steps, evaluate, out_dir / "checkpoint_eval.json")
        tr.validator = ckpt_eval
    tr.train()
    train_s = time.time() - t0
    t1 = time.time()
    pool = make_pool(int(cfg.reward.num_workers), float(cfg.reward.timeout_s))
    try:
        ev = eval_policy(tr.model, tr.tok, s, pool)
    finally:
        pool.close()
    eval_s = time.time() - t1
    summ = summarize_run(read_metrics(out_dir / "metrics.jsonl"), window=window)
    final = {**summ["final"], **_final_eval_block(ev, s)}
    extra: dict[str, Any] = {}
    if ckpt_eval is not None:
        missing = [k for k in s.eval_steps if str(k) not in ckpt_eval.results]
        if missing:
            raise RuntimeError(f"{arm.name} seed {seed}: no checkpoint evaluation at steps {missing} in "
                               f"{ckpt_eval.path} (a run resumed past them without it); delete {out_dir} and rerun")
        extra["checkpoints"] = _checkpoint_block(ckpt_eval.results, int(tr.global_step), ev, s)
        final["test_ckpt"] = float(np.mean(extra["checkpoints"]["test_avg"]))
        final["ood_ckpt"] = float(np.mean(extra["checkpoints"]["ood_avg"]))
    return {
        "schema": SCHEMA, "arm": arm.name, "seed": seed, "what": arm.what, "base": arm.base,
        "overrides": run_overrides(arm, seed, s, str(out_dir)), "settings": s.to_dict(),
        "git_commit": _git("rev-parse", "HEAD"), "git_dirty": bool(_git("status", "--porcelain", "--", "echorl")),
        "threads": torch.get_num_threads(), "machine": machine_info(), "steps": int(tr.global_step), "resumed": resumed,
        "wall_s": round(time.time() - t0, 1), "train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
        # a run resumed from a checkpoint written before run_time.json existed: its earlier time is unknown
        "wall_s_attempts": round(clock.total(), 1) if clock.earlier or not resumed else None,
        "attempts": clock.attempts,
        "s_per_step": final.get("s_per_step"), "load_avg": os.getloadavg()[0],
        "final": final, "curves": summ["curves"], "val": summ["val"], **ev, **extra,
    }
