"""``python -m echorl.study.compare_methods``: LUFFY and UFT, each with and without EchoRL, on the testbed.

Four runs of the embedded engine on ``echorl/config/testbed.yaml`` (the chain task, whose rows
carry a reference solution that serves as the expert; the warm-started ``tiny-chain`` model), the
same seed and steps for all, then one table: held-out accuracy on the chain ``dev`` split (greedy-
free sampling at the validation temperature, ``val-core`` metrics) before and after training, the
mean training reward of the first and last 10 steps, and the EchoRL clips. Writes the table's
numbers to ``<out>/compare.json``.

    python -m echorl.study.compare_methods [--steps 60] [--out outputs/methods] [extra overrides ...]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from echorl.local import load_config, train
from echorl.metrics_file import read_metrics

RUNS = [("luffy", "off"), ("luffy", "on"), ("uft", "off"), ("uft", "on")]


def _val(records: list[dict], which: int) -> float | None:
    vals = [r for r in records if any(k.startswith("val-core/") for k in r)]
    if not vals:
        return None
    rec = vals[which]
    keys = sorted(k for k in rec if k.startswith("val-core/") and "mean@" in k)
    return float(rec[keys[0]]) if keys else None


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", default="outputs/methods")
    ap.add_argument("--val-rows", type=int, default=200)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    out = Path(args.out)
    table = []
    for method, echo in RUNS:
        run_dir = out / f"{method}-echo_{echo}"
        cfg = load_config([
            f"output_dir={run_dir}", "resume=disable", f"method.name={method}",
            f"echorl.enable={'true' if echo == 'on' else 'false'}", f"trainer.total_training_steps={args.steps}",
            f"method.uft.hint_steps={max(args.steps // 2, 1)}", "trainer.save_freq=-1", "trainer.logger=[]",
            "trainer.make_report=false", f"trainer.test_freq={args.steps}", "trainer.val_before_train=true",
            f"data.val_files=[{{name:dev,source:chain,num_rows:{args.val_rows},task_kwargs:{{split:dev}}}}]",
            *args.overrides], config_name="testbed")
        t0 = time.perf_counter()
        summary = train(cfg)
        minutes = (time.perf_counter() - t0) / 60
        records = read_metrics(summary["metrics"])
        steps = [r for r in records if "reward/mean" in r]
        row = {
            "method": method, "echorl": echo, "steps": len(steps), "minutes": round(minutes, 2),
            "val_before": _val(records, 0), "val_after": _val(records, -1),
            "reward_first10": _mean([r["reward/mean"] for r in steps[:10]]),
            "reward_last10": _mean([r["reward/mean"] for r in steps[-10:]]),
            "clips": sum(r.get("echo/clips", 0.0) for r in steps),
        }
        table.append(row)
        print(json.dumps(row), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(table, indent=1))
    print("\n| method | EchoRL | dev acc before | dev acc after | reward first 10 | last 10 | clips | min |")
    print("|---|---|---|---|---|---|---|---|")
    for r in table:
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"| {r['method']} | {r['echorl']} | {fmt(r['val_before'])} | {fmt(r['val_after'])} | "
              f"{r['reward_first10']:.3f} | {r['reward_last10']:.3f} | {int(r['clips'])} | {r['minutes']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
