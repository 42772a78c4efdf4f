"""LUFFY and UFT on the embedded engine, end to end with the tiny model: LUFFY without expert rows is
GRPO bit for bit; with traces and with hints a step trains (EchoRL on) and reports its metrics; a step
without any expert trace stops the run."""

from __future__ import annotations

import pytest
import torch
from methods_support import base_overrides, make_model

from echorl.local.config import load_config
from echorl.local.trainer import LocalTrainer
from echorl.tasks import load_dataset


def _train(tmp_path, name: str, steps: int, rows=None, **extra):
    model, tok = make_model()
    cfg = load_config(base_overrides(tmp_path / name, steps=steps, **{"method.name": name, **extra}))
    trainer = LocalTrainer(cfg, model=model, tokenizer=tok, rows=rows)
    try:
        metrics = [trainer.step() for _ in range(steps)]
    finally:
        trainer.pool.close()
    return trainer, metrics


@pytest.mark.slow
def test_luffy_without_expert_rows_is_grpo_bit_for_bit(tmp_path):
    rows = load_dataset("arithmetic", n=64, seed=1)
    score = {"reward.score_fn": "local_scorers:len_mod4"}  # mixed and all-success groups: RL and EchoRL gradients
    grpo, g = _train(tmp_path, "grpo", 3, rows=rows, **score)
    # no expert row in any group, the clip kept: LUFFY's loss is the base GRPO loss
    luffy, m = _train(tmp_path, "luffy", 3, rows=rows, **score,
                      **{"method.luffy.on_policy_clip": True, "method.luffy.num_off_policy": 0})
    assert all(x["luffy/off_policy_rows"] == 0.0 and x["luffy/trace_frac"] == 1.0 for x in m)
    assert sum(x["echo/clips"] for x in g) > 0 and [x["reward/mean"] for x in g] == [x["reward/mean"] for x in m]
    for (k, a), (_, b) in zip(grpo.model.state_dict().items(), luffy.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert any(not torch.equal(a, b) for a, b in zip(make_model()[0].state_dict().values(),
                                                      grpo.model.state_dict().values()))  # it did train


@pytest.mark.slow
def test_luffy_and_uft_steps_with_echorl(tmp_path):
    luffy, m = _train(tmp_path, "luffy", 1, **{"data.max_response_length": 48})
    assert m[0]["luffy/off_policy_rows"] == 4.0  # one expert row in each of the 4 groups
    assert luffy.last_batch["off_policy"].sum() == 4
    assert not (luffy.last_batch["echo_mask"] & luffy.last_batch["off_policy"][:, None]).any()
    assert torch.isfinite(torch.tensor(m[0]["actor/luffy/off_pg_loss"]))
    assert m[0]["actor/luffy/off_prob"] == pytest.approx(m[0]["actor/luffy/off_prob_sum"] / m[0]["actor/luffy/off_tokens"])
    assert 0.0 < m[0]["actor/luffy/off_prob"] < 1.0
    uft, m = _train(tmp_path, "uft", 1, **{"method.uft.hint_steps": 4})
    # first step: UFT's t = 1 of 4: 0.05 + 0.45 * (1 + cos(pi / 4))
    assert m[0]["uft/hint_prob"] == pytest.approx(0.818198, abs=1e-6) and m[0]["uft/hint_tokens"] > 0
    hint = uft.last_batch["hint_mask"]
    assert not (hint & uft.last_batch["response_mask"].bool()).any()
    assert not (hint & uft.last_batch["echo_mask"]).any()
    assert m[0]["actor/uft/hint_nll"] > 0 and torch.isfinite(torch.tensor(m[0]["actor/pg_loss"]))


@pytest.mark.parametrize("name", ["luffy", "uft"])
def test_a_step_without_expert_traces_stops_the_run(tmp_path, name):
    from echorl.local.methods import LocalMethod
    from echorl.methods.config import MethodConfig

    method = LocalMethod(MethodConfig(name=name), None, eos_id=1, pad_id=0, n=4, max_response_length=8)
    with pytest.raises(ValueError, match=rf"method.name={name}: none of the 2 prompts.*scripts/prepare_data.py"):
        method.generation_prompts([[5], [6]], [{"prompt": "a"}, {"prompt": "b", "extra_info": {}}], step=0)
    method.generation_prompts([[5], [6]], [{"prompt": "a"}, {"prompt": "b", "target": "3"}], step=10_000)
    assert method.metrics[f"{name}/trace_frac"] == 0.5
