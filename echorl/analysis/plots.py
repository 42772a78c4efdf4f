"""One PNG summarising a training run from its ``metrics.jsonl``.

Panels (each drawn from whichever of its keys the log holds; a panel with none says so):

1. reward and accuracy per step (``reward/mean``, ``reward/accuracy``);
2. share of advantage-degenerated groups (``echo/groups_zero_var_frac``,
   ``echo/groups_degenerate_success_frac``, ``echo/groups_all_fail_frac``);
3. EchoClip length as a fraction of the response (``echo/clip_len_frac``);
4. the EchoRL loss term per step (``echo/loss``).

Reward and accuracy also get a rolling mean over ``SMOOTH`` steps (per-step values are noisy at
small batch sizes). Clip length and EchoRL loss are undefined on steps without a clip
(``echo/clips == 0``): those steps are left out rather than drawn as 0.

Lines that are not JSON objects are skipped (a run killed mid-write leaves a partial last line);
non-numeric and non-finite values are skipped per key. Uses the Agg backend (no display).

    python -c "from echorl.analysis import plot_metrics; plot_metrics('outputs/run/metrics.jsonl', 'fig.png')"
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from echorl.figures import pyplot, save_figure
from echorl.metrics_file import read_metrics  # re-exported: the one reader of metrics.jsonl

__all__ = ["PANELS", "plot_metrics", "read_metrics", "rolling_mean"]

SMOOTH = 10
SMOOTHED = ("reward/mean", "reward/accuracy")
NEEDS_CLIPS = ("echo/clip_len_frac", "echo/loss")

# (title, y label, [(key, legend label), ...]); first key found per alias list wins.
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Reward and accuracy", "value", [("reward/mean", "reward (mean)"), ("reward/accuracy", "accuracy")]),
    ("Advantage-degenerated groups", "share of groups", [
        ("echo/groups_zero_var_frac", "zero variance (all same)"),
        ("echo/groups_degenerate_success_frac", "all success (EchoRL source)"),
        ("echo/groups_all_fail_frac", "all fail"),
    ]),
    ("EchoClip length", "fraction of response", [("echo/clip_len_frac", "clip length / response length")]),
    ("EchoRL loss", "NLL per clip token", [("echo/loss", "L_echo")]),
]


def rolling_mean(ys: list[float], window: int) -> list[float]:
    """Trailing mean of the last ``window`` values (fewer at the start)."""
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _series(rows: Iterable[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, r in enumerate(rows):
        if key in NEEDS_CLIPS and r.get("echo/clips", 1) == 0:
            continue
        v = r.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        s = r.get("step", i)
        xs.append(float(s) if isinstance(s, (int, float)) and not isinstance(s, bool) else float(i))
        ys.append(float(v))
    return xs, ys


def plot_metrics(jsonl_path: str | os.PathLike, out_png: str | os.PathLike, title: str | None = None) -> Path:
    """Write the 4-panel figure of ``jsonl_path`` to ``out_png`` and return its path.

    Raises ``FileNotFoundError`` when the log is missing; an empty log gives a figure whose panels
    say "no data".
    """
    plt = pyplot()
    rows = read_metrics(jsonl_path)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), dpi=100)
    for ax, (ptitle, ylabel, keys) in zip(axes.flat, PANELS):
        drawn = 0
        for key, label in keys:
            xs, ys = _series(rows, key)
            if xs:
                smooth = key in SMOOTHED and len(xs) > 2 * SMOOTH
                line, = ax.plot(xs, ys, marker="o" if len(xs) < 30 else ".", markersize=3,
                                linewidth=0.8 if smooth else 1.5, alpha=0.35 if smooth else 1.0,
                                linestyle="-" if key not in NEEDS_CLIPS else "none" if len(xs) >= 30 else "-",
                                label=label if not smooth else None)
                if smooth:
                    ax.plot(xs, rolling_mean(ys, SMOOTH), color=line.get_color(), linewidth=2,
                            label=f"{label}, {SMOOTH}-step mean")
                drawn += 1
        ax.set_title(ptitle, fontsize=11)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8, loc="best")
        else:
            ax.text(0.5, 0.5, "no data (" + ", ".join(k for k, _ in keys) + ")", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8, color="gray", wrap=True)
    fig.suptitle(title or f"EchoRL run: {Path(jsonl_path).parent.name or Path(jsonl_path).name} ({len(rows)} steps)")
    return save_figure(fig, out_png)
