"""echorl/local/heldout.py: validation during an engine run equals `echorl eval` of its checkpoint.

(Tests of the engine hook live beside the evaluation tests: the hook is a thin caller of echorl.eval.)
"""

from __future__ import annotations

import json

import pytest
import torch

from echorl.cli import main as cli_main
from echorl.eval.run import read_samples, summarize
from echorl.local import load_config
from echorl.local.heldout import make_validator, validation_metrics
from echorl.local.logger import read_metrics
from echorl.local.trainer import LocalTrainer

SEED = 3
VAL = [{"name": "arith", "source": "arithmetic", "group": "id", "num_rows": 6, "task_kwargs": {"levels": [1, 2]}},
       {"name": "far", "source": "arithmetic", "group": "ood", "num_rows": 4, "seed": 9, "task_kwargs": {"levels": [3]}}]


def _overrides(out, **extra):
    ov = {"output_dir": str(out), "resume": "disable", "seed": SEED, "model.name": "tiny",
          "trainer.total_training_steps": 2, "trainer.save_freq": 1, "trainer.logger": "[]", "trainer.num_threads": 1,
          "trainer.make_report": False, "data.num_rows": 32, "data.train_batch_size": 4,
          "data.max_response_length": 40, "actor_rollout_ref.rollout.n": 4,
          "actor_rollout_ref.actor.ppo_mini_batch_size": 2, "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 4,
          "actor_rollout_ref.actor.optim.lr": 1e-2, "reward.num_workers": 1, "data.val_batch_size": 8,
          "actor_rollout_ref.rollout.val_kwargs.n": 2}
    ov.update(extra)
    return [f"{k}={v}" for k, v in ov.items()]


@pytest.mark.slow
def test_validation_logs_val_core_keys_equal_to_echorl_eval_of_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    val = json.dumps(VAL).replace('"', "")  # hydra list syntax
    cfg = load_config(_overrides(run, **{"trainer.test_freq": 1, "data.val_files": val}))
    LocalTrainer(cfg).train()
    rows = {m["step"]: m for m in read_metrics(run / "metrics.jsonl")}
    assert sorted(rows) == [0, 1, 2]  # val_before_train at step 0, then every step
    for step in (0, 1, 2):
        logged = {k: v for k, v in rows[step].items() if k.startswith("val-")}
        for key in ("val-core/arith/reward/mean@2", "val-core/arith/reward/pass@2", "val-core/arith/reward/maj@2",
                    "val-aux/arith/reward/pass@1", "val-core/far/reward/mean@2", "val-core/macro_id/reward/mean@2",
                    "val-core/macro_ood/reward/mean@2", "val-core/macro_all/reward/mean@2",
                    "val-aux/far/response_length/mean"):
            assert key in logged, (step, key)
        # every logged number is recomputed from the per-sample file of that validation
        samples = read_samples(run / "validation" / f"step_{step}")
        assert len(samples) == (6 + 4) * 2
        again = validation_metrics(summarize(samples, {b: {"timeouts": 0, "crashes": 0} for b in ("arith", "far")}))
        assert again == pytest.approx(logged, abs=1e-12)
        arith = [s["score"] for s in samples if s["benchmark"] == "arith"]
        assert logged["val-core/arith/reward/mean@2"] == pytest.approx(sum(arith) / len(arith))
    # the policy moved: validation at step 2 samples other responses than before training
    before = [s["response"] for s in read_samples(run / "validation" / "step_0")]
    after = [s["response"] for s in read_samples(run / "validation" / "step_2")]
    assert before != after

    # `echorl eval` of the step-1 checkpoint with the same settings gives the same samples and numbers
    (tmp_path / "val.yaml").write_text(json.dumps({"benchmarks": VAL}))  # JSON is YAML
    out = tmp_path / "direct"
    assert cli_main(["eval", str(run / "checkpoints" / "global_step_1"), "--benchmarks", str(tmp_path / "val.yaml"),
                     "-n", "2", "--temperature", "0.6", "--top-p", "1.0", "--max-new-tokens", "40",
                     "--seed", str(SEED), "--batch-size", "8", "--workers", "1", "--device", "cpu",
                     "--out", str(out)]) == 0
    direct = read_samples(out)
    logged_samples = read_samples(run / "validation" / "step_1")
    assert [s["response"] for s in direct] == [s["response"] for s in logged_samples]
    summary = json.loads((out / "summary.json").read_text())
    direct_metrics = validation_metrics(summary)
    assert direct_metrics == pytest.approx({k: v for k, v in rows[1].items() if k.startswith("val-")}, abs=1e-12)

    # validation leaves training untouched: same final weights as a run without it
    plain = tmp_path / "plain"
    LocalTrainer(load_config(_overrides(plain))).train()
    a = torch.load(run / "checkpoints" / "global_step_2" / "state.pt", weights_only=False)["model"]
    b = torch.load(plain / "checkpoints" / "global_step_2" / "state.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_validation_config_errors():
    from echorl.models.tiny import load_tiny_model

    _, tok = load_tiny_model()
    with pytest.raises(ValueError, match="trainer.test_freq=2 but data.val_files is empty"):
        make_validator(load_config(["trainer.test_freq=2"]), tok, "/tmp/unused")
    assert make_validator(load_config([]), tok, "/tmp/unused") is None
    with pytest.raises(ValueError, match=r"val_kwargs: temperature=0 \(greedy\)"):
        make_validator(load_config(["data.val_files=[arithmetic]", "actor_rollout_ref.rollout.val_kwargs.n=2",
                                    "actor_rollout_ref.rollout.val_kwargs.do_sample=false"]), tok, "/tmp/unused")
    with pytest.raises(ValueError, match=r"data.val_files\[0\]: unknown key\(s\) \['path'\]"):
        make_validator(load_config(["data.val_files=[{path: x.jsonl}]"]), tok, "/tmp/unused")
    with pytest.raises(ValueError, match="data.max_prompt_length"):
        make_validator(load_config(["data.val_files=[arithmetic]", "data.max_prompt_length=8"]), tok, "/tmp/unused")
