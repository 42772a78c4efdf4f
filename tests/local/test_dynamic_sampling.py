"""echorl/local/dynamic_sampling.py and the engine's DAPO path: dynamic sampling refills to the
batch size, and rows kept for the EchoRL term only (``echorl.keep_filtered``) leave the RL term of
the update exactly as DAPO's (real ``ppo_loss``, real tiny model)."""

from __future__ import annotations

import functools

import pytest
import torch
from engine_support import base_overrides, make_model

from echorl import EchoConfig
from echorl.filtering import FilterConfig, rl_response_mask
from echorl.local import load_config
from echorl.local.config import build_actor_config
from echorl.local.dynamic_sampling import Generation, concat_rollouts, dynamic_sample
from echorl.local.rollout import RolloutBatch
from echorl.local.update import actor_update
from echorl.logprobs import old_policy_pass


def _rollouts(prompt_lens, resp_lens, n, seed, pad_id=0):
    """A RolloutBatch of len(prompt_lens) groups x n rows (left-padded prompts, right-padded responses)."""
    g = torch.Generator().manual_seed(seed)
    G = len(prompt_lens)
    P, L = max(prompt_lens), max(resp_lens)
    B = G * n
    prompts = torch.full((B, P), pad_id)
    pmask = torch.zeros(B, P, dtype=torch.long)
    responses = torch.full((B, L), pad_id)
    rmask = torch.zeros(B, L, dtype=torch.long)
    for i in range(B):
        p, r = prompt_lens[i // n], resp_lens[i % len(resp_lens)]
        prompts[i, P - p:] = torch.randint(3, 30, (p,), generator=g)
        pmask[i, P - p:] = 1
        responses[i, :r] = torch.randint(3, 30, (r,), generator=g)
        rmask[i, :r] = 1
    return RolloutBatch(prompts=prompts, responses=responses, input_ids=torch.cat([prompts, responses], 1),
                        attention_mask=torch.cat([pmask, rmask], 1), response_mask=rmask,
                        group_index=torch.arange(G).repeat_interleave(n))


def test_concat_rollouts_pads_and_renumbers():
    a = _rollouts([2, 3], [4, 2], n=2, seed=0)
    b = _rollouts([5], [6, 1], n=2, seed=1)
    keep_a = torch.tensor([False, False, True, True])
    rb, origin = concat_rollouts([(a, keep_a), (b, torch.ones(2, dtype=torch.bool))], pad_id=0)
    assert rb.prompts.shape == (4, 5) and rb.responses.shape == (4, 6)
    assert rb.group_index.tolist() == [0, 0, 1, 1] and origin.tolist() == [[0, 1], [1, 0]]
    # each row keeps its own tokens: prompts right-aligned, responses left-aligned
    assert torch.equal(rb.prompts[0, 2:], a.prompts[2]) and torch.equal(rb.responses[0, :4], a.responses[2])
    assert torch.equal(rb.input_ids, torch.cat([rb.prompts, rb.responses], 1))
    assert rb.attention_mask.sum().item() == a.attention_mask[2:].sum().item() + b.attention_mask.sum().item()


def _gen(scores, seed):
    G = len(scores)
    rb = _rollouts([3] * G, [4, 5], n=2, seed=seed)
    return Generation(rows=[{"id": (seed, j)} for j in range(G)], rb=rb,
                      scores=torch.tensor([s for pair in scores for s in pair]), stats={"timeouts": seed})


def test_dynamic_sample_refills_and_keeps_dropped_all_success_groups():
    gens = iter([_gen([(1, 1), (1, 0)], 1), _gen([(0, 1), (1, 1), (0, 1)], 2)])
    first = _gen([(1, 1), (0, 0), (1, 0)], 0)
    filt = FilterConfig(enable=True, metric="acc", max_num_gen_batches=5)
    gen, echo_only, m = dynamic_sample(first, lambda: next(gens), filt, EchoConfig(keep_filtered=True), 3, pad_id=0)
    # batch 0: kept (0,0), dropped (0,1), RL (0,2); batch 1: kept (1,0), RL (1,1); batch 2: RL (2,0),
    # kept (2,1), RL (2,2) is surplus: 4 RL groups >= 3 after 3 batches
    assert [r["id"] for r in gen.rows] == [(0, 0), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert echo_only.tolist() == [True, True, False, False, True, True, False, False, False, False, True, True]
    assert gen.scores.tolist() == [1, 1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 1]
    assert gen.rb.group_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert m == {"filter_groups/num_gen_batches": 3.0, "filter_groups/rl_groups": 3.0,
                 "filter_groups/kept_groups": 3.0, "filter_groups/discarded_groups": 2.0}
    assert gen.stats == {"timeouts": 3}
    # without keep_filtered the dropped groups leave; the cap stops the refill
    gens = iter([_gen([(1, 1), (1, 0)], 1)])
    filt2 = FilterConfig(enable=True, metric="acc", max_num_gen_batches=2)
    with pytest.warns(RuntimeWarning, match="2 of 3 groups after max_num_gen_batches=2"):
        gen, echo_only, m = dynamic_sample(first, lambda: next(gens), filt2, EchoConfig(), 3, pad_id=0)
    assert [r["id"] for r in gen.rows] == [(0, 2), (1, 1)] and not echo_only.any()
    with pytest.raises(RuntimeError, match="no group with non-zero variance"):
        dynamic_sample(_gen([(1, 1)], 0), lambda: _gen([(0, 0)], 1), filt2, EchoConfig(), 3, pad_id=0)


# ---------------------------------------------------------------------------- RL term unchanged
def _update(model, cfg, batch, loss_fn):
    actor_cfg = build_actor_config(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    actor_update(model, opt, sched, loss_fn, batch, actor_cfg, n=2, temperature=1.0)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_kept_rows_leave_the_rl_update_exactly_dapos(tmp_path, agg):
    """RL rows alone vs RL rows + kept rows (zero RL mask, EchoRL term off): the same update with
    verl's real ppo_loss over 2 mini-batches; with the EchoRL term on, the kept clips do count."""
    from verl.workers.utils.losses import ppo_loss

    from echorl.loss import EchoLoss

    torch.manual_seed(0)
    cfg = load_config(base_overrides(tmp_path, **{"actor_rollout_ref.actor.loss_agg_mode": agg,
                                                 "actor_rollout_ref.actor.ppo_mini_batch_size": 2,
                                                 "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 2,
                                                 "actor_rollout_ref.actor.optim.clip_grad": 1e9}))
    rl = _rollouts([3, 4, 2, 5], [5, 3, 6], n=2, seed=3)  # 4 groups x 2 = 8 RL rows: 2 mini-batches
    kept = _rollouts([4, 3], [6, 2], n=2, seed=4)
    rb, _ = concat_rollouts([(rl, torch.ones(8, dtype=torch.bool)), (kept, torch.ones(4, dtype=torch.bool))], 0)
    echo_only = torch.tensor([False] * 8 + [True] * 4)
    model, _ = make_model(seed=1)
    old_lp, _ = old_policy_pass(model, rb.input_ids, rb.attention_mask, rb.responses, 1.0, 16)
    old_lp = old_lp + 0.2 * torch.randn(old_lp.shape, generator=torch.Generator().manual_seed(5))
    adv = torch.randn(12, 1, generator=torch.Generator().manual_seed(6)).expand(12, rb.responses.shape[1]).clone()
    adv[8:] = 0.0
    echo_mask = rb.response_mask.bool() & echo_only[:, None] & (torch.arange(rb.responses.shape[1]) < 2)
    full = {"prompts": rb.prompts, "responses": rb.responses, "input_ids": rb.input_ids,
            "attention_mask": rb.attention_mask, "response_mask": rl_response_mask(rb.response_mask, echo_only),
            "old_log_probs": old_lp, "advantages": adv * rb.response_mask, "echo_mask": echo_mask,
            "echo_denom": torch.full((12,), 4.0), "echo_only": echo_only}
    only_rl = {k: v[:8] for k, v in full.items() if k != "echo_only"}
    actor_cfg = build_actor_config(cfg)
    ppo = functools.partial(ppo_loss, actor_cfg)
    w_rl = _update(make_model(seed=1)[0], cfg, only_rl, ppo)
    w_kept = _update(make_model(seed=1)[0], cfg, full, ppo)
    w0 = make_model(seed=1)[0].state_dict()
    assert any(not torch.equal(w_rl[k], w0[k]) for k in w0)  # the RL update is not vacuous
    for k in w0:
        torch.testing.assert_close(w_kept[k], w_rl[k], rtol=1e-5, atol=1e-7)
    w_echo = _update(make_model(seed=1)[0], cfg, full, EchoLoss(actor_cfg, EchoConfig(coef=0.5)))
    assert max(float((w_echo[k] - w_rl[k]).abs().max()) for k in w0) > 1e-4


@pytest.mark.slow
def test_engine_dapo_with_kept_groups_runs(tmp_path):
    """A real engine run with dynamic sampling and keep_filtered: full RL batches, kept rows echoed."""
    from echorl.local.trainer import LocalTrainer

    model, tok = make_model()
    cfg = load_config(base_overrides(tmp_path, steps=2, **{
        "reward.score_fn": "local_scorers:len_mod4", "algorithm.filter_groups.enable": True,
        "algorithm.filter_groups.max_num_gen_batches": 6, "echorl.keep_filtered": True, "echorl.coef": 0.5}))
    tr = LocalTrainer(cfg, model=model, tokenizer=tok)
    try:
        ms = [tr.step() for _ in range(2)]
    finally:
        tr.pool.close()
    for m in ms:
        assert m["filter_groups/rl_groups"] == 4.0  # refilled to data.train_batch_size
        assert m["echo/kept_rows"] == 4 * m["filter_groups/kept_groups"]
        assert m["echo/clips"] == m["echo/clips_from_all_success"] + m["echo/clips_from_mixed"]
        assert m["echo/clips"] >= m["echo/clips_from_kept"]
    assert sum(m["echo/clips_from_kept"] for m in ms) > 0 and sum(m["echo/kept_clip_tokens"] for m in ms) > 0
