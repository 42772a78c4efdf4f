"""Embedded-engine step time and tokens/s with EchoRL on vs off.

Two trainers start from the same weights and seed (tiny model, arithmetic, GRPO); their steps are
interleaved (on/off, off/on, ...) so machine-load drift hits both alike. Reported per arm: median
step time, median tokens/s (prompt + response tokens per second of the whole step) and the median
time of the EchoRL stage (selection + normaliser + metrics). The overhead target is <= 3%
(tokens/s off / on - 1). The two arms diverge after the first update (EchoRL changes the
weights, so response lengths differ); tokens/s normalises for that, and the stage's own share of
the step is reported as the clean number.

    python benchmarks/bench_engine.py [--steps 8] [--warmup 2] [--out benchmarks/results/bench_engine.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from bench_report import print_table, write_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _trainer(enable: bool, args, out: Path):
    from echorl.local import load_config
    from echorl.local.trainer import LocalTrainer

    cfg = load_config([
        f"model.name={args.model}", f"output_dir={out / ('on' if enable else 'off')}", "resume=disable",
        f"seed={args.seed}", f"data.train_batch_size={args.prompts}", f"actor_rollout_ref.rollout.n={args.n}",
        f"data.max_response_length={args.max_response_length}", f"actor_rollout_ref.actor.ppo_mini_batch_size={args.prompts}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={args.prompts * args.n}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={args.prompts * args.n}",
        "actor_rollout_ref.actor.optim.lr=5e-5", f"echorl.enable={enable}", "echorl.coef=0.01",
        f"trainer.total_training_steps={args.steps + args.warmup}", "trainer.logger=[]", "trainer.make_report=false",
        f"trainer.num_threads={args.threads}"])
    return LocalTrainer(cfg)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="model.name (tiny, smollm2 or a folder)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per arm (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per arm first")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-response-length", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/bench_engine.json")
    args = p.parse_args()

    work = Path("outputs/bench_engine")
    arms = {"on": _trainer(True, args, work), "off": _trainer(False, args, work)}
    rec: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    try:
        for i in range(args.warmup + args.steps):
            order = ("on", "off") if i % 2 == 0 else ("off", "on")
            for name in order:
                m = arms[name].step()
                if i >= args.warmup:
                    rec[name].append(m)
    finally:
        for tr in arms.values():
            tr.pool.close()

    def med(name, key):
        return statistics.median(m[key] for m in rec[name])

    res = {name: {"step_s": med(name, "timing_s/step"), "tokens_per_s": med(name, "perf/tokens_per_s"),
                  "echo_stage_s": med(name, "timing_s/echo"), "update_s": med(name, "timing_s/update_actor"),
                  "gen_s": med(name, "timing_s/gen"), "old_log_prob_s": med(name, "timing_s/old_log_prob"),
                  "clips_per_step": statistics.mean(m["echo/clips"] for m in rec[name])} for name in rec}
    overhead_tps = res["off"]["tokens_per_s"] / res["on"]["tokens_per_s"] - 1
    stage_share = statistics.median(m["timing_s/echo"] / m["timing_s/step"] for m in rec["on"])
    summary = {
        "config": vars(args), "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                          "python": sys.version.split()[0]},
        "date": time.strftime("%Y-%m-%d %H:%M"), "arms": res,
        "overhead_tokens_per_s": overhead_tps, "overhead_step_time": res["on"]["step_s"] / res["off"]["step_s"] - 1,
        "echo_stage_share_of_step": stage_share, "target_overhead": 0.03,
    }
    print_table(f"bench_engine: {args.model}, {args.prompts} prompts x {args.n} rollouts, <= "
                f"{args.max_response_length} response tokens, {args.steps} timed steps per arm (median)",
                ["arm", "step s", "tokens/s", "gen s", "oldlp s", "update s", "echo stage s", "clips/step"],
                [[name, f"{r['step_s']:.3f}", f"{r['tokens_per_s']:.0f}", f"{r['gen_s']:.3f}", f"{r['old_log_prob_s']:.3f}",
                  f"{r['update_s']:.3f}", f"{r['echo_stage_s']:.4f}", f"{r['clips_per_step']:.1f}"] for name, r in res.items()])
    print(f"overhead (tokens/s off/on - 1): {overhead_tps:+.1%}   step time on/off - 1: {summary['overhead_step_time']:+.1%}   "
          f"EchoRL stage share of an 'on' step: {stage_share:.2%}   target <= 3%")
    write_json(args.out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
