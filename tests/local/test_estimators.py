"""Every estimator in verl's ADV_ESTIMATOR_REGISTRY is either run by the embedded engine (one step,
finite loss, advantages equal to verl's own function on the step's rewards) or refused at start-up
with its reason (echorl/estimators.py). Parametrized over the registry, so a newly registered
estimator is covered without editing this file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_support import base_overrides, make_model
from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

from echorl.estimators import engine_refusal, is_group_relative
from echorl.local import load_config
from echorl.local.trainer import LocalTrainer

# The reasons a person reads, for the estimators known today (a new one needs no entry here).
KNOWN_REFUSALS = {"gae": "critic", "remax": "greedy baseline rollout", "optimal_token_baseline": "sum_pi_squared",
                  "tir_optimal_token_baseline": "sum_pi_squared", "gdpo": "gdpo_reward_keys"}


def _trainer(tmp_path, est, **extra):
    model, tok = make_model()
    cfg = load_config(base_overrides(tmp_path, steps=1, **{"algorithm.adv_estimator": est,
                                                           "reward.score_fn": "local_scorers:len_mod4",
                                                           "reward.in_process": True, **extra}))
    return LocalTrainer(cfg, model=model, tokenizer=tok)


@pytest.mark.parametrize("est", list(ADV_ESTIMATOR_REGISTRY))
def test_each_registered_estimator_runs_a_step_or_is_refused_with_its_reason(tmp_path, est):
    reason = engine_refusal(est)
    if reason is not None:
        with pytest.raises(ValueError, match=rf"algorithm\.adv_estimator={est} .*choose one of"):
            _trainer(tmp_path, est)
        if est in KNOWN_REFUSALS:
            assert KNOWN_REFUSALS[est] in reason
        return
    tr = _trainer(tmp_path, est)
    try:
        m = tr.step()
    finally:
        tr.pool.close()
    assert np.isfinite(m["actor/pg_loss"])
    # the engine's advantages are what verl's own trainer function computes from this step's rewards
    from verl import DataProto
    from verl.trainer.ppo.ray_trainer import compute_advantage

    b = tr.last_batch
    scores, mask = tr.last["scores"], b["response_mask"]
    rewards = torch.zeros(mask.shape, dtype=torch.float32)  # the score on each row's last valid token
    last = mask.long().sum(-1) - 1
    rewards[torch.arange(len(scores)), last] = scores.float()
    data = DataProto.from_dict(tensors={"token_level_rewards": rewards, "response_mask": mask.float()},
                               non_tensors={"uid": tr.last["group_index"].numpy()})
    cfg = tr.algo_cfg
    want = compute_advantage(data, est, gamma=cfg.gamma, lam=cfg.lam, norm_adv_by_std_in_grpo=cfg.norm_adv_by_std_in_grpo,
                             config=cfg).batch["advantages"]
    if tr.echo_cfg.mode == "loss":
        torch.testing.assert_close(b["advantages"], want.float(), rtol=0, atol=0)
    # a reward that varies inside groups gives a non-zero advantage somewhere
    assert float(b["advantages"].abs().sum()) > 0 or float(scores.std()) == 0


def test_known_refusals_and_group_relative_set():
    assert engine_refusal("grpo") is None and engine_refusal("reinforce_plus_plus") is None
    assert "critic" in engine_refusal("gae")
    assert "greedy baseline rollout" in engine_refusal("remax")
    assert is_group_relative("grpo") and is_group_relative("rloo") and not is_group_relative("reinforce_plus_plus")


def test_unknown_estimator_lists_the_valid_names(tmp_path):
    with pytest.raises(ValueError) as e:
        _trainer(tmp_path, "nope")
    msg = str(e.value)
    assert "algorithm.adv_estimator='nope'" in msg
    for name in ADV_ESTIMATOR_REGISTRY:
        assert name in msg


def test_n1_is_refused_for_group_relative_estimators_with_that_reason(tmp_path):
    kw = {"actor_rollout_ref.rollout.n": 1, "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 2}
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.rollout\.n=1 leaves algorithm\.adv_estimator=grpo no "
                                         r"group to compare.*2 or more"):
        _trainer(tmp_path, "grpo", **kw)
    tr = _trainer(tmp_path, "reinforce_plus_plus", **kw)  # not group-relative: n=1 is fine
    tr.pool.close()
