"""echorl/verl/dump.py and the trainer's dump hook: EchoPPOTrainerSync._compute_advantage on a real
TransferQueue writes echo_clips.json every ``echorl_dump.freq`` steps, with prompts decoded by the
trainer's tokenizer, clips equal to the echo_mask it stored, and verl's padding rows left out."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from echorl import EchoConfig
from echorl.analysis.dump import DumpConfig
from echorl.models.char_tokenizer import build_char_tokenizer
from echorl.verl.dump import dump_config_of

N = 4  # rollouts per prompt


def _rows(tok):
    """Groups A all-success, B mixed, C all-fail (verl's v1 per-row fields), prompts unique per row."""
    g = torch.Generator().manual_seed(3)
    outcome = {"A": [1.0] * N, "B": [1.0, 0.0, 0.0, 1.0], "C": [0.0] * N}
    rows = []
    for uid, scores in outcome.items():
        for j, s in enumerate(scores):
            prompt = torch.tensor(tok.encode(f"Compute {uid}{j}.", add_special_tokens=False))
            text = f"{j}+2={j + 2}\n{j + 2}*3={3 * (j + 2)}\nAnswer: {3 * (j + 2) + int(s == 0)}"
            resp = torch.tensor(tok.encode(text, add_special_tokens=False) + [tok.eos_token_id])
            r = len(resp)
            rm = torch.zeros(r)
            rm[-1] = s
            rows.append({"prompts": prompt, "responses": resp, "input_ids": torch.cat([prompt, resp]),
                         "attention_mask": torch.ones(len(prompt) + r, dtype=torch.int64),
                         "position_ids": torch.arange(len(prompt) + r), "response_mask": torch.ones(r, dtype=torch.int64),
                         "loss_mask": torch.ones(r, dtype=torch.int64), "rm_scores": rm,
                         "rollout_log_probs": -torch.rand(r, generator=g), "entropy": torch.rand(r, generator=g) * 2,
                         "old_log_probs": -torch.rand(r, generator=g), "uid": uid})
    return rows


def test_dump_config_of_composed_config(echorl_cfg):
    cfg = dump_config_of(echorl_cfg)
    assert cfg.freq == 10 and cfg.max_records == 12
    assert cfg.dir == f"{echorl_cfg.trainer.default_local_dir}/echo_clips"
    bad = copy.deepcopy(echorl_cfg)
    with open_dict(bad):
        bad.echorl_dump.every = 3
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['echorl_dump.every'\]"):
        dump_config_of(bad)
    none = OmegaConf.create({"trainer": {"default_local_dir": "ck"}})
    assert dump_config_of(none) == DumpConfig(dir="ck/echo_clips")


def test_trainer_hook_writes_the_dump_through_real_transferqueue(ray_session, echorl_cfg, tmp_path):
    import transfer_queue as tq
    from verl.trainer.ppo.padding_utils import construct_minimal_padding_template

    import echorl.verl.trainer as trainer_mod
    from echorl.verl.trainer import EchoPPOTrainerSync

    tok = build_char_tokenizer()
    cfg = copy.deepcopy(echorl_cfg)
    with open_dict(cfg):
        cfg.actor_rollout_ref.rollout.n = N
        cfg.actor_rollout_ref.actor.ppo_mini_batch_size = 2
        cfg.transfer_queue.backend.SimpleStorage.num_data_storage_units = 1
    rows = _rows(tok)
    tags = [{"is_padding": False, "seq_len": len(r["input_ids"])} for r in rows]
    src = {k: v for k, v in rows[0].items() if k not in ("entropy", "old_log_probs")}
    template, tag = construct_minimal_padding_template(src, tags[0], eos_token_id=tok.eos_token_id)
    for _ in range(2):  # verl's padding rows, as _balance_batch appends them
        rows.append(dict(template, uid="pad0123", entropy=torch.zeros(1), old_log_probs=torch.zeros(1)))
        tags.append(dict(tag))
    keys = [f"{r['uid']}_{i}_0" for i, r in enumerate(rows)]
    stored = {k: torch.nested.as_nested_tensor([r[k] for r in rows], layout=torch.jagged)
              for k in ("prompts", "responses", "response_mask", "entropy", "rm_scores", "old_log_probs")}
    from tensordict import TensorDict

    td = TensorDict(stored, batch_size=[len(rows)])
    td["uid"] = [r["uid"] for r in rows]
    tq.init(cfg.transfer_queue)
    try:
        batch = tq.kv_batch_put(keys=keys, partition_id="train", fields=td, tags=tags)
        trainer = EchoPPOTrainerSync.__new__(EchoPPOTrainerSync)  # no workers: only the driver-side step
        trainer.config, trainer._echo_boundary_resolved, trainer.tokenizer = cfg, True, tok
        trainer.echo_cfg = EchoConfig(boundary_token_ids=(3,), scope="success", per="rollout")
        trainer.echo_dump = DumpConfig(freq=5, dir=str(tmp_path / "clips"), max_records=20)
        if hasattr(trainer_mod, "VerlMethod"):  # what __init__ sets for LUFFY / UFT (off here)
            trainer.method = trainer_mod.VerlMethod(trainer_mod.configure_method(cfg))
        for step in (9, 10):
            trainer.global_steps = step
            out_meta = trainer._compute_advantage(batch, {})
        assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == ["echo_clips.json", "echo_clips_step000010.json"]
        recs = json.loads((tmp_path / "clips" / "echo_clips.json").read_text())
        mask = torch.nested.to_padded_tensor(
            tq.kv_batch_get(keys=out_meta.keys, partition_id="train", select_fields=["echo_mask"])["echo_mask"], False)
    finally:
        tq.close()
    assert recs and {r["group"] for r in recs} == {"A", "B", "C"}  # padding rows never dumped
    prompts = [tok.decode(r["prompts"].tolist()) for r in rows]
    for r in recs:
        b = prompts.index(r["prompt"])  # the prompt, decoded by the trainer's tokenizer
        assert r["step"] == 10 and r["group"] == rows[b]["uid"] and r["score"] == float(rows[b]["rm_scores"].sum())
        assert "".join(r["tokens"]) == tok.decode(rows[b]["responses"].tolist())
        assert r["entropy"] == pytest.approx(rows[b]["entropy"].tolist())
        assert r["clip_len"] == int(mask[b].sum())  # the clip the stage wrote for the actor
        assert r["step_ids"][-1] == 2 and r["step_ids"][:6] == [0] * 6  # "j+2=k\n" is step 0 of 3
    assert any(r["clip_len"] for r in recs)
