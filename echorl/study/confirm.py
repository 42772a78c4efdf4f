"""The confirmatory study's analysis, exactly as ``results/confirm/PLAN.md`` fixes it.

``python scripts/study.py --study confirm --report`` writes ``results/confirm/report.md`` from the
result files alone. The unit is the training seed; every comparison is a paired difference over the
seeds both arms ran (:func:`echorl.study.stats.paired_difference`: 95% Student t interval, two-sided
paired t test), Holm-corrected within its family (:func:`echorl.study.stats.holm`):

* ``dose`` (primary): ``coef_1e-3``, ``coef_3e-3``, ``coef_1e-2``, ``coef_3e-2`` minus ``grpo``;
* ``rule``: ``rule_random_prefix``, ``rule_full``, ``rule_nll_full`` minus ``coef_3e-2`` (the
  highest-entropy clip at the same gradient share).

The primary endpoint is ``final.test_ckpt`` (mean test accuracy at steps 100, 125 and 150). The same
families on ``ood_ckpt`` and on the last step's test accuracy are secondary (each family
Holm-corrected on its own) and are reported, not used for the verdicts.

The report also gives each family's observed paired SD with the difference it can detect
(:func:`observed_sd_lines`) and, once every planned run is in, the plan's "What counts against
EchoRL (and for it)" read off the verdicts (:func:`criteria_lines`).
"""

from __future__ import annotations

import json
import os
import statistics
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

from echorl.study.arms import CONFIRM, CONFIRM_ARMS, Arm, Settings
from echorl.study.power import min_detectable, pooled_sd
from echorl.study.report import _diff, _p, _pm, _vals, holm_verdicts, load_results
from echorl.study.runner import run_wall_s, seeds_for
from echorl.study.stats import mean_sd, paired_difference

__all__ = ["FAMILIES", "PRIMARY", "SECONDARY", "compute_lines", "criteria_head", "criteria_lines", "family_sizes",
           "curves_figure", "family_done", "family_table", "forest_figure", "gain_size", "interim_lines", "interval", "observed_sd_lines",
           "planning_sd", "run_state", "share_matching", "write_confirm_report"]

PRIMARY = "test_ckpt"
SECONDARY = (("ood_ckpt", "ood (mean of steps 100/125/150)"), ("test_avg", "test at step 150"))
FAMILIES = {"dose": "grpo", "rule": "coef_3e-2"}  # family -> the base every arm of it is compared with
SHARE_MATCH = (2 / 3, 3 / 2)  # a rule's gradient share / the peak clip's: matched inside this range
DELTA = 0.02  # the plan's difference of interest (2 points), as a fraction


def family_table(results: dict[str, dict[int, dict[str, Any]]], family: str, key: str,
                 arms: tuple[Arm, ...] = CONFIRM_ARMS, planned: int | None = None) -> list[dict[str, Any]]:
    """The comparisons of one family on ``key`` (a ``final`` field), Holm-corrected together.

    Returns one dict per arm of the family with results for it and its base: ``arm``, ``vs``, ``d``
    (:func:`paired_difference`), ``p_holm`` and ``verdict`` (no verdict under ``planned`` pairs:
    :func:`~echorl.study.report.verdict`)."""
    base = FAMILIES[family]
    out = []
    for a in arms:
        if a.group != family or a.name == base or a.base != base:
            continue
        if results.get(a.name) and results.get(base):
            out.append({"arm": a.name, "vs": base, "d": paired_difference(_vals(results[a.name], key),
                                                                         _vals(results[base], key))})
    return holm_verdicts(out, planned, family_sizes(arms)[family])


def run_state(done: int, total: int) -> str:
    """A figure title's account of the runs: ``interim: 43 of 112 planned runs are in, no verdict``."""
    return "all planned runs" if done >= total else f"interim: {done} of {total} planned runs are in, no verdict"


def planning_sd(folder: Path) -> float | None:
    """The plan's planning SD (points) from ``<folder>/power.json``; None without it."""
    p = folder / "power.json"
    return json.loads(p.read_text()).get("sigma_plan") if p.exists() else None


def interim_lines(done: int, total: int) -> list[str]:
    """The report's warning while a preregistered study is incomplete (nothing once it is)."""
    if done >= total:
        return []
    return [f"**Interim: {done} of {total} planned runs are in.** The plan has no interim analysis: a family's "
            "verdicts appear once every planned pair of every comparison in it is in (Holm's correction needs the "
            "whole family); until then its tables describe the runs so far and its verdict column gives no verdict.",
            ""]


def compute_lines(runs: list[dict[str, Any]], label: str = "Compute") -> list[str]:
    """The report's compute line (none without runs): runs, hours of run time, median per run, torch
    threads, and, where results record it (``machine``), how many runs each kind of machine made."""
    if not runs:
        return []
    wall = [run_wall_s(r) for r in runs]
    # runs from before RunClock kept only their last attempt's time
    partial = sum(bool(r.get("resumed")) and r.get("wall_s_attempts") is None for r in runs)
    kinds = Counter(f"{m['cpu']} (torch {m['torch']}, {m['cpu_capability']} kernels)" if m else "not recorded"
                    for m in (r.get("machine") for r in runs))
    machines = "" if set(kinds) == {"not recorded"} else \
        "; machines: " + ", ".join(f"{n} on {k}" if k != "not recorded" else f"{n} not recorded"
                                   for k, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
    return [f"{label}: {len(runs)} runs, {sum(wall) / 3600:.2f} h of run time in all (training + evaluations, "
            "every attempt of a resumed run), "
            f"median {statistics.median(wall):.0f} s per run, torch threads {sorted({r['threads'] for r in runs})}"
            + (f"; {partial} resumed run(s) count only the time after their resume" if partial else "")
            + machines + ".", ""]


def family_sizes(arms: tuple[Arm, ...] = CONFIRM_ARMS) -> dict[str, int]:
    """family -> the number of comparisons the plan puts in it (Holm's ``m``)."""
    return {fam: sum(a.group == fam and a.base == base and a.name != base for a in arms) for fam, base in FAMILIES.items()}


def observed_sd_lines(tables: dict[str, list[dict[str, Any]]], sizes: dict[str, int], n: int,
                      sigma_plan: float | None, alpha: float = 0.05, power: float = 0.8) -> list[str]:
    """The primary endpoint's observed paired SD per family (pooled over its comparisons,
    :func:`~echorl.study.power.pooled_sd`) and the difference detectable with ``power`` at ``n`` pairs
    and Holm's strictest level ``alpha / m`` (``sizes``: family -> the plan's ``m``), beside the plan's
    planning SD (points)."""
    rows = []
    for fam, table in tables.items():
        groups = [[100 * x for x in c["d"]["diffs"]] for c in table if c["d"]["n"] >= 2]
        if groups:
            sd, df = pooled_sd(groups)
            level = alpha / sizes[fam]
            detectable = min_detectable(n, sd, level, power) if sd > 0 else 0.0
            rows.append(f"| {fam} | {len(groups)} | {sd:.2f} | {df} | {level:.4f} | {detectable:.1f} |")
    if not rows:
        return []
    plan = f"{sigma_plan:.2f} points" if sigma_plan is not None else "not found (`power.json` missing)"
    return ["## Observed paired SD", "",
            f"The primary endpoint's paired SD pooled over each family's comparisons, and the true difference "
            f"the paired t test detects with {power:.0%} power at {n} seeds and Holm's strictest level. The plan's "
            f"planning SD: {plan}.", "",
            "| family | comparisons | paired SD (points) | df | level | detectable difference (points) |",
            "|---|---|---|---|---|---|", *rows, ""]


def interval(c: dict[str, Any]) -> str:
    """A comparison's difference and 95% t interval in points: ``+1.0 [-0.5, +2.5]``."""
    return _diff(c["d"]).rsplit(" (n=", 1)[0]


def gain_size(c: dict[str, Any]) -> str:
    """How a comparison reads against a gain of the plan's size: ``gain`` (Holm-significant), else
    ``below`` (the interval's upper end is under +2 points), else ``inconclusive``."""
    if c["verdict"] == "gain":
        return "gain"
    return "below" if c["d"]["t_high"] < DELTA else "inconclusive"


def criteria_head(complete: bool) -> list[str]:
    """The criteria section's heading (and, before every planned run is in, its only line)."""
    return ["## The plan's criteria", ""] + ([] if complete else ["Read once every planned run is in.", ""])


def family_done(rows: list[dict[str, Any]], m: int) -> bool:
    """Every one of the family's ``m`` comparisons is in, each with a verdict (:func:`holm_verdicts`)."""
    return len(rows) == m and not any(c["verdict"].startswith("interim") for c in rows)


def criteria_lines(dose: list[dict[str, Any]], rule: list[dict[str, Any]],
                   shares: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """The plan's "What counts against EchoRL (and for it)", read off the primary endpoint's families
    (rows of :func:`family_table`), each family's once all its planned runs are in
    (:func:`family_done`). ``shares`` (:func:`share_matching`) names the rules not at matched
    gradient share."""
    sizes = family_sizes()
    dose_done, rule_done = family_done(dose, sizes["dose"]), family_done(rule, sizes["rule"])
    L = criteria_head(dose_done or rule_done)
    if not (dose_done or rule_done):
        return L
    by = {c["arm"]: c for c in dose + rule}
    iv = interval
    if dose_done:
        c = by["coef_1e-3"]
        out = {"gain": "does not hold: a Holm-significant gain",
               "below": "holds: at the paper's coef EchoRL gives no gain of 2 points or more on this testbed",
               "inconclusive": "inconclusive at 2 points (the interval's upper end is at or above +2)"}[gain_size(c)]
        L.append(f"- **Against the paper's setting** (`coef_1e-3` minus `grpo`, {iv(c)}): {out}.")
        c = by["coef_1e-2"]
        out = "replicated: a Holm-significant gain" if c["verdict"] == "gain" else \
            "did not replicate: not a Holm-significant gain"
        L.append(f"- **Against the exploratory lead** (`coef_1e-2` minus `grpo`, {iv(c)}; +3.5 in the exploratory "
                 f"study): {out}.")
        losses = [f"`{c['arm']}` ({iv(c)})" for c in dose if c["verdict"] == "loss"]
        L.append(f"- **Against EchoRL at a coef** (a Holm-significant loss vs `grpo`): "
                 f"{', '.join(losses) if losses else 'none'}.")
        gains = [f"`{c['arm']}` ({iv(c)})" for c in dose if c["verdict"] == "gain"]
        L.append(f"- **For EchoRL, dose** (a Holm-significant gain at some coef): {', '.join(gains) if gains else 'none'}.")
    else:
        L.append("- The dose family's criteria: read once its planned runs are all in.")
    if rule_done:
        worse = [c for c in rule if c["verdict"] == "loss"]  # rule minus the peak clip < 0: the alternative is worse
        better = [c for c in rule if c["verdict"] == "gain"]
        far = [c for c in rule if not c["d"]["t_low"] > -DELTA]
        if better:
            out = ("counts against the rule outright: " + ", ".join(f"`{c['arm']}` ({iv(c)})" for c in better)
                   + " Holm-significantly better than the highest-entropy clip")
        elif not worse and not far:
            out = ("holds: at matched gradient share the highest-entropy clip is not 2 points better than a random "
                   "cut, the whole response or NLL on every success")
        else:
            out = ("does not hold: " + ", ".join(f"`{c['arm']}` ({iv(c)}, {c['verdict']})" for c in worse + [
                c for c in far if c not in worse]) + " (Holm-significantly worse, or an interval reaching -2)")
        L.append(f"- **Against the entropy rule** (each rule minus the highest-entropy clip): {out}.")
        off = [f"`{k}` (ratio {v['ratio']:.2f})" for k, v in (shares or {}).items() if not v["matched"]]
        if off:
            L.append(f"  Not at matched gradient share, a deviation from the plan: {', '.join(off)}; its comparison "
                     "answers the question at a different share.")
        beats_all = all(c["verdict"] == "loss" for c in rule)
        L.append("- **For EchoRL, rule** (the highest-entropy clip Holm-significantly better than each alternative): "
                 + ("yes" if beats_all else "no") + ".")
    else:
        L.append("- The rule family's criteria: read once its planned runs are all in.")
    return L + ["- Out of distribution (secondary): described with its interval, not counted for or against.", ""]


def share_matching(results: dict[str, dict[int, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """rule arm -> ``{"share", "peak", "ratio", "matched"}``: its EchoRL gradient share (median per run,
    mean over seeds) over the highest-entropy clip's, matched inside :data:`SHARE_MATCH` (the plan's
    range). Empty until both sides have runs."""
    peak = results.get(FAMILIES["rule"])
    pv = _vals(peak, "grad_echo_share") if peak else {}
    if not pv:
        return {}
    ps = statistics.mean(pv.values())
    out = {}
    for a in CONFIRM_ARMS:
        v = _vals(results.get(a.name, {}), "grad_echo_share") if a.group == "rule" else {}
        if v:
            rs = statistics.mean(v.values())
            ratio = rs / ps if ps else float("nan")
            out[a.name] = {"share": rs, "peak": ps, "ratio": ratio, "matched": SHARE_MATCH[0] <= ratio <= SHARE_MATCH[1]}
    return out


def forest_figure(panels: list[tuple[str, list[dict[str, Any]]]], path: str | os.PathLike,
                  title: str) -> list[list[tuple[str, float, float, float]]]:
    """One forest panel per family: each comparison's paired difference (points) with its 95% t
    interval, 0 marked and the plans' +-2-point size shaded. ``panels``: (title, rows of
    :func:`family_table`). Writes the PNG to ``path``; returns each panel's plotted
    ``(label, mean, low, high)`` in points, top to bottom."""
    from echorl.figures import pyplot, save_figure  # matplotlib: loaded when a report draws

    plt = pyplot()
    panels = [(t, [c for c in rows if c["d"]["n"] >= 2]) for t, rows in panels]
    panels = [(t, rows) for t, rows in panels if rows]
    drawn: list[list[tuple[str, float, float, float]]] = []
    if not panels:
        return drawn
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 0.5 + 0.55 * max(len(r) for _, r in panels) + 1.2),
                             squeeze=False)
    for ax, (t, rows) in zip(axes[0], panels):
        pts = [(f"{c['arm']} - {c['vs']} (n={c['d']['n']})", 100 * c["d"]["mean"], 100 * c["d"]["t_low"],
                100 * c["d"]["t_high"]) for c in rows]
        ys = list(range(len(pts)))[::-1]
        ax.axvspan(-100 * DELTA, 100 * DELTA, color="0.9", zorder=0)
        ax.axvline(0, color="0.4", lw=0.8)
        for y, (_, m, lo, hi) in zip(ys, pts):
            ax.errorbar(m, y, xerr=[[m - lo], [hi - m]], fmt="o", color="C0", capsize=3)
        ax.set_yticks(ys, [p[0] for p in pts], fontsize=8)
        ax.set_ylim(-0.7, len(pts) - 0.3)
        ax.set_xlabel("difference (points): mean, 95% t interval")
        ax.set_title("\n".join(textwrap.wrap(t, 52)), fontsize=9)  # long family titles fit their panel
        ax.grid(axis="x", alpha=0.3)
        drawn.append(pts)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=110)
    return drawn


def curves_figure(results: dict[str, dict[int, dict[str, Any]]], path: str | os.PathLike, title: str) -> list[str]:
    """Training curves per family (rows: the dose arms, the rule arms with the highest-entropy clip):
    ``dev`` accuracy at each validation, ``test`` at the checkpoint evaluations, and the EchoRL share
    of the gradient norm; line: seed mean, band: min-max over seeds. Writes the PNG to ``path``;
    returns the arms drawn."""
    from echorl.figures import pyplot, save_figure  # matplotlib: loaded when a report draws
    from echorl.study.report import _band

    plt = pyplot()
    rows = [[a for a in CONFIRM_ARMS if (a.group == "dose" or a.name == FAMILIES["rule"]) and results.get(a.name)],
            [a for a in CONFIRM_ARMS if (a.group == "rule" or a.name == FAMILIES["rule"]) and results.get(a.name)]]
    rows = [r for i, r in enumerate(rows) if r and (i == 0 or any(a.group == "rule" for a in r))]
    if not rows:
        return []
    fig, axes = plt.subplots(len(rows), 3, figsize=(16, 3.8 * len(rows)), squeeze=False)
    for axs, arms in zip(axes, rows):
        for i, a in enumerate(arms):
            runs, col = results[a.name], f"C{i}"
            _band(axs[0], runs, "step", "dev", "val", a.name, col)
            _band(axs[1], runs, "step", "test_avg", "checkpoints", a.name, col)
            _band(axs[2], runs, "step", "grad_echo_share", "curves", a.name, col)
        axs[2].set_yscale("log")  # a measurement whose RL gradient is ~0 reads ~1: the report takes medians
        for ax, t in zip(axs, ("dev accuracy (validation)", "test accuracy (checkpoint evaluations)",
                               "EchoRL share of the gradient norm (log)")):
            ax.set_title(t, fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        if axs[0].get_legend_handles_labels()[0]:
            axs[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=100)
    return [a.name for r in rows for a in r]


def _family_lines(rows: list[dict[str, Any]]) -> list[str]:
    L = ["| arm | vs | n | Δ [95% t interval] (points) | p | Holm p | verdict |", "|---|---|---|---|---|---|---|"]
    for c in rows:
        d = c["d"]
        L.append(f"| {c['arm']} | {c['vs']} | {d['n']} | {_diff(d).rsplit(' (n=', 1)[0]} | {_p(d.get('p'))} | "
                 f"{_p(c['p_holm'])} | {c['verdict']} |")
    return L + [""]


def write_confirm_report(folder: str | os.PathLike, out_md: str | os.PathLike, s: Settings = CONFIRM,
                         command: str = "python scripts/study.py --study confirm --report") -> str:
    """Write the confirmatory report (markdown) from ``folder``; returns its text."""
    folder, out_md = Path(folder), Path(out_md)
    results = load_results(folder)
    shown = os.path.relpath(folder)
    L = ["# Confirmatory study: report", "",
         f"Generated by `{command}` from `{shown}/` alone; the plan, fixed before the first run, is "
         f"`{shown}/PLAN.md`. Accuracies in %, mean ± sd over seeds.", ""]
    planned = {a.name: seeds_for(a, s) for a in CONFIRM_ARMS}
    allruns = [r for runs in results.values() for r in runs.values()]
    done, total = sum(len(set(results.get(k, {})) & set(v)) for k, v in planned.items()), sum(map(len, planned.values()))
    L += interim_lines(done, total)
    L += ["## Runs", "", "| arm | seeds done / planned | missing | what |", "|---|---|---|---|"]
    for a in CONFIRM_ARMS:
        have = sorted(results.get(a.name, {}))
        missing = [k for k in planned[a.name] if k not in have]
        extra = [k for k in have if k not in planned[a.name]]
        L.append(f"| {a.name} | {len(set(have) & set(planned[a.name]))}/{len(planned[a.name])} | "
                 f"{','.join(map(str, missing)) or '-'}{' (unplanned: ' + ','.join(map(str, extra)) + ')' if extra else ''} "
                 f"| {a.what} |")
    L += ["", *compute_lines(allruns)]
    L += ["## Per arm", "",
          "| arm | seeds | test, steps 100/125/150 (primary) | test, step 150 | ood, steps 100/125/150 | pass@1 | "
          f"pass@{s.passk_n} | echo grad share (%) | s/step |", "|---|---|---|---|---|---|---|---|---|"]
    for a in CONFIRM_ARMS:
        runs = results.get(a.name)
        if not runs:
            continue
        share = mean_sd(_vals(runs, "grad_echo_share").values())
        pk = {k: mean_sd([r["final"]["pass@k"][k] for r in runs.values() if k in r["final"]["pass@k"]])
              for k in ("1", str(s.passk_n))}
        L.append(f"| {a.name} | {len(runs)} | {_pm(mean_sd(_vals(runs, PRIMARY).values()))} | "
                 f"{_pm(mean_sd(_vals(runs, 'test_avg').values()))} | {_pm(mean_sd(_vals(runs, 'ood_ckpt').values()))} | "
                 f"{_pm(pk['1'])} | {_pm(pk[str(s.passk_n)])} | {_pm(share, 100, 2)} | "
                 f"{_pm(mean_sd(_vals(runs, 's_per_step').values()), 1, 2)} |")
    L += ["", "## Confirmatory comparisons (primary endpoint: test, mean of steps 100/125/150)", "",
          "Two-sided paired t tests over seeds, Holm within each family at family-wise level 0.05. "
          "Gain or loss: Holm-adjusted p <= 0.05.", ""]
    primary = {}
    for fam, title in (("dose", "Dose-response: GRPO + EchoRL (paper preset) at each coef minus GRPO"),
                       ("rule", "Clip rule at matched gradient share: each rule minus the highest-entropy clip "
                                "(coef 3e-2)")):
        rows = primary[fam] = family_table(results, fam, PRIMARY, planned=len(planned[FAMILIES[fam]]))
        L += [f"**{title}**", ""] + (_family_lines(rows) if rows else ["No paired results yet.", ""])
    state = run_state(done, total)
    if forest_figure([("dose: GRPO + EchoRL at each coef - GRPO", primary["dose"]),
                      ("rule: each clip rule - the highest-entropy clip (coef 3e-2)", primary["rule"])],
                     folder / "images" / "confirm_primary.png",
                     f"Primary endpoint: test, mean of steps 100/125/150\n(grey: +-2 points; {state})"):
        L += ["![The primary endpoint's paired differences](images/confirm_primary.png)", ""]
    if curves_figure(results, folder / "images" / "confirm_curves.png",
                     f"Curves per arm (line: seed mean, band: min-max over seeds; {state})"):
        L += ["![Curves per arm](images/confirm_curves.png)", ""]
    L += observed_sd_lines(primary, family_sizes(), max(map(len, planned.values())), planning_sd(folder))
    L += criteria_lines(primary["dose"], primary["rule"], shares=share_matching(results))
    L += ["## Secondary endpoints (not confirmatory)", ""]
    for key, lab in SECONDARY:
        for fam in FAMILIES:
            rows = family_table(results, fam, key, planned=len(planned[FAMILIES[fam]]))
            if rows:
                L += [f"**{fam}, {lab}** (Holm within this table)", ""] + _family_lines(rows)
    shares = share_matching(results)
    if shares:
        ps = next(iter(shares.values()))["peak"]
        L += ["## Gradient share matching", "",
              f"Echo grad share (median per run, mean over seeds) of each rule over that of `{FAMILIES['rule']}` "
              f"({100 * ps:.2f}%); the plan counts a ratio in [{SHARE_MATCH[0]:.2f}, {SHARE_MATCH[1]:.2f}] as matched "
              "and reports any other as a deviation.", "", "| arm | share (%) | ratio | matched |", "|---|---|---|---|"]
        for name, m in shares.items():
            L.append(f"| {name} | {100 * m['share']:.2f} | {m['ratio']:.2f} | {'yes' if m['matched'] else 'no: deviation'} |")
        L.append("")
    if (folder / "notes.md").exists():
        L += [(folder / "notes.md").read_text().strip(), ""]
    text = "\n".join(L)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)
    return text
