"""The analysis of the zero-variance competitors, exactly as ``results/confirm/PLAN_competitors.md`` fixes it.

``python scripts/study.py --study competitors --report`` writes ``results/confirm/report_competitors.md``
from the result files alone. The new arms (:data:`echorl.study.arms.COMPETITOR_ARMS`) and the
confirmatory study's arms live in the same folder; the plan's shared arms are read from the
confirmatory runs under their confirmatory names (:data:`echorl.study.arms.COMPETITOR_SHARED`:
``positive_nll`` is ``rule_nll_full``), paired by seed like every comparison.

Families (Holm within each, family-wise 0.05; each comparison ``arm - vs``):

* ``competitors``: ``rl_zvp``, ``forking``, ``positive_nll`` minus ``grpo``;
* ``head_to_head``: ``coef_3e-2`` minus ``rl_zvp``, ``forking``, ``positive_nll``;
* ``dapo``: ``dapo_echorl_kf`` minus ``dapo``;
* ``paper_coef`` (descriptive): ``coef_1e-3`` minus each competitor.

Primary endpoint ``final.test_ckpt``; ``ood_ckpt`` and the last step's test accuracy are secondary.
As the confirmatory report, it gives the observed paired SD per family and the plan's "What would
count for and against" (:func:`criteria_lines`), each criterion once the families it reads are complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from echorl.study.arms import COMPETITOR_ARMS, COMPETITOR_SHARED, COMPETITORS, Settings
from echorl.study.confirm import (
    DELTA,
    PRIMARY,
    SECONDARY,
    _family_lines,
    compute_lines,
    criteria_head,
    family_done,
    family_sizes,
    family_table,
    forest_figure,
    gain_size,
    interim_lines,
    interval,
    observed_sd_lines,
    planning_sd,
    run_state,
)
from echorl.study.report import _pm, _vals, holm_verdicts, load_results
from echorl.study.runner import seeds_for
from echorl.study.stats import mean_sd, paired_difference

__all__ = ["FAMILIES", "criteria_lines", "family_rows", "write_competitors_report", "zero_variance_share"]

RIVALS = ("rl_zvp", "forking", "positive_nll")
FAMILIES: dict[str, tuple[tuple[str, str], ...]] = {  # family -> (arm, vs) pairs, plan names
    "competitors": tuple((a, "grpo") for a in RIVALS),
    "head_to_head": tuple(("coef_3e-2", a) for a in RIVALS),
    "dapo": (("dapo_echorl_kf", "dapo"),),
    "paper_coef": tuple(("coef_1e-3", a) for a in RIVALS),
}
TITLES = {
    "competitors": "Each competitor minus GRPO",
    "head_to_head": "GRPO + EchoRL (paper preset, coef 3e-2) minus each competitor",
    "dapo": "DAPO + EchoRL (coef 3e-2, keep_filtered) minus DAPO",
    "paper_coef": "GRPO + EchoRL at the paper's coef 1e-3 minus each competitor (descriptive)",
}


def _runs(results: dict[str, dict[int, dict[str, Any]]], name: str) -> dict[int, dict[str, Any]]:
    """The runs of a plan arm: a shared arm's are the confirmatory arm's."""
    return results.get(COMPETITOR_SHARED.get(name, name), {})


def family_rows(results: dict[str, dict[int, dict[str, Any]]], family: str, key: str,
                planned: int | None = None) -> list[dict[str, Any]]:
    """The comparisons of one family on ``key`` (a ``final`` field), Holm-corrected together: one dict
    per pair with results on both sides (``arm``, ``vs``, ``d``, ``p_holm``, ``verdict``; no verdict
    under ``planned`` pairs: :func:`~echorl.study.report.verdict`)."""
    out = []
    for arm, vs in FAMILIES[family]:
        a, b = _runs(results, arm), _runs(results, vs)
        if a and b:
            out.append({"arm": arm, "vs": vs, "d": paired_difference(_vals(a, key), _vals(b, key))})
    return holm_verdicts(out, planned, len(FAMILIES[family]))


def zero_variance_share(run: dict[str, Any]) -> float | None:
    """A run's share of zero-variance groups (all-success + all-fail) in its trained batches over all its
    steps: the mean of its equal-width curve windows (None without those curves)."""
    c = run.get("curves", {})
    pairs = [(a, b) for a, b in zip(c.get("all_success_frac", []), c.get("all_fail_frac", []))
             if a is not None and b is not None]
    return sum(a + b for a, b in pairs) / len(pairs) if pairs else None


def criteria_lines(fams: dict[str, list[dict[str, Any]]], dose: list[dict[str, Any]],
                   rule: list[dict[str, Any]]) -> list[str]:
    """The plan's "What would count for and against", read off the primary endpoint's families
    (``fams``: family -> :func:`family_rows`; ``dose`` and ``rule``: PLAN.md's families, rows of
    :func:`~echorl.study.confirm.family_table`), each criterion once the families it reads are
    complete (:func:`~echorl.study.confirm.family_done`)."""
    done = {fam: family_done(fams.get(fam, []), len(pairs)) for fam, pairs in FAMILIES.items()}
    any_done = any(done[f] for f in ("competitors", "head_to_head", "dapo"))
    L = criteria_head(any_done)
    if not any_done:
        return L
    if done["competitors"]:
        for c in fams["competitors"]:
            out = {"gain": "a Holm-significant gain over GRPO",
                   "below": "no gain of 2 points or more over GRPO on this testbed",
                   "inconclusive": "no significant gain, inconclusive at 2 points (the interval's upper end is at "
                                   "or above +2)"}[gain_size(c)]
            if c["verdict"] == "loss":
                out += " (a Holm-significant loss)"
            L.append(f"- **`{c['arm']}` over GRPO** ({interval(c)}): {out}.")
    else:
        L.append("- Each competitor over GRPO: read once the `competitors` family's planned runs are all in.")
    if done["head_to_head"]:
        h2h = fams["head_to_head"]
        better = [c for c in h2h if c["verdict"] == "loss"]  # coef_3e-2 minus the competitor < 0
        inside = all(c["d"]["t_low"] > -DELTA and c["d"]["t_high"] < DELTA for c in h2h)
        echo_gain = any(c["verdict"] == "gain" for c in dose)
        if better:
            out = "holds: " + ", ".join(f"`{c['vs']}` ({interval(c)})" for c in better) + \
                  " Holm-significantly better than `coef_3e-2`"
        elif inside and not family_done(dose, family_sizes()["dose"]):
            out = "every head-to-head interval lies inside (-2, +2); the reading waits for PLAN.md's dose family"
        elif inside and not echo_gain:
            out = ("holds: every head-to-head interval lies inside (-2, +2) and PLAN.md's dose family finds no "
                   "EchoRL gain over GRPO: EchoRL does no better than the alternatives here, and none is measurably "
                   "useful")
        else:
            out = "does not hold: no competitor is better than `coef_3e-2`" + \
                  ("" if inside else ", and not every head-to-head interval lies inside (-2, +2)") + \
                  (", and PLAN.md's dose family finds an EchoRL gain" if echo_gain else "")
        L.append(f"- **Against EchoRL's premise**: {out}.")
        wins = [f"`{c['vs']}` ({interval(c)})" for c in h2h if c["verdict"] == "gain"]
        L.append(f"- **For EchoRL over a competitor** (`coef_3e-2` Holm-significantly better): "
                 f"{', '.join(wins) if wins else 'none'}.")
        nll = [c for c in h2h if c["vs"] == "positive_nll"]
        rule_nll = [c for c in rule if c["arm"] == "rule_nll_full"]
        if family_done(rule, family_sizes()["rule"]) and rule_nll:
            L.append(f"- **Positive NLL, both families side by side**: `head_to_head` (`coef_3e-2 - positive_nll`) "
                     f"{interval(nll[0])}, {nll[0]['verdict']}; PLAN.md's `rule` (`rule_nll_full - coef_3e-2`) "
                     f"{interval(rule_nll[0])}, {rule_nll[0]['verdict']}.")
    else:
        L.append("- EchoRL's premise and EchoRL over a competitor: read once the `head_to_head` family's planned runs "
                 "are all in.")
    if done["dapo"]:
        for c in fams["dapo"]:
            if c["verdict"] == "gain":
                out = "counts for EchoRL on all-success groups under dynamic sampling (a Holm-significant gain)"
            elif c["verdict"] == "loss":
                out = "counts against using `keep_filtered` (a Holm-significant loss)"
            elif c["d"]["t_low"] > -DELTA and c["d"]["t_high"] < DELTA:
                out = "no effect of 2 points (the interval lies inside (-2, +2))"
            else:
                out = "no significant difference, inconclusive at 2 points"
            L.append(f"- **DAPO** (`dapo_echorl_kf - dapo`, {interval(c)}): {out}.")
    else:
        L.append("- DAPO: read once the `dapo` family's planned runs are all in.")
    return L + ["- OOD and pass@k: described with intervals, not counted.", ""]


def write_competitors_report(folder: str | os.PathLike, out_md: str | os.PathLike, s: Settings = COMPETITORS,
                             command: str = "python scripts/study.py --study competitors --report") -> str:
    """Write the competitors' report (markdown) from ``folder``; returns its text."""
    folder, out_md = Path(folder), Path(out_md)
    results = load_results(folder)
    shown = os.path.relpath(folder)
    planned = seeds_for(COMPETITOR_ARMS[0], s)
    names = [a.name for a in COMPETITOR_ARMS] + list(COMPETITOR_SHARED)
    done = sum(len(set(_runs(results, n)) & set(planned)) for n in names)
    L = ["# The zero-variance competitors: report", "",
         f"Generated by `{command}` from `{shown}/` alone; the plan, fixed before the first run, is "
         f"`{shown}/PLAN_competitors.md`. Accuracies in %, mean ± sd over seeds. Shared arms are the "
         "confirmatory study's runs: " + ", ".join(f"`{k}` = `{v}`" for k, v in COMPETITOR_SHARED.items()) + ".", "",
         *interim_lines(done, len(names) * len(planned)),
         "## Runs", "", "| arm | seeds done / planned | missing |", "|---|---|---|"]
    for name in names:
        have = set(_runs(results, name))
        missing = [k for k in planned if k not in have]
        L.append(f"| {name} | {len(have & set(planned))}/{len(planned)} | {','.join(map(str, missing)) or '-'} |")
    new_runs = [r for a in COMPETITOR_ARMS for r in results.get(a.name, {}).values()]
    L += ["", *compute_lines(new_runs, "Compute of the new arms (the shared arms' is the confirmatory report's)"),
          "## Per arm", "", "Zero-variance groups: the share of the trained batch's groups whose rollouts all got the "
          "same reward, over every step of the run (under DAPO's dynamic sampling the batch is the filtered one: "
          "none for `dapo`, the kept groups for `dapo_echorl_kf`); generation batches: DAPO's per step (1 "
          "without dynamic sampling).", "", "| arm | seeds | test, steps 100/125/150 (primary) | test, step 150 | "
          "ood, steps 100/125/150 | zero-variance groups (%) | generation batches / step | s/step |",
          "|---|---|---|---|---|---|---|---|"]
    for name in names:
        runs = _runs(results, name)
        if runs:
            zv = {k: v for k, v in ((k, zero_variance_share(r)) for k, r in runs.items()) if v is not None}
            gen = _vals(runs, "gen_batches")
            L.append(f"| {name} | {len(runs)} | {_pm(mean_sd(_vals(runs, PRIMARY).values()))} | "
                     f"{_pm(mean_sd(_vals(runs, 'test_avg').values()))} | "
                     f"{_pm(mean_sd(_vals(runs, 'ood_ckpt').values()))} | {_pm(mean_sd(zv.values()))} | "
                     f"{_pm(mean_sd(gen.values()), 1, 2) if gen else '1'} | "
                     f"{_pm(mean_sd(_vals(runs, 's_per_step').values()), 1, 2)} |")
    L += ["", "## Comparisons (primary endpoint: test, mean of steps 100/125/150)", "",
          "Two-sided paired t tests over seeds, Holm within each family at family-wise level 0.05.", ""]
    primary = {}
    for fam in FAMILIES:
        rows = primary[fam] = family_rows(results, fam, PRIMARY, planned=len(planned))
        L += [f"**{fam}: {TITLES[fam]}**", ""] + (_family_lines(rows) if rows else ["No paired results yet.", ""])
    state = run_state(done, len(names) * len(planned))
    if forest_figure([(f"{fam}: {TITLES[fam]}", primary[fam]) for fam in FAMILIES],
                     folder / "images" / "competitors_primary.png",
                     f"Primary endpoint: test, mean of steps 100/125/150\n(grey: +-2 points; {state})"):
        L += ["![The primary endpoint's paired differences](images/competitors_primary.png)", ""]
    L += observed_sd_lines({k: v for k, v in primary.items() if k != "paper_coef"},
                           {k: len(v) for k, v in FAMILIES.items()}, len(planned), planning_sd(folder))
    L += criteria_lines(primary, family_table(results, "dose", PRIMARY, planned=len(planned)),
                        family_table(results, "rule", PRIMARY, planned=len(planned)))
    L += ["## Secondary endpoints (not confirmatory)", ""]
    for key, lab in SECONDARY:
        for fam in FAMILIES:
            rows = family_rows(results, fam, key, planned=len(planned))
            if rows:
                L += [f"**{fam}, {lab}** (Holm within this table)", ""] + _family_lines(rows)
    text = "\n".join(L)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)
    return text
