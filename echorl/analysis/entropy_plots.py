"""Figures of the entropy profile (:mod:`echorl.analysis.entropy`) and the step-deletion test
(:mod:`echorl.analysis.deletion`). Agg backend, small PNGs (docs/analysis.md shows them)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from echorl.figures import pyplot, save_figure

__all__ = ["plot_deletion", "plot_entropy_profile"]

_COLOURS = {"expert": "#7c3aed", "correct": "#15803d", "wrong": "#b91c1c",
            "highest": "#dc2626", "lowest": "#2563eb", "random": "#525252"}


def plot_entropy_profile(summary: dict[str, Any], profiles: Sequence[dict[str, Any]], out_png: str | Path,
                         title: str = "") -> Path:
    """Four panels per kind of solution (expert / correct / wrong): mean token entropy per solution
    (mean and 95% interval), the distribution of step entropies, the peak step's relative position,
    and the mean step entropy along the solution (relative position bins)."""
    plt = pyplot()
    kinds = [k for k in ("expert", "correct", "wrong") if k in summary]
    fig, ax = plt.subplots(1, 4, figsize=(16, 3.6))
    for i, k in enumerate(kinds):
        t = summary[k]["token_h"]
        ax[0].bar(i, t["mean"], color=_COLOURS[k], alpha=0.8)
        if t["n"] > 1:
            ax[0].errorbar(i, t["mean"], yerr=[[t["mean"] - t["ci95"][0]], [t["ci95"][1] - t["mean"]]], color="k", capsize=4)
        ax[0].text(i, 0, f"n={summary[k]['solutions']}", ha="center", va="bottom", fontsize=8, color="w")
    ax[0].set_xticks(range(len(kinds)), kinds)
    ax[0].set_title("Token entropy per solution (mean, 95% CI)", fontsize=10)
    ax[0].set_ylabel("nats")
    steps = {k: [h for p in profiles if p["kind"] == k for h in p["step_h"]] for k in kinds}
    hi = max([max(v) for v in steps.values() if v] + [1e-3])
    bins = np.linspace(0, hi, 30)
    for k in kinds:
        if steps[k]:
            ax[1].hist(steps[k], bins=bins, density=True, histtype="step", lw=1.6, color=_COLOURS[k], label=k)
    ax[1].set_title("Step entropy (step mean of token entropy)", fontsize=10)
    ax[1].set_xlabel("nats")
    ax[1].legend(fontsize=8)
    for k in kinds:
        pos = [p["peak_pos"] for p in profiles if p["kind"] == k and math.isfinite(p["peak_pos"])]
        if pos:
            ax[2].hist(pos, bins=np.linspace(0, 1, 11), density=True, histtype="step", lw=1.6, color=_COLOURS[k], label=k)
    ax[2].set_title("Peak step position (0 = first, 1 = last step)", fontsize=10)
    ax[2].legend(fontsize=8)
    for k in kinds:
        y = summary[k]["step_h_by_position"]
        x = (np.arange(len(y)) + 0.5) / len(y)
        ax[3].plot(x, y, "o-", color=_COLOURS[k], label=k)
    ax[3].set_title("Step entropy along the solution", fontsize=10)
    ax[3].set_xlabel("relative step position")
    ax[3].set_ylabel("nats")
    ax[3].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, out_png, dpi=80)


def plot_deletion(result: dict[str, Any], out_png: str | Path, title: str = "") -> Path:
    """Accuracy against the share of reasoning steps deleted, one line per order; the random order
    is the mean over seeds with a band from the lowest to the highest seed."""
    plt = pyplot()
    x = 100 * np.asarray(result["shares"])
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for o, r in result["orders"].items():
        y = np.asarray(r["accuracy"])
        label = o if o != "random" else f"random (mean of {len(r['seed_accuracy'])} seeds, band = min-max)"
        ax.plot(x, y, "o-", color=_COLOURS.get(o, "k"), label=label)
        if o == "random":
            ax.fill_between(x, r["seed_min"], r["seed_max"], color=_COLOURS["random"], alpha=0.2)
    ax.set_xlabel("share of reasoning steps deleted (%)")
    ax.set_ylabel("accuracy after finishing")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"Step deletion ({result['solutions']} correct solutions)", fontsize=10)
    return save_figure(fig, out_png, dpi=80)
