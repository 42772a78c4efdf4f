"""``make demo`` / ``python -m echorl.demo``: GRPO + EchoRL on the testbed, on one CPU machine.

Trains the testbed model (``tiny-chain``, a warm-started tiny Qwen2 shipped in ``echorl/assets``)
on the chain task (:mod:`echorl.tasks.chain`: five-line solutions with one hard multiplication)
with the embedded engine, sampling at T=1.0 with the EchoRL paper preset (the defaults of
``echorl/config/testbed.yaml``; docs/engine.md, "Testbed"). From the first step some groups are
all-success, some mixed and some all-fail; GRPO learns from the mixed ones and EchoRL echoes the
successful rollouts' prefixes up to their highest-entropy step. Prints a short summary and where
the figure (``outputs/demo/metrics.png``) and the EchoClip page (``outputs/demo/echo_clips.html``)
are.

Extra arguments are Hydra overrides of ``echorl/config/testbed.yaml`` (e.g. ``echorl.enable=false``
for the GRPO baseline, ``trainer.total_training_steps=40`` for a shorter run).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

from echorl.metrics_file import read_metrics

# Everything else is the testbed config; the method settings are EchoConfig's defaults (the paper).
DEMO_OVERRIDES = [
    "output_dir=outputs/demo",
    "resume=disable",
    "trainer.total_training_steps=200",
    "trainer.time_limit_min=9",
    "trainer.save_freq=100",
    "trainer.logger=[console,tensorboard]",
]


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # imported once the environment is set: transformers reads HF_HUB_OFFLINE when it loads
    from echorl.local import load_config, train

    overrides = DEMO_OVERRIDES + list(sys.argv[1:] if argv is None else argv)
    cfg = load_config(overrides, config_name="testbed")
    print("EchoRL demo: GRPO + EchoRL (paper preset), tiny-chain Qwen2 on the chain testbed at "
          f"T={cfg.actor_rollout_ref.rollout.temperature}, "
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

    train_s = sum(r.get("timing_s/step", 0.0) for r in rows)
    print(f"\nEchoRL demo: {len(rows)} steps, {train_s / 60:.1f} min of training ({wall / 60:.1f} min in all, "
          f"with start-up and the report) in {summary['output_dir']}")
    print(f"  reward        {avg(first, 'reward/mean'):.3f} (first {k} steps) -> {avg(last, 'reward/mean'):.3f} (last {k})")
    print(f"  accuracy      {avg(first, 'reward/accuracy'):.3f} -> {avg(last, 'reward/accuracy'):.3f}")
    for key, label in (("all_success", "all-success"), ("mixed", "mixed"), ("all_fail", "all-fail")):
        print(f"  {label:13s} {avg(first, f'echo/groups_{key}_frac'):.2f} -> {avg(last, f'echo/groups_{key}_frac'):.2f} of groups")
    print(f"  entropy       {avg(first, 'actor/entropy'):.3f} -> {avg(last, 'actor/entropy'):.3f} nats/token (T=1.0)")
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
