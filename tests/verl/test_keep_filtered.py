"""``echorl.keep_filtered=true`` on verl (echorl/verl/keep_filtered.py).

* the replay buffer on a real TransferQueue: which groups become RL groups, which are held for the
  EchoRL term, that held groups are counted as evictions once (the buffer re-reads TransferQueue on
  every poll) and the cap;
* the update layout: every (rank, mini-batch) slot holds DAPO's RL rows plus its kept rows;
* the RL gradient of every mini-batch with verl's real ``ppo_loss`` equals DAPO's (no kept rows)
  once the kept rows' masks are zeroed, and differs when they are not; the EchoRL term does reach
  the kept rows;
* the trainer's advantage stage on a real TransferQueue: for every estimator verl's V1 stage runs,
  the RL rows' advantages and RL gradient with kept rows in the batch equal DAPO's without them
  (with the kept rows inside verl's estimator, reinforce_plus_plus, reinforce_plus_plus_baseline
  and gpg differed).
"""

from __future__ import annotations

import copy

import pytest
import torch
import transfer_queue as tq
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from verl.workers.utils.losses import ppo_loss

from echorl import EchoConfig
from echorl.filtering import rl_response_mask
from echorl.loss import EchoLoss
from echorl.verl.fields import echo_stage_fields
from echorl.verl.keep_filtered import KEPT_TAG, KeepFilteredReplayBuffer, is_kept, kept_layout

N = 4  # rollouts per group


def _nested(rows):
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


# ---------------------------------------------------------------------------- replay buffer (real TQ)
def _put_group(uid: str, scores: list[float], global_steps: int = 1) -> None:
    """One finished group as verl's agent loop leaves it: the prompt key, then its trajectories."""
    tq.kv_batch_put(keys=[uid], partition_id="train",
                    tags=[{"is_prompt": True, "status": "finished", "global_steps": global_steps}])
    keys = [f"{uid}_0_{i}" for i in range(len(scores))]
    rm = [torch.tensor([0.0, 0.0, s]) for s in scores]
    fields = tu.get_tensordict({"rm_scores": _nested(rm), "responses": _nested([torch.arange(3)] * len(scores))})
    tags = [{"status": "success", "prompt_len": 2, "response_len": 3, "seq_len": 5, "global_steps": global_steps}
            for _ in scores]
    tq.kv_batch_put(keys=keys, partition_id="train", fields=fields, tags=tags)


def _buffer(cls, refill, **extra):
    return cls(trainer_mode="sync", trainer_config={}, max_off_policy_threshold=None, max_off_policy_strategy="drop",
               sampler_kwargs={}, poll_interval=0.0, refill_fn=refill, filter_groups_metric="reward",
               train_batch_size=2, gen_batch_size=1, max_inflight_gen_batches=1, **extra)


def _clear_train() -> None:
    keys = list((tq.kv_list() or {}).get("train", {}))
    if keys:
        tq.kv_clear(keys=keys, partition_id="train")


def _stored_uids() -> set[str]:
    listing = tq.kv_list() or {}
    return {k.split("_")[0] for k in listing.get("train", {})}


def test_buffer_holds_dropped_all_success_groups_counts_them_once_and_caps_them(transfer_queue):
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

    try:
        for cls, extra in ((ReplayBuffer, {}), (KeepFilteredReplayBuffer, {"success_threshold": 1.0,
                                                                             "max_kept_groups": 2})):
            refills: list[int] = []

            def refill(k: int, refills=refills) -> int:  # the refilled prompts finish at once, as mixed groups
                for i in range(k):
                    _put_group(f"fresh{len(refills)}x{i}", [1.0, 0.0, 0.0, 1.0], global_steps=2)
                refills.append(k)
                return k

            _put_group("mixed", [1.0, 0.0, 1.0, 0.0], global_steps=0)
            _put_group("succA", [1.0] * N)
            _put_group("fail", [0.0] * N)
            _put_group("succB", [1.0] * N)
            _put_group("succC", [1.0] * N)
            buf = _buffer(cls, refill, **extra)
            batch, metrics = buf.sample(global_steps=1, partition_id="train", batch_size=2)
            uids = [k.split("_")[0] for k in batch.keys]
            rl = {u for u, t in zip(uids, batch.tags) if not is_kept(t)}
            kept = {u for u, t in zip(uids, batch.tags) if is_kept(t)}
            # the four zero-variance groups are evicted and counted once, over two polls; refill 2 x 4
            # credits, bounded by max_inflight_gen_batches * train_batch_size = 2 prompts
            assert metrics["training/filter_groups/evicted_samples"] == 4
            assert refills == [2]
            # poll 1: one sampleable group (mixed); poll 2: mixed + the two refilled ones, oldest first
            assert len(rl) == 2 and "mixed" in rl and rl <= {"mixed", "fresh0x0", "fresh0x1"}
            assert len(batch.keys) == N * (len(rl) + len(kept))
            stored = _stored_uids()
            if cls is ReplayBuffer:
                assert kept == set() and "training/filter_groups/kept_groups" not in metrics
                assert not stored & {"succA", "succB", "succC", "fail"}
            else:
                assert kept == {"succA", "succB"}  # all-success only, capped at 2 (sorted)
                assert metrics["training/filter_groups/kept_groups"] == 2
                assert metrics["training/filter_groups/kept_surplus_groups"] == 1
                assert {"succA", "succB"} <= stored and not stored & {"succC", "fail"}
                assert sum(bool(t.get(KEPT_TAG)) for t in batch.tags) == 2 * N
                # the tag is in TransferQueue too (verl continues with handles whose tags are the stored ones)
                listing = tq.kv_list()["train"]
                for key, tag in zip(batch.keys, batch.tags):
                    assert bool(listing[key].get(KEPT_TAG)) == is_kept(tag) and listing[key]["seq_len"] == 5
            _clear_train()
    finally:
        _clear_train()


def test_from_buffer_keeps_verls_arguments():
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

    base = _buffer(ReplayBuffer, lambda k: k)
    kept = KeepFilteredReplayBuffer.from_buffer(base, success_threshold=0.5, max_kept_groups=3)
    for name in ("trainer_mode", "filter_groups_metric", "train_batch_size", "gen_batch_size", "refill_fn",
                 "max_inflight_gen_batches", "poll_interval"):
        assert getattr(kept, name) == getattr(base, name), name
    assert (kept.success_threshold, kept.max_kept_groups) == (0.5, 3)
    with pytest.raises(ValueError, match="filter_groups.enable"):  # no DAPO filtering: nothing to keep
        KeepFilteredReplayBuffer(trainer_mode="sync", trainer_config={}, max_off_policy_threshold=None,
                                 max_off_policy_strategy="drop", sampler_kwargs={}, refill_fn=lambda k: k,
                                 success_threshold=1.0, max_kept_groups=1)


# ---------------------------------------------------------------------------- layout
def test_kept_layout_by_hand():
    # 8 RL rows, mini-batches of 4 over 2 ranks (M = 2), 4 kept rows: one per (rank, mini-batch)
    order, mbs = kept_layout(8, [8, 9, 10, 11], mini=4, dp=2)
    assert order == [0, 1, 8, 2, 3, 9, 4, 5, 10, 6, 7, 11]
    assert mbs == 6


def _worker_minibatches(order: list[int], mbs: int, dp: int) -> list[set[int]]:
    """Global mini-batches as verl cuts them: contiguous rank shards, then chunks of mbs / dp."""
    per_rank, chunk = len(order) // dp, mbs // dp
    shards = [order[r * per_rank:(r + 1) * per_rank] for r in range(dp)]
    M = per_rank // chunk
    return [set().union(*(s[j * chunk:(j + 1) * chunk] for s in shards)) for j in range(M)]


@pytest.mark.parametrize("num_rl,mini,dp,kept", [(8, 4, 2, 4), (16, 8, 2, 8), (12, 4, 1, 6), (16, 8, 4, 16)])
def test_kept_layout_keeps_dapos_rl_minibatches(num_rl, mini, dp, kept):
    positions = list(range(num_rl, num_rl + kept))
    order, mbs = kept_layout(num_rl, positions, mini, dp)
    assert sorted(order) == list(range(num_rl + kept))
    with_kept = _worker_minibatches(order, mbs, dp)
    without = _worker_minibatches(list(range(num_rl)), mini, dp)
    assert [m & set(range(num_rl)) for m in with_kept] == without
    assert [len(m - set(range(num_rl))) for m in with_kept] == [kept // (num_rl // mini)] * (num_rl // mini)


def test_kept_layout_refuses_uneven_input():
    with pytest.raises(ValueError, match="pad them first"):
        kept_layout(8, [8, 9, 10], mini=4, dp=2)
    with pytest.raises(ValueError, match="multiple of mini"):
        kept_layout(6, [6, 7], mini=4, dp=2)
    with pytest.raises(ValueError, match="multiple of dp"):
        kept_layout(8, [8, 9], mini=3, dp=2)


# ---------------------------------------------------------------------------- RL gradient with verl's ppo_loss
def _rows(num: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(num):
        p, r = int(torch.randint(2, 5, (1,), generator=g)), int(torch.randint(3, 9, (1,), generator=g))
        theta = torch.randn(p + r, generator=g)
        lp = torch.nn.functional.logsigmoid(theta[p - 1:p - 1 + r])
        rows.append({
            "theta": theta, "prompts": torch.randint(0, 50, (p,), generator=g),
            "responses": torch.randint(0, 50, (r,), generator=g), "mask": torch.ones(r, dtype=torch.int64),
            "old": lp + 0.3 * torch.randn(r, generator=g), "adv": torch.randn(1, generator=g).expand(r).clone(),
            "echo": torch.arange(r) < max(1, r // 2),
        })
    return rows


def _minibatch_grads(rows, members: list[int], loss_fn, dp: int, global_batch_size: int, masks) -> dict[int, torch.Tensor]:
    """One optimizer step's gradient on each member row's logits: ``dp`` contiguous rank shards,
    one micro-batch each, losses backpropagated unscaled and averaged over ranks (FSDP)."""
    leaves = {i: rows[i]["theta"].clone().requires_grad_(True) for i in members}
    batch_num_tokens = int(sum(int(masks[i].sum()) for i in members))
    shard = len(members) // dp
    for r in range(dp):
        idx = members[r * shard:(r + 1) * shard]
        data = TensorDict({
            "prompts": _nested([rows[i]["prompts"] for i in idx]),
            "responses": _nested([rows[i]["responses"] for i in idx]),
            "response_mask": _nested([masks[i] for i in idx]), "loss_mask": _nested([masks[i] for i in idx]),
            "old_log_probs": _nested([rows[i]["old"] for i in idx]),
            "advantages": _nested([rows[i]["adv"] for i in idx]),
            "echo_mask": _nested([rows[i]["echo"] for i in idx]),
            "echo_denom": torch.full((len(idx),), 5.0),
        }, batch_size=[len(idx)])
        tu.assign_non_tensor(data, dp_size=dp, batch_num_tokens=batch_num_tokens, global_batch_size=global_batch_size)
        packed = torch.cat([torch.nn.functional.logsigmoid(leaves[i]) for i in idx])
        offsets = torch.tensor([0] + [len(leaves[i]) for i in idx]).cumsum(0)
        loss, _ = loss_fn(model_output={"log_probs": torch.nested.nested_tensor_from_jagged(packed, offsets)},
                          data=data, dp_group=None)
        (loss / dp).backward()
    return {i: leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for i, leaf in leaves.items()}


@pytest.mark.parametrize("loss_agg_mode", ["token-mean", "seq-mean-token-mean"])
def test_rl_gradient_with_kept_rows_equals_dapos(actor_config, loss_agg_mode):
    cfg = copy.deepcopy(actor_config)
    object.__setattr__(cfg, "loss_agg_mode", loss_agg_mode)
    num_rl, K, mini, dp = 8, 4, 4, 2
    rows = _rows(num_rl + K, seed=3)
    kept = torch.tensor([False] * num_rl + [True] * K)
    order, mbs = kept_layout(num_rl, list(range(num_rl, num_rl + K)), mini, dp)
    per_rank, chunk = len(order) // dp, mbs // dp

    def rl_loss(model_output, data, dp_group=None):
        return ppo_loss(cfg, model_output, data, dp_group)

    plain = [r["mask"] for r in rows]
    zeroed = [m * int(not bool(kept[i])) for i, m in enumerate(plain)]
    for j in range(num_rl // mini):
        dapo = [i for r in range(dp) for i in range(r * num_rl // dp + j * mini // dp, r * num_rl // dp + (j + 1) * mini // dp)]
        ours = [i for r in range(dp) for i in order[r * per_rank + j * chunk:r * per_rank + (j + 1) * chunk]]
        ref = _minibatch_grads(rows, dapo, rl_loss, dp, mini, plain)
        got = _minibatch_grads(rows, ours, rl_loss, dp, mini, zeroed)
        for i in dapo:
            torch.testing.assert_close(got[i], ref[i], rtol=1e-6, atol=1e-7)
        for i in set(ours) - set(dapo):
            assert torch.count_nonzero(got[i]) == 0
        # control: kept rows with their RL mask left on get an RL gradient, and under token-mean they
        # also change the RL rows' (through batch_num_tokens)
        leaky = _minibatch_grads(rows, ours, rl_loss, dp, mini, plain)
        assert all(torch.count_nonzero(leaky[i]) > 0 for i in set(ours) - set(dapo))
        if loss_agg_mode == "token-mean":
            assert not all(torch.allclose(leaky[i], ref[i]) for i in dapo)
        # the EchoRL term reaches the kept rows' clip tokens
        echo = EchoLoss(cfg, EchoConfig(coef=0.5, keep_filtered=True))
        with_echo = _minibatch_grads(rows, ours, echo, dp, mini, zeroed)
        for i in set(ours) - set(dapo):
            assert torch.count_nonzero(with_echo[i]) == int(rows[i]["echo"].sum())


def test_stage_zeroes_kept_rows_rl_masks_and_counts_their_clips():
    lens = [4, 3, 5, 4, 3, 4]
    uids = ["g0", "g0", "g1", "g1", "k", "k"]  # g0 mixed, g1 all-success, k kept (all-success)
    scores = [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    g = torch.Generator().manual_seed(0)
    data = TensorDict({
        "responses": _nested([torch.randint(0, 9, (n,), generator=g) for n in lens]),
        "response_mask": _nested([torch.ones(n, dtype=torch.int64) for n in lens]),
        "entropy": _nested([torch.rand(n, generator=g) for n in lens]),
        "rm_scores": _nested([torch.cat([torch.zeros(n - 1), torch.tensor([s])]) for n, s in zip(lens, scores)]),
        "advantages": _nested([torch.zeros(n) for n in lens]),
    }, batch_size=[6])
    data["uid"] = uids
    echo_only = [False, False, False, False, True, True]
    cfg = EchoConfig(keep_filtered=True, boundary="fixed", boundary_token_ids=(99,))
    fields, out = echo_stage_fields(data, None, cfg, echo_only=echo_only)
    mask = torch.nested.to_padded_tensor(fields["response_mask"], 0)
    expect = rl_response_mask(torch.nested.to_padded_tensor(data["response_mask"], 0), torch.tensor(echo_only))
    assert torch.equal(mask, expect) and int(mask[4:].sum()) == 0 and int(mask[:4].sum()) == sum(lens[:4])
    assert torch.equal(torch.nested.to_padded_tensor(fields["loss_mask"], 0), mask)
    echo_mask = torch.nested.to_padded_tensor(fields["echo_mask"], 0)
    assert bool(echo_mask[4:].any())  # the kept group gives its clip
    assert out.metrics["echo/kept_rows"] == 2.0
    assert out.metrics["echo/clips_from_kept"] == float(echo_mask[4:].any(dim=1).sum())
    assert out.metrics["echo/kept_clip_tokens"] == float(echo_mask[4:].sum())
    # without kept rows no mask is written back
    fields, _ = echo_stage_fields(data, None, cfg)
    assert "response_mask" not in fields.keys() and "loss_mask" not in fields.keys()


# ---------------------------------------------------------------------------- advantages (real TQ, verl's estimators)
# Every estimator echorl.keep_filtered allows (gae is refused: its critic would train on the kept rows)
# that verl's V1 advantage stage can run from the fields it fetches (remax needs reward_baselines,
# optimal_token_baseline / tir_optimal_token_baseline sum_pi_squared, gdpo per-component rewards: none
# of which the V1 stage reads, so they fail in verl with or without kept rows).
V1_ESTIMATORS = ["grpo", "grpo_vectorized", "grpo_passk", "rloo", "rloo_vectorized", "opo", "gpg",
                 "reinforce_plus_plus", "reinforce_plus_plus_baseline"]
RL_SCORES = {"g0": [1.0, 0.0, 1.0, 0.0], "g1": [1.0, 1.0, 1.0, 0.0], "g2": [0.0, 0.0, 1.0, 0.0], "g3": [1.0, 0.0, 0.0, 0.0]}
KEPT_SCORES = {"k0": [1.0] * N, "k1": [1.0] * N}  # all-success groups DAPO dropped


def _advantage_rows(seed: int = 5) -> dict[str, dict]:
    """key -> one trajectory's stored fields, RL groups then kept groups (verl's key layout)."""
    g = torch.Generator().manual_seed(seed)
    rows = {}
    for uid, scores in {**RL_SCORES, **KEPT_SCORES}.items():
        for i, s in enumerate(scores):
            n = int(torch.randint(3, 7, (1,), generator=g))
            rows[f"{uid}_{i}_0"] = {
                "uid": uid, "kept": uid in KEPT_SCORES, "responses": torch.randint(0, 9, (n,), generator=g),
                "response_mask": torch.ones(n, dtype=torch.int64), "entropy": torch.rand(n, generator=g),
                "rm_scores": torch.cat([torch.zeros(n - 1), torch.tensor([s])]),
                "old_log_probs": -torch.rand(n, generator=g), "theta": torch.randn(n + 2, generator=g),
            }
    return rows


def _stage_advantages(cfg, rows: dict[str, dict], keys: list[str], partition: str) -> tuple[dict, dict]:
    """EchoPPOTrainerSync._compute_advantage (verl's advantage stage, then the EchoRL stage) on a real
    TransferQueue for the rows ``keys`` in that order; returns ``key -> (advantages, response_mask)``
    as the actor update reads them, and the handle's fields."""
    from echorl.verl.methods import VerlMethod
    from echorl.verl.methods import configure as configure_method
    from echorl.verl.trainer import EchoPPOTrainerSync

    fields = {f: _nested([rows[k][f] for k in keys]) for f in ("responses", "response_mask", "entropy", "rm_scores",
                                                                "old_log_probs")}
    stored = tu.get_tensordict({**fields, "uid": [rows[k]["uid"] for k in keys]})
    tags = [{"is_padding": False, **({KEPT_TAG: True} if rows[k]["kept"] else {})} for k in keys]
    batch = tq.kv_batch_put(keys=keys, partition_id=partition, fields=stored, tags=tags)
    trainer = EchoPPOTrainerSync.__new__(EchoPPOTrainerSync)  # the driver-side step only (no workers)
    trainer.config, trainer._echo_boundary_resolved, trainer.global_steps = cfg, True, 1
    trainer.echo_cfg = EchoConfig(keep_filtered=True, boundary="fixed", boundary_token_ids=(0,))
    trainer.method = VerlMethod(configure_method(cfg))
    out = trainer._compute_advantage(batch, {})
    got = tq.kv_batch_get(keys=out.keys, partition_id=partition, select_fields=["advantages", "response_mask"])
    adv, mask = got["advantages"].unbind(), got["response_mask"].unbind()
    return {k: (adv[i], mask[i]) for i, k in enumerate(out.keys)}, set(out.fields)


@pytest.mark.parametrize("estimator", V1_ESTIMATORS)
def test_rl_advantages_and_gradient_with_kept_rows_equal_dapos(transfer_queue, echorl_cfg, estimator):
    """The RL rows' advantages, and the RL gradient of verl's ppo_loss, with the kept rows in the batch
    equal DAPO's without them, for every estimator: batch-level statistics (reinforce_plus_plus's
    whitening, gpg's count of non-zero scores) must not see the kept rows."""
    from omegaconf import open_dict
    from verl.utils.config import omega_conf_to_dataclass

    cfg = copy.deepcopy(echorl_cfg)
    with open_dict(cfg):
        cfg.algorithm.adv_estimator = estimator
        cfg.actor_rollout_ref.rollout.n = N
        cfg.actor_rollout_ref.actor.ppo_mini_batch_size = 2  # 8 RL rows per mini-batch
    rows = _advantage_rows()
    rl_keys = [k for k in rows if not rows[k]["kept"]]
    kept_keys = [k for k in rows if rows[k]["kept"]]
    mini, dp = 2 * N, 2
    order, mbs = kept_layout(len(rl_keys), list(range(len(rl_keys), len(rows))), mini, dp)
    ours_keys = [(rl_keys + kept_keys)[i] for i in order]  # the update's layout (_balance_batch)
    try:
        dapo, _ = _stage_advantages(cfg, rows, rl_keys, "dapo")
        ours, fields = _stage_advantages(cfg, rows, ours_keys, "keep")
        assert {"advantages", "echo_mask", "echo_denom"} <= fields
        for k in rl_keys:
            assert torch.equal(ours[k][0], dapo[k][0]), (k, ours[k][0], dapo[k][0])
            assert torch.equal(ours[k][1], dapo[k][1])
        for k in kept_keys:  # no RL gradient, and an advantage field for the update to read
            assert int(ours[k][1].sum()) == 0 and ours[k][0].shape == rows[k]["response_mask"].shape
        # the RL gradient of every mini-batch with verl's ppo_loss (the layout of test_rl_gradient_... above)
        actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)

        def rl_loss(model_output, data, dp_group=None):
            return ppo_loss(actor, model_output, data, dp_group)

        def loss_rows(src, keys):
            return [{"theta": rows[k]["theta"], "prompts": torch.ones(2, dtype=torch.long), "responses": rows[k]["responses"],
                     "old": rows[k]["old_log_probs"], "adv": src[k][0], "echo": torch.zeros_like(src[k][1], dtype=torch.bool)}
                    for k in keys]

        per_rank, chunk = len(order) // dp, mbs // dp
        ref_rows, our_rows = loss_rows(dapo, rl_keys), loss_rows(ours, ours_keys)
        for j in range(len(rl_keys) // mini):
            d = [i for r in range(dp) for i in range(r * len(rl_keys) // dp + j * mini // dp,
                                                     r * len(rl_keys) // dp + (j + 1) * mini // dp)]
            o = [r * per_rank + j * chunk + c for r in range(dp) for c in range(chunk)]
            ref = _minibatch_grads(ref_rows, d, rl_loss, dp, mini, [dapo[k][1] for k in rl_keys])
            got = _minibatch_grads(our_rows, o, rl_loss, dp, mini, [ours[k][1] for k in ours_keys])
            for i in d:
                torch.testing.assert_close(got[ours_keys.index(rl_keys[i])], ref[i], rtol=1e-6, atol=1e-7)
    finally:
        for part in ("dapo", "keep"):
            listed = list((tq.kv_list() or {}).get(part, {}))
            if listed:
                tq.kv_clear(keys=listed, partition_id=part)
