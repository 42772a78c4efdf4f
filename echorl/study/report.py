"""``scripts/study.py --report``: docs/results.md and its figures from a results folder alone.

Reads ``<folder>/<arm>/seed<k>.json`` (:mod:`echorl.study.runner`), ``<folder>/splits.json``,
``<folder>/initial.json`` (the untrained model's evaluation) and, when present, ``<folder>/notes.md``
(the written analysis, included verbatim). Writes the markdown and ``<images>/results_*.png``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

from echorl.figures import pyplot, save_figure
from echorl.study.arms import ARMS, FULL, Settings
from echorl.study.power import min_detectable, pooled_sd
from echorl.study.runner import run_wall_s, seeds_for
from echorl.study.stats import holm, mean_sd, paired_difference

__all__ = ["load_results", "arm_table", "comparisons", "eval_sampling_se", "verdict", "write_report"]

METRICS = (("test_avg", "test"), ("ood_avg", "ood"))


def load_results(folder: str | os.PathLike) -> dict[str, dict[int, dict[str, Any]]]:
    """arm -> seed -> result dict, for every ``<arm>/seed<k>.json`` in ``folder``."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    root = Path(folder)
    if not root.is_dir():
        return out
    for f in sorted(root.glob("*/seed*.json")):
        r = json.loads(f.read_text())
        out.setdefault(r["arm"], {})[int(r["seed"])] = r
    return out


# Per-run value taken as the median of the run's measurements instead of the run's mean: a
# micro-batch whose groups all have zero variance has no RL gradient, and its share of 1.0 would
# dominate a mean of ~0.1-1% values.
MEDIAN_OVER_RUN = ("grad_echo_share",)


def _run_value(r: dict[str, Any], key: str) -> float | None:
    if key in MEDIAN_OVER_RUN:
        points = [float(v) for v in r.get("curves", {}).get(key, []) if v is not None and not math.isnan(float(v))]
        if points:
            return float(statistics.median(points))
    value = r["final"].get(key)
    return None if value is None else float(value)


def _vals(runs: dict[int, dict[str, Any]], key: str) -> dict[int, float]:
    vals = {s: _run_value(r, key) for s, r in runs.items()}
    return {s: v for s, v in vals.items() if v is not None}


def verdict(d: dict[str, Any], p_holm: float | None = None, alpha: float = 0.05, planned: int | None = None) -> str:
    """``gain`` / ``loss`` when the difference survives Holm's correction (``p_holm <= alpha``; without
    ``p_holm``, when the t interval excludes 0), ``nominal gain`` / ``nominal loss`` when the t
    interval excludes 0 but the Holm-adjusted p does not pass, ``no detectable difference``
    otherwise, ``too few seeds`` under 2 pairs.

    ``planned``: the pairs a preregistered plan fixes. Under that count there is no verdict (a plan
    without an interim analysis decides on its full set only): ``interim: n of planned pairs``."""
    if planned is not None and d["n"] < planned:
        return f"interim: {d['n']} of {planned} pairs, no verdict"
    if d["n"] < 2 or math.isnan(d["t_low"]):
        return "too few seeds"
    sign = "gain" if d["mean"] > 0 else "loss"
    excludes0 = d["t_low"] > 0 or d["t_high"] < 0
    if p_holm is None:
        return sign if excludes0 else "no detectable difference"
    if p_holm <= alpha:
        return sign
    if excludes0:
        return f"nominal {sign}, not significant after Holm"
    return "no detectable difference"


def comparisons(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every paired comparison of :func:`arm_table`'s rows (arm vs base on each metric, and the
    EchoRL ablations vs ``echorl`` on test), with ``p_holm``: Holm over all of them together."""
    out = []
    for r in rows:
        for key, lab in METRICS:
            if r.get(f"d_{key}"):
                out.append({"arm": r["arm"], "vs": r["base"], "metric": lab, "d": r[f"d_{key}"]})
        if r.get("d_test_avg_vs_echorl"):
            out.append({"arm": r["arm"], "vs": "echorl", "metric": "test", "d": r["d_test_avg_vs_echorl"]})
    return holm_verdicts(out)


def holm_verdicts(rows: list[dict[str, Any]], planned: int | None = None, m: int | None = None) -> list[dict[str, Any]]:
    """Holm-correct one family of comparisons together and give each its :func:`verdict`.

    ``rows``: dicts with ``d`` (:func:`~echorl.study.stats.paired_difference`); each gets ``p_holm``
    and ``verdict`` (``planned``: as in :func:`verdict`). ``m``: the comparisons a plan puts in the
    family. Holm's correction depends on all of them, so while fewer than ``m`` rows have their
    ``planned`` pairs no row gets a verdict (a complete row reads ``interim: family incomplete``).
    Returns ``rows``."""
    complete = planned is None or (sum(c["d"]["n"] >= planned for c in rows) >= (m if m is not None else len(rows)))
    for c, p in zip(rows, holm([float(c["d"].get("p", float("nan"))) for c in rows])):
        c["p_holm"] = p
        c["verdict"] = verdict(c["d"], None if math.isnan(p) else p, planned=planned)
        if not complete and not c["verdict"].startswith("interim"):
            c["verdict"] = f"interim: family incomplete ({c['d']['n']} of {planned} pairs here), no verdict"
    return rows


def eval_sampling_se(per_problem: list[int], k: int) -> float:
    """Sampling SE of one run's avg@k on a fixed problem set, from its per-problem correct counts
    ``c_i`` out of ``k``: ``sqrt(sum_i phat_i (1 - phat_i) / (k - 1)) / N`` with ``phat_i = c_i / k``
    (the unbiased estimate of each problem's Bernoulli variance over ``k``, averaged over ``N``)."""
    n = len(per_problem)
    if n == 0 or k < 2:
        return float("nan")
    var = sum((c / k) * (1 - c / k) / (k - 1) for c in per_problem)
    return math.sqrt(var) / n


def arm_table(results: dict[str, dict[int, dict[str, Any]]], kmax: int = 64) -> list[dict[str, Any]]:
    """One row per arm with results: means/sds and paired differences to its base (and to ``echorl``
    for the EchoRL ablations run on GRPO); pass@1 and pass@``kmax``."""
    rows = []
    for arm in ARMS:
        runs = results.get(arm.name)
        if not runs:
            continue
        row: dict[str, Any] = {"arm": arm.name, "what": arm.what, "base": arm.base, "seeds": sorted(runs)}
        for key in ("test_avg", "ood_avg", "passk_avg", "entropy", "all_success_frac", "clips", "clip_len_frac",
                    "grad_echo_share", "grad_norm_rl", "grad_norm_echo", "grad_cos", "pg_clipfrac", "s_per_step",
                    "dev_avg"):
            row[key] = mean_sd(_vals(runs, key).values())
        for k in ("1", str(kmax)):
            row[f"pass@{k}"] = mean_sd([r["final"]["pass@k"][k] for r in runs.values() if k in r["final"]["pass@k"]])
        for key, _ in METRICS:
            if arm.base and results.get(arm.base):
                row[f"d_{key}"] = paired_difference(_vals(runs, key), _vals(results[arm.base], key))
            if arm.base == "grpo" and arm.name != "echorl" and results.get("echorl"):
                row[f"d_{key}_vs_echorl"] = paired_difference(_vals(runs, key), _vals(results["echorl"], key))
        rows.append(row)
    return rows


def _pm(ms: tuple[float, float, int], scale: float = 100.0, digits: int = 1) -> str:
    m, sd, n = ms
    if n == 0 or math.isnan(m):
        return "-"
    return f"{m * scale:.{digits}f}" + (f" ± {sd * scale:.{digits}f}" if n > 1 else "")


def _diff(d: dict[str, Any] | None) -> str:
    if not d or d["n"] == 0:
        return "-"
    if d["n"] < 2:
        return f"{100 * d['mean']:+.1f} (n=1)"
    return f"{100 * d['mean']:+.1f} [{100 * d['t_low']:+.1f}, {100 * d['t_high']:+.1f}] (n={d['n']})"


def _p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "-"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def _power_lines(rows: list[dict[str, Any]], results: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    """The paired seed-to-seed SD of test differences, the evaluation's own sampling noise, and the
    smallest difference a paired t test detects with 80% power at the study's seed counts."""
    diffs = {r["arm"]: [100 * x for x in r["d_test_avg"]["diffs"]] for r in rows
             if r.get("d_test_avg") and r["d_test_avg"]["n"] >= 2}
    if not diffs:
        return []
    nmax = max(len(d) for d in diffs.values())
    pools = [("every comparison with a base", list(diffs.values()))]
    top = [d for d in diffs.values() if len(d) == nmax]
    if len(top) < len(diffs):
        pools.append((f"the {len(top)} comparisons at {nmax} seeds", top))
    ses = [100 * eval_sampling_se(r["per_problem"]["test"], int(r["eval"]["test"]["n"]))
           for runs in results.values() for r in runs.values() if r.get("per_problem", {}).get("test")]
    ns = sorted({3, nmax, 10})
    L = ["**Power.** SD of the paired test differences (points) and the smallest true difference a two-sided "
         "paired t test at level 0.05 detects with 80% power (`echorl.study.power`):", "",
         "| pooled over | SD | df | " + " | ".join(f"n={n}" for n in ns) + " |", "|---|---|---|" + "---|" * len(ns)]
    for label, group in pools:
        sd, df = pooled_sd(group)
        L.append(f"| {label} | {sd:.2f} | {df} | " + " | ".join(f"{min_detectable(n, sd):.1f}" for n in ns) + " |")
    if ses:
        L += ["", f"The evaluation's own sampling noise is small next to that: the SE of one run's test accuracy "
              f"over its samples (fixed problems) is {statistics.median(ses):.2f} points (median over "
              f"{len(ses)} runs; {min(ses):.2f}-{max(ses):.2f}); the rest is seed-to-seed training noise."]
    return L + [""]


def _band(ax: Any, runs: dict[int, dict[str, Any]], xkey: str, ykey: str, where: str, label: str, color: str) -> None:
    import numpy as np

    series = [(r[where][xkey], r[where][ykey]) for r in runs.values()
              if r.get(where, {}).get(ykey) and r[where].get(xkey)]
    if not series:
        return
    m = min(len(y) for _, y in series)
    x = np.asarray(series[0][0][:m], dtype=float)
    ys = np.asarray([[np.nan if v is None else v for v in y[:m]] for _, y in series], dtype=float)
    mu = np.nanmean(ys, axis=0)
    ax.plot(x, mu, color=color, label=f"{label} (n={len(series)})")
    if len(series) > 1:
        ax.fill_between(x, np.nanmin(ys, axis=0), np.nanmax(ys, axis=0), color=color, alpha=0.2)


def _finish(ax) -> None:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


def _figures(results: dict[str, dict[int, dict[str, Any]]], images: Path, prefix: str,
             initial: dict[str, Any] | None = None) -> dict[str, str]:
    plt = pyplot()
    images.mkdir(parents=True, exist_ok=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    present = [a for a in ARMS if results.get(a.name)]
    col = {a.name: colors[i % len(colors)] for i, a in enumerate(present)}
    paths = {}
    # main: GRPO vs GRPO + EchoRL
    main = [a for a in present if a.name in ("grpo", "echorl")]
    if main:
        fig, axes = plt.subplots(1, 5, figsize=(21, 3.6))
        for a in main:
            runs = results[a.name]
            _band(axes[0], runs, "step", "dev", "val", a.name, col[a.name])
            _band(axes[1], runs, "step", "reward", "curves", a.name, col[a.name])
            _band(axes[2], runs, "step", "entropy", "curves", a.name, col[a.name])
            _band(axes[3], runs, "step", "mixed_frac", "curves", a.name, col[a.name])
            _band(axes[4], runs, "step", "grad_echo_share", "curves", a.name, col[a.name])
        for ax, t in zip(axes, ("dev accuracy (mean@n, T=eval)", "train reward (T=1.0)", "token entropy (nats)",
                                "mixed groups (share)", "EchoRL share of grad norm")):
            ax.set_title(t)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.suptitle("GRPO vs GRPO + EchoRL on the chain testbed (line: seed mean, band: min-max over seeds)")
        paths["main"] = str(save_figure(fig, images / f"{prefix}main.png", dpi=110))
    if present:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for a in present:
            _band(ax, results[a.name], "step", "dev", "val", a.name, col[a.name])
        ax.set_xlabel("step")
        ax.set_ylabel("dev accuracy")
        _finish(ax)
        paths["arms"] = str(save_figure(fig, images / f"{prefix}arms.png", dpi=110))
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for a in present:
            runs = list(results[a.name].values())
            ks = sorted(runs[0]["final"]["pass@k"], key=int)
            mu = [sum(r["final"]["pass@k"][k] for r in runs) / len(runs) for k in ks]
            ax.plot([int(k) for k in ks], mu, marker="o", ms=3, color=col[a.name], label=f"{a.name} (n={len(runs)})")
        if initial:
            ks = sorted(initial["final"]["pass@k"], key=int)
            ax.plot([int(k) for k in ks], [initial["final"]["pass@k"][k] for k in ks], "k--", label="untrained")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k (test subset)")
        _finish(ax)
        paths["passk"] = str(save_figure(fig, images / f"{prefix}passk.png", dpi=110))
    return paths


def _not_run(results: dict[str, dict[int, dict[str, Any]]], s: Settings, script: str) -> list[str]:
    lines = []
    for a in ARMS:
        want = seeds_for(a, s)
        have = sorted(results.get(a.name, {}))
        missing = [k for k in want if k not in have]
        if missing:
            seeds = "" if not have else f" --seeds {','.join(map(str, missing))}"
            lines.append(f"| {a.name} | {len(have)}/{len(want)} | `python {script} --arms {a.name}{seeds}` |")
    return lines


def _recorded_settings(results: dict[str, dict[int, dict[str, Any]]]) -> Settings | None:
    for runs in results.values():
        for r in runs.values():
            if r.get("settings"):
                return Settings.from_dict(r["settings"])
    return None


def write_report(folder: str | os.PathLike, s: Settings, out_md: str | os.PathLike, images: str | os.PathLike,
                 prefix: str = "results_", script: str = "scripts/study.py", command: str = "",
                 full_folder: str | os.PathLike | None = None) -> str:
    """Write the report (markdown + figures) from ``folder``; returns the markdown text. For a reduced
    study (quick, pilot), ``full_folder`` adds the full study's status and the commands that run it."""
    folder, out_md, images = Path(folder), Path(out_md), Path(images)
    shown = os.path.relpath(folder)  # paths in the text relative to the working directory (the repo root)
    results = load_results(folder)
    s = _recorded_settings(results) or s  # the settings the runs actually used
    rows = arm_table(results, s.passk_n)
    splits = json.loads((folder / "splits.json").read_text()) if (folder / "splits.json").exists() else None
    initial = json.loads((folder / "initial.json").read_text()) if (folder / "initial.json").exists() else None
    figs = _figures(results, images, prefix, initial)
    rel = lambda p: os.path.relpath(p, out_md.parent)  # noqa: E731
    allruns = [r for runs in results.values() for r in runs.values()]
    L: list[str] = ["# Results: the controlled study on the chain testbed", "",
                    f"Generated by `{command or f'python {script} --report'}` from `{shown}/` alone "
                    "(one JSON per finished (arm, seed) run). Negative results are reported as they are.", ""]
    L += ["## Setup", "",
          f"- Testbed: `echorl/config/testbed.yaml` (task `chain`, model `{s.model}`, 16 prompts x 8 rollouts "
          f"at T=1.0). Every arm: **{s.steps} steps**, the same batch, rollouts and seeds; seed k sets `seed` and "
          "`data.seed` (same prompts in the same order in every arm).",
          f"- Validation during training (engine, `trainer.test_freq={s.test_freq}`): first {s.dev_rows} `dev` "
          f"problems x {s.dev_n} samples at T={s.eval_temperature} (`dev` is the set meant for tuning decisions).",
          f"- Final numbers (`echorl.eval`, the code of `echorl eval`): avg@{s.eval_n} at T={s.eval_temperature} on "
          f"the first {s.test_rows} `test` and {s.ood_rows} `ood` problems (6-operation chains); pass@k, k <= "
          f"{s.passk_n}, from {s.passk_n} samples at T={s.passk_temperature} on the first {s.passk_rows} `test` "
          f"problems; max {s.max_new_tokens} new tokens; sampling seed {s.eval_seed} for every run.",
          f"- Gradient share: the RL and EchoRL gradient norms on the first micro-batch every {s.grad_share_every} "
          "steps (`echorl.study.gradshare`, before `clip_grad`).", ""]
    if (folder / "model.json").exists():
        m = json.loads((folder / "model.json").read_text())
        L += [f"- Model: {m['what']}; weights sha256 `{m['model_safetensors_sha256'][:16]}…`, {m['num_params']:,} "
              f"parameters; rebuild: `{m['rebuild']}` (`{shown}/model.json`).", ""]
    if splits:
        L += [f"Held-out sets (fixed before the first run; `{shown}/splits.json`):", "",
              "| set | split | rows | operations | sha256 (prompt, answer) |", "|---|---|---|---|---|"]
        L += [f"| {k} | {v['split']} | {v['rows']} | {v['num_ops']} | `{v['sha256'][:16]}…` |"
              for k, v in splits["sets"].items()]
        L += ["", f"Training rows ({splits['train_rows']} per seed) overlap `dev`/`test`/`ood` in 0 prompts for seeds "
              f"{sorted(int(k) for k in splits['train_overlap'])}; `dev` and `test` share none.", ""]
    if allruns:
        wall = sum(run_wall_s(r) for r in allruns)
        sps = sorted(r["s_per_step"] for r in allruns if r.get("s_per_step"))
        med = sps[len(sps) // 2] if sps else float("nan")
        threads = sorted({r["threads"] for r in allruns})
        L += ["## Compute", "",
              f"{len(allruns)} runs finished, {wall / 3600:.2f} h of wall time in all (training + evaluation), "
              f"median {med:.2f} s per training step, torch threads {threads}. The 2-core machine was shared with "
              "other jobs during the runs (1-minute load average at the end of the runs: "
              f"{min(r['load_avg'] for r in allruns):.1f}-{max(r['load_avg'] for r in allruns):.1f}), so these "
              "timings are inflated; s/step per arm is in the table.", ""]
    if initial:
        L += [f"Untrained `{s.model}` (step 0), same evaluation: test {100 * initial['final']['test_avg']:.1f}, "
              f"ood {100 * initial['final']['ood_avg']:.1f}, pass@1 {100 * initial['final']['pass@k']['1']:.1f}, "
              f"pass@{s.passk_n} {100 * initial['final']['pass@k'][str(s.passk_n)]:.1f} (%).", ""]
    if "main" in figs:
        L += [f"![GRPO vs GRPO + EchoRL]({rel(figs['main'])})", ""]
    L += ["## Final accuracy per arm", "",
          "Accuracies in %, mean ± sd over seeds. Δ: paired difference to the arm's base method over the seeds both "
          "ran, with a 95% Student t interval [low, high] (p-values and the Holm correction are under \"What the "
          "data support\"); for the EchoRL ablations on GRPO also Δ to the `echorl` arm. Entropy: mean token entropy of the "
          "training rollouts (nats), all-success: share of groups, both over the last 20 steps. Clips/step for arms "
          "with EchoRL off is what the selection would have picked (logged, not trained). Echo grad share: "
          "||g_echo|| / (||g_rl|| + ||g_echo||) on one micro-batch, median over the run's measurements (a micro-batch "
          "without RL gradient gives 1.0, which would dominate a mean).", "",
          f"| arm | seeds | test | ood | pass@1 | pass@{s.passk_n} | Δ test vs base | Δ ood vs base | Δ test vs echorl | "
          "entropy | all-success | clips/step | echo grad share (%) | s/step |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['arm']} | {len(r['seeds'])} | {_pm(r['test_avg'])} | {_pm(r['ood_avg'])} | {_pm(r['pass@1'])} | "
                 f"{_pm(r[f'pass@{s.passk_n}'])} | {_diff(r.get('d_test_avg'))} | {_diff(r.get('d_ood_avg'))} | "
                 f"{_diff(r.get('d_test_avg_vs_echorl'))} | {_pm(r['entropy'], 1, 3)} | {_pm(r['all_success_frac'])} | "
                 f"{_pm(r['clips'], 1, 1)} | {_pm(r['grad_echo_share'], 100, 2)} | {_pm(r['s_per_step'], 1, 2)} |")
    L += ["", "Arms: " + "; ".join(f"`{a.name}`: {a.what}" for a in ARMS if results.get(a.name)) + ".", ""]
    comps = comparisons(rows)
    L += ["## What the data support", ""]
    if comps:
        m = sum(1 for c in comps if not math.isnan(c["p_holm"]))
        L += [f"{m} paired comparisons (each arm with a base vs that base on test and ood, and the EchoRL ablations "
              "on GRPO vs `echorl` on test), all in one Holm family. Δ in points with its 95% Student t interval "
              "over seeds; p: two-sided paired t test; Holm: the Holm-adjusted p over the whole family. A verdict "
              "of gain or loss needs Holm-adjusted p <= 0.05; an interval that excludes 0 without that is only "
              "nominal (exploratory).", "",
              "| arm | vs | on | n | Δ [95% t interval] | p | Holm p | verdict |", "|---|---|---|---|---|---|---|---|"]
        for c in comps:
            d = c["d"]
            L.append(f"| {c['arm']} | {c['vs']} | {c['metric']} | {d['n']} | {_diff(d).rsplit(' (n=', 1)[0]} | "
                     f"{_p(d.get('p'))} | {_p(c['p_holm'])} | {c['verdict']} |")
        L.append("")
        L += _power_lines(rows, results)
    else:
        L.append("- No arm has a finished base run to pair with yet.")
    for r in rows:
        share, cos = r["grad_echo_share"], r["grad_cos"]
        if share[2] and share[0] > 0:
            L.append(f"- `{r['arm']}`: the EchoRL term is {100 * share[0]:.2f}% of the gradient norm "
                     f"(||g_echo|| / (||g_rl|| + ||g_echo||), first micro-batch every {s.grad_share_every} steps, "
                     f"median per run, mean over {share[2]} run(s)); cosine with the RL gradient {cos[0]:.2f}.")
    L.append("")
    if (folder / "notes.md").exists():
        L += [(folder / "notes.md").read_text().strip(), ""]
    if "arms" in figs:
        L += ["## Curves and pass@k of every arm", "", f"![dev accuracy of every arm]({rel(figs['arms'])})", "",
              f"![pass@k]({rel(figs['passk'])})", ""]
    if full_folder is None:
        missing = _not_run(results, s, script)
        L += ["## Arms not run yet", ""]
    else:
        missing = _not_run(load_results(full_folder), FULL, script)
        L += ["## The full study: arms not run yet", "",
              f"The full study ({FULL.steps} steps, {sum(a.seeds for a in ARMS)} runs over {len(ARMS)} arms, "
              f"results in `{FULL.folder}/`) runs with the commands below, in this priority order; "
              "`python scripts/study.py` runs all of them, resuming and skipping finished runs.", ""]
    if missing:
        L += ["| arm | seeds done | command (resumes; finished runs are skipped) |", "|---|---|---|", *missing, ""]
    else:
        L += ["Every arm of the table ran with its full seed count.", ""]
    text = "\n".join(L)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)
    return text
