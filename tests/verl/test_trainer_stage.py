"""The verl stage's pure part on a batch laid out as verl's v1 trainer stores it.

Rows are built as the v1 trainer holds them after ``_compute_old_log_prob`` and
``_compute_advantage``: nested response-aligned fields, token-level ``rm_scores``, a non-tensor
``uid``; advantages come from verl's real GRPO estimator; the padding rows come from verl's real
``construct_minimal_padding_template`` (what ``_balance_batch`` appends). The written ``echo_mask``
must equal the core's selection.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage
from verl.trainer.ppo.padding_utils import construct_minimal_padding_template
from verl.utils import tensordict_utils as tu

from echorl import EchoConfig, echo_normalizer, select_echo_clips
from echorl.stage import num_minibatches
from echorl.verl.fields import echo_stage_fields

NL, NLNL = 198, 271
G = 4  # rollouts per prompt


def _response(g: torch.Generator) -> torch.Tensor:
    """Words (ids 1000..1999) in 2-4 steps separated by newline tokens."""
    parts = []
    for k in range(int(torch.randint(2, 5, (1,), generator=g))):
        parts.append(torch.randint(1000, 2000, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g))
        parts.append(torch.tensor([NL if k % 2 else NLNL]))
    return torch.cat(parts)


def make_batch(seed: int = 0, n_pad: int = 2):
    """Rows: group A all-success, B mixed, C all-fail, D all-success (short), then padding rows.

    Returns (data TensorDict as kv_batch_get returns it, is_padding list, padded tensors dict).
    """
    g = torch.Generator().manual_seed(seed)
    outcome = {"A": [1.0] * G, "B": [1.0, 0.0, 1.0, 0.0], "C": [0.0] * G, "D": [1.0] * G}
    rows = []
    for uid, scores in outcome.items():
        for s in scores:
            resp = _response(g)
            r = len(resp)
            mask = torch.ones(r, dtype=torch.int64)
            rm = torch.zeros(r)
            rm[-1] = s  # verl puts the outcome score on the last response token
            prompt = torch.randint(1000, 2000, (5,), generator=g)
            rows.append({
                "prompts": prompt, "responses": resp, "input_ids": torch.cat([prompt, resp]),
                "attention_mask": torch.ones(5 + r, dtype=torch.int64),
                "position_ids": torch.arange(5 + r),
                "response_mask": mask, "loss_mask": mask, "rm_scores": rm,
                "rollout_log_probs": -torch.rand(r, generator=g),
                "entropy": torch.rand(r, generator=g) * 3,
                "old_log_probs": -torch.rand(r, generator=g),
                "uid": uid,
            })
    tags = [{"is_padding": False, "seq_len": len(x["input_ids"])} for x in rows]
    # verl's own padding rows (what _balance_batch appends), built from the first sample
    if n_pad:
        src = {k: v for k, v in rows[0].items() if k not in ("entropy", "old_log_probs")}
        template, tag = construct_minimal_padding_template(src, tags[0], eos_token_id=NL)
        for _ in range(n_pad):
            pad = dict(template, uid="pad0123", entropy=torch.zeros(1), old_log_probs=torch.zeros(1))
            rows.append(pad)
            tags.append(dict(tag))
    B = len(rows)
    fields = {k: [row[k] for row in rows] for k in ("responses", "response_mask", "entropy", "rm_scores", "uid")}
    nested = {k: torch.nested.as_nested_tensor(v, layout=torch.jagged) for k, v in fields.items() if k != "uid"}
    padded = {k: torch.nested.to_padded_tensor(v, 0.0) for k, v in nested.items()}
    # verl's GRPO estimator on the padded batch (as _compute_advantage does)
    adv, _ = compute_grpo_outcome_advantage(
        token_level_rewards=padded["rm_scores"], response_mask=padded["response_mask"],
        index=np.array(fields["uid"], dtype=object),
    )
    lens = [len(r) for r in fields["responses"]]
    nested["advantages"] = torch.nested.as_nested_tensor([adv[i, : lens[i]] for i in range(B)], layout=torch.jagged)
    padded["advantages"] = adv
    data = tu.get_tensordict({**nested, "uid": fields["uid"]})
    return data, [t["is_padding"] for t in tags], padded, fields["uid"]


def _core_mask(padded, uids, is_padding, cfg):
    valid = padded["response_mask"].bool() & ~torch.tensor(is_padding)[:, None]
    return select_echo_clips(padded["responses"].long(), valid, padded["entropy"].float(),
                             padded["rm_scores"].sum(-1), uids, cfg), valid


def test_paper_default_writes_clip_mean_row_denominators():
    """Default preset (scope=success, per=group, loss_agg=clip_mean): the core's clips, and D_b =
    |c_b| * C / M per row."""
    from echorl import echo_row_denominators

    cfg = EchoConfig(boundary="fixed")
    data, is_padding, padded, uids = make_batch(seed=1)
    fields, out = echo_stage_fields(data, is_padding, cfg, num_minibatches=2, step=3)
    sel, valid = _core_mask(padded, uids, is_padding, cfg)
    assert torch.equal(torch.nested.to_padded_tensor(fields["echo_mask"], False), sel.mask)
    lens = sel.mask.sum(dim=1).float()
    clips = int(sel.mask.any(dim=1).sum())
    assert clips >= 3  # groups A and D (all-success) and the mixed group's successes
    expected = torch.where(lens > 0, lens * clips / 2, 1.0)
    assert torch.equal(fields["echo_denom"], expected)
    assert torch.equal(fields["echo_denom"], echo_row_denominators(sel.mask, valid, "clip_mean", 2))
    assert out.metrics["echo/denom"] == clips / 2


@pytest.mark.parametrize("per", ["rollout", "group"])
def test_mask_equals_core_selection(per):
    cfg = EchoConfig(boundary="fixed", preset="degenerate", per=per)
    data, is_padding, padded, uids = make_batch(seed=1)
    fields, out = echo_stage_fields(data, is_padding, cfg, num_minibatches=2, step=3)
    sel, valid = _core_mask(padded, uids, is_padding, cfg)
    written = torch.nested.to_padded_tensor(fields["echo_mask"], False)
    assert fields["echo_mask"].is_nested
    assert torch.equal(fields["echo_mask"].offsets(), data["response_mask"].offsets())  # same row lengths
    assert torch.equal(written, sel.mask)
    assert written[:4].any() and written[12:16].any()  # groups A and D echo
    assert not written[4:12].any() and not written[16:].any()  # mixed, all-fail and padding do not
    assert written.sum() > 0 and not (written & ~valid).any()
    expected_d = echo_normalizer(sel.mask, valid, "clip_token_mean", 2)
    assert torch.equal(fields["echo_denom"], torch.full((len(uids),), expected_d, dtype=torch.float32))
    assert out.metrics["echo/denom"] == expected_d
    assert "advantages" not in fields.keys()
    # GRPO made groups A and D advantage-degenerate: every advantage there is 0
    assert float(padded["advantages"][:4].abs().sum()) == 0.0
    assert out.metrics["echo/grad_token_frac_echo"] > out.metrics["echo/grad_token_frac_base"]


def test_positive_nll_recipe_echoes_every_success_whole_with_one_token_denominator():
    """recipes/positive_nll as composed for a launch (VAPO's term): every successful rollout's whole
    response is a clip, and every row's ``D_b`` is the batch's success tokens per mini-batch."""
    import dataclasses

    from hydra import compose, initialize_config_module

    from echorl.verl.config_checks import validate_config

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    with initialize_config_module(config_module="echorl.config", version_base=None):
        composed = compose(config_name="echorl_trainer", overrides=[
            f"hydra.searchpath=[pkg://verl.trainer.config,file://{recipes}]", "+positive_nll=positive_nll"])
    cfg = dataclasses.replace(validate_config(composed), boundary="fixed", boundary_token_ids=(NL, NLNL))
    assert (cfg.scope, cfg.per, cfg.selector, cfg.loss_agg, cfg.coef) == ("success", "rollout", "full",
                                                                          "clip_token_mean", 0.1)
    data, is_padding, padded, uids = make_batch(seed=2)
    fields, out = echo_stage_fields(data, is_padding, cfg, num_minibatches=2, step=1)
    valid = padded["response_mask"].bool() & ~torch.tensor(is_padding)[:, None]
    success = padded["rm_scores"].sum(-1) >= 1.0  # groups A and D, and 2 of B's 4
    assert int(success[~torch.tensor(is_padding)].sum()) == 10
    written = torch.nested.to_padded_tensor(fields["echo_mask"], False)
    assert torch.equal(written, valid & success[:, None])
    assert torch.equal(fields["echo_denom"], torch.full((len(uids),), float(written.sum()) / 2))


def test_padding_rows_are_excluded_even_with_a_mask_and_score():
    """A padding row that looked like a successful rollout still never echoes nor joins a group."""
    cfg = EchoConfig(boundary="fixed")
    data, is_padding, padded, uids = make_batch(seed=2, n_pad=0)
    # relabel the last all-success group D as padding: it must drop out entirely
    is_padding = [False] * 12 + [True] * 4
    fields, out = echo_stage_fields(data, is_padding, cfg)
    written = torch.nested.to_padded_tensor(fields["echo_mask"], False)
    assert written[:4].any()
    assert not written[12:].any()
    fields_all, _ = echo_stage_fields(data, None, cfg)
    assert torch.nested.to_padded_tensor(fields_all["echo_mask"], False)[12:].any()


def test_advantage_mode_writes_advantages():
    cfg = EchoConfig(boundary="fixed", mode="advantage", adv_coef=0.5)
    data, is_padding, padded, uids = make_batch(seed=4)
    fields, out = echo_stage_fields(data, is_padding, cfg)
    sel, _ = _core_mask(padded, uids, is_padding, cfg)
    assert not torch.nested.to_padded_tensor(fields["echo_mask"], False).any()  # no loss term
    new_adv = torch.nested.to_padded_tensor(fields["advantages"], 0.0)
    torch.testing.assert_close(new_adv, padded["advantages"] + 0.5 * sel.mask.float(), rtol=0, atol=0)


def test_disabled_reports_but_writes_empty_mask():
    cfg = EchoConfig(boundary="fixed", enable=False)
    data, is_padding, _, _ = make_batch(seed=5)
    fields, out = echo_stage_fields(data, is_padding, cfg)
    assert not torch.nested.to_padded_tensor(fields["echo_mask"], False).any()
    assert out.metrics["echo/active"] == 0.0
    assert out.selection.mask.any()  # what EchoRL would echo is still measured


def test_num_minibatches_follows_verl_update():
    # verl: mini_batch_size = ppo_mini_batch_size * rollout.n rows; the batch is padded to a multiple
    assert num_minibatches(1024, 32, 8) == 4
    assert num_minibatches(1024, 128, 8) == 1
    with pytest.raises(ValueError, match="ppo_mini_batch_size"):
        num_minibatches(16, 0, 8)


def test_missing_entropy_names_the_field():
    data, is_padding, _, _ = make_batch(seed=6)
    with pytest.raises(KeyError, match="entropy"):
        echo_stage_fields(data.exclude("entropy"), is_padding, EchoConfig(boundary="fixed"))


def test_trainer_stage_through_real_transferqueue(ray_session, echorl_cfg):
    """EchoPPOTrainerSync._compute_advantage on a real TransferQueue: verl's parent step computes
    GRPO advantages from the stored fields, the stage writes echo_mask/echo_denom, and the handle it
    returns lists them (so the actor workers receive them). Only the trainer's Ray worker groups
    are absent (the method touches none)."""
    import copy

    import transfer_queue as tq
    from omegaconf import open_dict

    from echorl.verl.trainer import EchoPPOTrainerSync

    cfg = copy.deepcopy(echorl_cfg)
    with open_dict(cfg):
        cfg.actor_rollout_ref.rollout.n = G
        cfg.actor_rollout_ref.actor.ppo_mini_batch_size = 2  # 8 rows per mini-batch
        cfg.transfer_queue.backend.SimpleStorage.num_data_storage_units = 1
    data, is_padding, padded, uids = make_batch(seed=7)
    B = len(uids)
    keys = [f"{u}_{i}_0" for i, u in enumerate(uids)]  # verl's {uid}_{session_id}_{index}
    tags = [{"is_padding": p} for p in is_padding]
    tq.init(cfg.transfer_queue)
    try:
        stored = data.exclude("advantages")
        stored["old_log_probs"] = torch.nested.as_nested_tensor(
            [torch.zeros(n) for n in data["responses"].offsets().diff().tolist()], layout=torch.jagged)
        batch = tq.kv_batch_put(keys=keys, partition_id="train", fields=stored, tags=tags)
        from echorl.verl.methods import VerlMethod
        from echorl.verl.methods import configure as configure_method

        trainer = EchoPPOTrainerSync.__new__(EchoPPOTrainerSync)  # no workers: only the driver-side step
        trainer.config, trainer.echo_cfg, trainer._echo_boundary_resolved, trainer.global_steps = cfg, EchoConfig(boundary="fixed"), True, 1
        trainer.method = VerlMethod(configure_method(cfg))  # what __init__ sets: plain GRPO, no LUFFY/UFT rows
        metrics: dict = {}
        out_meta = trainer._compute_advantage(batch, metrics)
        assert {"advantages", "echo_mask", "echo_denom"} <= set(out_meta.fields)
        got = tq.kv_batch_get(keys=out_meta.keys, partition_id="train",
                              select_fields=["echo_mask", "echo_denom", "advantages"])
        expected, _ = echo_stage_fields(data, is_padding, EchoConfig(boundary="fixed"), num_minibatches=3)  # ceil(18 / 8)
        mask = torch.nested.to_padded_tensor(got["echo_mask"], False)
        assert torch.equal(mask, torch.nested.to_padded_tensor(expected["echo_mask"], False))
        assert mask[:4].any() and not mask[16:].any()
        assert torch.equal(got["echo_denom"].float(), expected["echo_denom"])
        torch.testing.assert_close(torch.nested.to_padded_tensor(got["advantages"], 0.0), padded["advantages"])
        assert metrics["echo/num_minibatches"] == 3.0 and metrics["echo/clips"] > 0
        assert len(out_meta) == B and [t.get("is_padding") for t in out_meta.tags] == is_padding
    finally:
        tq.close()
