"""Bad input reaches the user as a message that names the problem.

All of these fail (or warn) during LocalTrainer construction, before any worker process starts."""

from __future__ import annotations

import dataclasses

import pytest
from engine_support import base_overrides, make_model

from echorl.core.clips import EchoBoundaryWarning
from echorl.core.config import EchoConfig
from echorl.local import load_config
from echorl.local.trainer import LocalTrainer

ROWS = [{"prompt": "Compute 1+2.", "answer": "3", "data_source": "echorl/arithmetic", "solution": "1+2=3\nAnswer: 3"}] * 8


def _trainer(tmp_path, rows=None, tok=None, **extra):
    model, t = make_model()
    cfg = load_config(base_overrides(tmp_path, **extra))
    tr = LocalTrainer(cfg, model=model, tokenizer=tok or t, rows=rows)
    tr.pool.close()
    return tr


def test_row_missing_field_names_row_and_field(tmp_path):
    rows = [dict(r) for r in ROWS]
    del rows[5]["answer"]
    with pytest.raises(ValueError, match=r"row 5 is missing required field 'answer'"):
        _trainer(tmp_path, rows)
    rows = [dict(r) for r in ROWS]
    rows[2] = {k: v for k, v in rows[2].items() if k != "data_source"}
    with pytest.raises(ValueError, match=r"row 2 is missing field 'data_source'"):
        _trainer(tmp_path, rows, **{"data.task": "my_rows.jsonl"})


def test_missing_field_in_a_file_is_surfaced(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"prompt": "Compute 1+2.", "answer": "3", "data_source": "echorl/arithmetic"}\n{"prompt": "x"}\n')
    with pytest.raises(ValueError, match=r"row 1 is missing required field 'answer'"):
        _trainer(tmp_path, **{"data.task": str(f), "data.num_rows": "null"})


def test_overlong_prompt_is_an_error_or_counted_never_truncated(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[3] = {**rows[3], "prompt": "Compute " + "1+" * 40 + "1."}
    with pytest.raises(ValueError, match=r"longer than data.max_prompt_length=64 tokens \(first: row 3"):
        _trainer(tmp_path, rows)
    with pytest.warns(UserWarning, match="skipped 1 of 8 prompts"):
        tr = _trainer(tmp_path, rows, **{"data.overlong_prompt": "skip"})
    assert tr.prompts.skipped_too_long == 1 and len(tr.prompts.rows) == 7
    assert max(len(x) for x in tr.prompts.ids) <= 64


def test_chat_template_required_but_missing(tmp_path):
    _, tok = make_model()
    tok.chat_template = None
    with pytest.raises(ValueError, match="has no chat template"):
        _trainer(tmp_path, ROWS, tok=tok, **{"data.chat_template": "true"})
    tr = _trainer(tmp_path, ROWS, tok=tok)  # auto: raw prompt text
    assert tr.tok.decode(tr.prompts.ids[0]) == "Compute 1+2."


def test_boundary_ids_outside_vocab_or_never_seen(tmp_path):
    with pytest.raises(ValueError, match=r"boundary_token_ids \[198, 271\]: \[.*\] are outside the vocabulary"):
        _trainer(tmp_path, ROWS, **{"echorl.boundary": "fixed", "echorl.boundary_token_ids": "[198,271]"})
    with pytest.warns(EchoBoundaryWarning, match=r"never occur in 8 tokenized reference solutions"):
        _trainer(tmp_path, ROWS, **{"echorl.boundary": "fixed", "echorl.boundary_token_ids": "[50]"})


def test_unknown_keys_and_bad_values_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"echorl.bogus"):
        _trainer(tmp_path, ROWS, **{"+echorl.bogus": 1})
    with pytest.raises(ValueError, match=r"actor_rollout_ref.actor.bogus"):
        _trainer(tmp_path, ROWS, **{"+actor_rollout_ref.actor.bogus": 1})
    with pytest.raises(ValueError, match=r"algorithm.adv_estimator=gae needs a critic"):
        _trainer(tmp_path, ROWS, **{"algorithm.adv_estimator": "gae"})
    with pytest.raises(ValueError, match=r"ppo_micro_batch_size_per_gpu \(3\) must divide"):
        _trainer(tmp_path, ROWS, **{"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 3})


def test_local_yaml_echorl_node_has_exactly_echoconfigs_fields():
    cfg = load_config()
    assert set(cfg.echorl.keys()) == {f.name for f in dataclasses.fields(EchoConfig)}
    d = {f.name: f.default for f in dataclasses.fields(EchoConfig)}
    for k in ("enable", "success_threshold", "tol", "scope", "per", "step_agg", "min_step_tokens", "selector",
              "mode", "coef", "adv_coef", "loss_agg"):
        assert cfg.echorl[k] == d[k], k  # the paper's defaults, except the tokenizer-derived boundary
    for key in ("data.train_batch_size", "actor_rollout_ref.rollout.n", "actor_rollout_ref.rollout.temperature",
                "actor_rollout_ref.actor.optim.lr", "actor_rollout_ref.actor.ppo_mini_batch_size",
                "actor_rollout_ref.actor.clip_ratio", "algorithm.adv_estimator", "trainer.total_training_steps",
                "trainer.save_freq", "trainer.logger"):
        from omegaconf import OmegaConf

        assert OmegaConf.select(cfg, key) is not None, key
