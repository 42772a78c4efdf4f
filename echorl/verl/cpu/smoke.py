"""``python -m echorl.verl.cpu.smoke`` (``make verl-smoke``): 2 GRPO + EchoRL steps of verl's V1 loop on CPU.

Runs ``python -m echorl.main +cpu=cpu ...`` with the shipped tiny model
(:data:`echorl.models.tiny.SHIPPED_DIR`) on a small arithmetic parquet written on the fly
(:func:`echorl.verl.cpu.data.write_arithmetic_parquets`), and prints the last step's metrics as
one JSON line (keys as verl logs them: ``echo/clips``, ``echo/loss``, ``actor/pg_loss``, ...).

    python -m echorl.verl.cpu.smoke [--steps 2] [--out DIR] [extra Hydra overrides ...]

:func:`cpu_overrides` is the override list (also used by the end-to-end tests).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from echorl.metrics_file import read_metrics


def cpu_overrides(data: dict[str, str], out_dir: str | Path, steps: int = 2, n: int = 4, prompts: int = 4) -> list[str]:
    """Hydra overrides of a small CPU run: ``+cpu=cpu``, the shipped tiny model (and its newline id as
    EchoRL's step boundary), the arithmetic data with its verifier, ``prompts`` x ``n`` rollouts per
    step in one mini-batch, ``steps`` steps, no validation, no checkpoint, console + file logging.
    The method's own settings (estimator, loss, EchoRL options) are left alone: see :data:`SMOKE_METHOD`."""
    from transformers import AutoTokenizer

    from echorl.models.tiny import SHIPPED_DIR, boundary_ids
    from echorl.verl.cpu import data as cpu_data

    newline_ids = boundary_ids(AutoTokenizer.from_pretrained(str(SHIPPED_DIR)))
    return [
        "+cpu=cpu",
        f"actor_rollout_ref.model.path={SHIPPED_DIR}",
        # the tiny model's context (256 positions): sequences are prompt + response, whatever a recipe set
        "actor_rollout_ref.rollout.max_model_len=null",
        "echorl.boundary=fixed",  # the tiny model's one newline id, checked at start-up
        f"echorl.boundary_token_ids=[{','.join(str(i) for i in newline_ids)}]",
        f"data.train_files={data['train']}",
        f"data.val_files={data['val']}",
        f"data.train_batch_size={prompts}",
        "data.max_prompt_length=64",
        "data.max_response_length=48",
        "data.shuffle=false",
        f"reward.custom_reward_function.path={cpu_data.__file__}",
        "reward.custom_reward_function.name=compute_score",
        f"actor_rollout_ref.rollout.n={n}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={prompts}",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=4096",
        f"trainer.total_training_steps={steps}",
        "trainer.total_epochs=100",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        f"trainer.default_local_dir={Path(out_dir) / 'ckpt'}",
        "trainer.logger=[console,file]",
    ]


# GRPO + EchoRL as the smoke runs it: one PPO epoch, a learning rate the tiny model notices, EchoRL's
# loss with every successful rollout giving a clip (the tiny model solves level-1 problems).
SMOKE_METHOD = [
    "actor_rollout_ref.actor.ppo_epochs=1",
    "actor_rollout_ref.actor.optim.lr=1e-4",
    "echorl.enable=true",
    "echorl.mode=loss",
    "echorl.coef=0.01",
    "echorl.scope=success",
    "echorl.per=rollout",
    "echorl.loss_agg=clip_token_mean",
    "echorl.selector=peak",
]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", default=None, help="output folder (default: a temporary folder)")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides (win over the smoke settings)")
    args = ap.parse_args(argv)
    from echorl.verl.cpu.data import write_arithmetic_parquets

    out = Path(args.out or tempfile.mkdtemp(prefix="echorl-verl-smoke-")).resolve()
    data = write_arithmetic_parquets(out / "data", n_train=4 * args.steps, n_val=4, levels=(1, 2))
    log = out / "metrics.jsonl"
    cmd = [sys.executable, "-m", "echorl.main", *cpu_overrides(data, out, steps=args.steps), *SMOKE_METHOD,
           f"++ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={log}", *args.overrides]
    env = {**os.environ, "VERL_PLATFORM": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    print("echorl verl-smoke:", " ".join(cmd), file=sys.stderr, flush=True)
    rc = subprocess.run(cmd, env=env, stdout=sys.stderr).returncode
    if rc != 0:
        print(f"echorl verl-smoke: python -m echorl.main exited with {rc} (output above)", file=sys.stderr)
        return rc
    records = [r for r in read_metrics(log) if "echo/clips" in r["data"]]
    if not records:
        print(f"echorl verl-smoke: no training step was logged in {log}", file=sys.stderr)
        return 1
    last = records[-1]
    print(json.dumps({"step": last["step"], **last["data"]}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
