"""``make demo`` / ``python -m echorl.demo``: GRPO + EchoRL on the tiny model, on one CPU machine.

Trains the warm-started tiny Qwen2 (:mod:`echorl.models.tiny`, shipped in ``echorl/assets``) on
the synthetic arithmetic task with the embedded engine for a few minutes, long
enough for the reward to rise and for all-success (advantage-degenerated) groups to appear, which
is where EchoRL's term takes over. Then prints a short summary and where the figure
(``outputs/demo/metrics.png``) and the EchoClip page (``outputs/demo/echo_clips.html``) are.

Extra arguments are Hydra overrides of ``echorl/config/local.yaml`` (e.g. ``echorl.enable=false``
for the GRPO baseline, ``trainer.total_training_steps=40`` for a shorter run).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Sequence

# Why these settings (docs/log.md, 2026-11-23): the warm-started tiny model is over-confident
# (~0.08 nats/token at T=1.0), so at T=1.0 the 8 rollouts of a prompt are near copies, groups are
# all-right or all-wrong, and GRPO learns nothing in minutes (measured: reward flat over 120
# steps). Sampling at T=2.0 makes groups diverse; RL then sharpens the policy, the reward rises
# and all-success groups appear (0 -> ~0.1 of groups), which is where EchoRL's term takes over.
# Levels 1-2: level 1 starts near 95% (T=1), level 2 near 14%. coef=0.01 (paper: 0.001) makes the
# small term visible in the demo's few minutes. Four optimizer steps per batch (mini-batch 4).
DEMO_OVERRIDES = [
    "model.name=tiny",
    "output_dir=outputs/demo",
    "resume=disable",
    "data.task=arithmetic",
    "+data.task_kwargs.levels=[1,2]",
    "data.train_batch_size=16",
    "data.max_response_length=64",
    "actor_rollout_ref.rollout.n=8",
    "actor_rollout_ref.rollout.temperature=2.0",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=32",
    "actor_rollout_ref.actor.optim.lr=4e-4",
    "actor_rollout_ref.actor.optim.lr_warmup_steps=5",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=64",
    "algorithm.adv_estimator=grpo",
    "echorl.coef=0.01",
    "trainer.total_training_steps=150",
    "trainer.time_limit_min=8",
    "trainer.num_threads=1",
    "trainer.save_freq=50",
    "trainer.logger=[console,tensorboard]",
]


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from echorl.local import load_config, train
    from echorl.local.logger import read_metrics

    overrides = DEMO_OVERRIDES + list(sys.argv[1:] if argv is None else argv)
    cfg = load_config(overrides)
    print("EchoRL demo: GRPO + EchoRL, tiny Qwen2 (char tokenizer) on multi-step arithmetic, "
          f"{cfg.data.train_batch_size} prompts x {cfg.actor_rollout_ref.rollout.n} rollouts per step, "
          f"up to {cfg.trainer.total_training_steps} steps / {cfg.trainer.time_limit_min} min")
    t0 = time.time()
    summary = train(cfg)
    wall = time.time() - t0
    rows = read_metrics(summary["metrics"])
    k = max(1, min(10, len(rows) // 4))
    first, last = rows[:k], rows[-k:]

    def avg(rs, key):
        return _mean([r.get(key, 0.0) for r in rs])

    train_s = sum(r.get("timing/step", 0.0) for r in rows)
    print(f"\nEchoRL demo: {len(rows)} steps, {train_s / 60:.1f} min of training ({wall / 60:.1f} min in all, "
          f"with start-up and the report) in {summary['output_dir']}")
    print(f"  reward        {avg(first, 'reward/mean'):.3f} (first {k} steps) -> {avg(last, 'reward/mean'):.3f} (last {k})")
    print(f"  accuracy      {avg(first, 'reward/accuracy'):.3f} -> {avg(last, 'reward/accuracy'):.3f}")
    print(f"  degenerated   {avg(first, 'echo/groups_zero_var_frac'):.2f} -> {avg(last, 'echo/groups_zero_var_frac'):.2f} "
          f"of groups (all-success: {avg(first, 'echo/groups_all_success_frac'):.2f} -> "
          f"{avg(last, 'echo/groups_all_success_frac'):.2f})")
    with_clips = [r for r in rows if r.get("echo/clips", 0) > 0]  # clip length / loss undefined without clips
    if with_clips:
        print(f"  EchoClips     {sum(r['echo/clips'] for r in with_clips):.0f} in total, "
              f"{avg(with_clips, 'echo/clip_len_frac'):.2f} of the response on average; EchoRL loss "
              f"{avg(with_clips[-k:], 'echo/loss'):.3f} (last {min(k, len(with_clips))} steps with clips)")
    else:
        print("  EchoClips     none yet: no group was all-success (train longer)")
    for key, label in (("figure", "figure"), ("clips_html", "EchoClips"), ("metrics", "metrics")):
        if key in summary:
            print(f"  {label:13s} {summary[key]}")
    print("  tensorboard   tensorboard --logdir " + os.path.join(summary["output_dir"], "tensorboard"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
