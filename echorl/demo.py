"""``make demo`` / ``python -m echorl.demo``: GRPO + EchoRL on the tiny model, on one CPU machine.

Trains the warm-started tiny Qwen2 (:mod:`echorl.models.tiny`, built and cached on first use,
about a minute) on the synthetic arithmetic task with the embedded engine for a few minutes, long
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

DEMO_OVERRIDES = [
    "model.name=tiny",
    "output_dir=outputs/demo",
    "resume=disable",
    "data.task=arithmetic",
    "+data.task_kwargs.levels=[1,2,3]",
    "data.train_batch_size=16",
    "data.max_response_length=64",
    "actor_rollout_ref.rollout.n=8",
    "actor_rollout_ref.actor.ppo_mini_batch_size=8",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=64",
    "actor_rollout_ref.actor.optim.lr=2e-4",
    "actor_rollout_ref.actor.optim.lr_warmup_steps=5",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=64",
    "algorithm.adv_estimator=grpo",
    "echorl.coef=0.01",
    "trainer.total_training_steps=150",
    "trainer.time_limit_min=8",
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
    print(f"  EchoClips     {sum(r.get('echo/clips', 0) for r in rows):.0f} in total, "
          f"{avg(last, 'echo/clip_len_frac'):.2f} of the response on average (last {k} steps); "
          f"EchoRL loss {avg(last, 'echo/loss'):.3f}")
    for key, label in (("figure", "figure"), ("clips_html", "EchoClips"), ("metrics", "metrics")):
        if key in summary:
            print(f"  {label:13s} {summary[key]}")
    print("  tensorboard   tensorboard --logdir " + os.path.join(summary["output_dir"], "tensorboard"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
