"""Helpers of the embedded-engine tests (imported by name: ``from engine_support import ...``; a
``from conftest import`` would resolve to whichever conftest pytest loaded last): a random-init tiny
Qwen2 (~22k parameters) with the character tokenizer, and small configs that run a step in well
under a second on one core."""

from __future__ import annotations

import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # local_scorers must be importable by VerifierPool workers
    sys.path.insert(0, HERE)


def make_model(seed: int = 0):
    """``(model, tokenizer)``: a random tiny Qwen2ForCausalLM (2 layers, hidden 32) + char tokenizer."""
    from transformers import Qwen2ForCausalLM

    from echorl.models import tiny
    from echorl.models.char_tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    recipe = {**tiny.RECIPE, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
              "num_key_value_heads": 1}
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(tiny.tiny_config(len(tok), recipe=recipe)), tok


def base_overrides(out_dir, steps: int = 2, **extra) -> list[str]:
    """Overrides of local.yaml for a fast deterministic test run (4 prompts x 4 rollouts)."""
    ov = {
        "output_dir": str(out_dir), "resume": "disable", "seed": 3,
        "trainer.total_training_steps": steps, "trainer.save_freq": -1, "trainer.logger": "[]",
        "trainer.num_threads": 1, "trainer.make_report": False, "trainer.max_ckpt_to_keep": -1,
        "data.num_rows": 64, "data.train_batch_size": 4, "data.max_response_length": 16,
        "actor_rollout_ref.rollout.n": 4, "actor_rollout_ref.actor.ppo_mini_batch_size": 2,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 4,
        "actor_rollout_ref.actor.optim.lr": 1e-3, "reward.num_workers": 1,
    }
    ov.update(extra)
    return [f"{k}={v}" for k, v in ov.items()]
