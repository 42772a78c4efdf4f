"""LUFFY rules by hand: expert traces, mixed groups, the shaped off-policy term and its gradient,
unclipped off-policy tokens, and EchoRL's on-policy-only group rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from methods_support import micro_batch

from echorl.core.clips import select_echo_clips
from echorl.core.config import EchoConfig
from echorl.local.methods import LocalMethod, assemble_batch
from echorl.methods.config import MethodConfig
from echorl.methods.luffy import (
    MethodLoss,
    expert_text,
    expert_trace_ids,
    off_policy_loss_mat,
    off_policy_rows,
    rows_zeroed,
)


def test_expert_text_sources():
    assert expert_text({"target": [{"role": "assistant", "content": "R1 says 4"}, {"content": "x"}]}) == "R1 says 4"
    assert expert_text({"target": np.array([{"content": "arr"}], dtype=object)}) == "arr"
    assert expert_text({"target": "plain"}) == "plain"
    assert expert_text({"solution": "1+1=2\nAnswer: 2"}) == "1+1=2\nAnswer: 2"
    assert expert_text({"target": None, "solution": "s"}) == "s"
    assert expert_text({"prompt": "q"}) is None
    assert expert_text({"target": [], "solution": "  "}) is None


def test_expert_trace_ids_truncation_and_eos():
    from echorl.models.char_tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    ids = tok("12+3", add_special_tokens=False)["input_ids"]
    assert len(ids) == 4
    eos = tok.eos_token_id
    assert expert_trace_ids("12+3", tok, max_target_length=8192, eos_id=eos, response_length=16) == ids + [eos]
    assert expert_trace_ids("12+3", tok, max_target_length=3, eos_id=eos, response_length=16) == ids[:3] + [eos]
    assert expert_trace_ids("12+3", tok, max_target_length=8192, eos_id=eos, response_length=2) == ids[:2]


def test_off_policy_rows_are_the_first_of_groups_with_a_trace():
    g = [0, 0, 0, 0, 1, 1, 1, 1]
    assert off_policy_rows(g, [True, False], 4, 1).tolist() == [True] + [False] * 7
    assert off_policy_rows(g, [True, True], 4, 2).tolist() == [True, True, False, False] * 2
    assert not off_policy_rows(g, [False, False], 4, 1).any()


def test_mixed_group_advantages_by_hand():
    """verl's grpo over the whole mixed group: the expert's reward moves the group mean."""
    from echorl.local.config import build_algo_config, load_config
    from echorl.local.update import compute_advantages, token_level_rewards

    scores = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0])  # row 0 and 4: expert traces
    mask = torch.ones(8, 3, dtype=torch.long)
    uids = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    for norm, want in ((False, [0.5, -0.5, 0.5, -0.5, 0.75, -0.25, -0.25, -0.25]),
                       # std (unbiased) of [1,0,1,0] = sqrt(1/3); of [1,0,0,0] = 0.5
                       (True, [0.5 * math.sqrt(3), -0.5 * math.sqrt(3)] * 2 + [1.5, -0.5, -0.5, -0.5])):
        algo = build_algo_config(load_config([f"algorithm.norm_adv_by_std_in_grpo={str(norm).lower()}"]))
        adv = compute_advantages("grpo", token_level_rewards(scores, mask), mask, uids, algo)
        assert torch.allclose(adv[:, 0], torch.tensor(want), atol=1e-5)
        assert torch.equal(adv[:, 0:1].expand(8, 3), adv)


def test_shaped_term_and_its_gradient_by_hand():
    """f(p) = p / (p + 0.1); d/dlogp (-A f(exp(logp))) = -A * 0.1 p / (p + 0.1)^2."""
    for p, a in ((0.3, 2.0), (0.01, 1.0), (0.9, -1.0)):
        logp = torch.tensor([[math.log(p)]], dtype=torch.float64, requires_grad=True)
        loss = off_policy_loss_mat(logp, torch.tensor([[a]], dtype=torch.float64), 0.1).sum()
        loss.backward()
        assert loss.item() == pytest.approx(-a * p / (p + 0.1), rel=1e-12)
        assert logp.grad.item() == pytest.approx(-a * 0.1 * p / (p + 0.1) ** 2, rel=1e-12)
    # the three numbers above by hand: f(0.3) = 0.75, gradient factor 0.1 * 0.3 / 0.16 = 0.1875
    assert -2.0 * 0.1 * 0.3 / 0.4 ** 2 == pytest.approx(-0.375)


def test_off_policy_tokens_are_not_clipped(token_mean_actor):
    """Ratio 5 with A > 0 and method.luffy.on_policy_clip=true: the on-policy row is clipped (zero
    gradient); the off-policy row is not."""
    logp = torch.full((2, 3), math.log(0.5), requires_grad=True)
    old = torch.full((2, 3), math.log(0.1))
    adv = torch.ones(2, 3)
    mask = torch.ones(2, 3, dtype=torch.long)
    out, data = micro_batch(logp, old, adv, mask, off_policy=torch.tensor([False, True]))
    clipped = MethodConfig.from_dict({"name": "luffy", "luffy": {"on_policy_clip": True}})
    loss_fn = MethodLoss(token_mean_actor, EchoConfig(enable=False), clipped)
    loss, metrics = loss_fn(out, data)
    # on row: max(-A r, -A clip(r, 0.8, 1.2)) = -1.2 per token; off row: -0.5/0.6 per token; / 6 tokens
    assert loss.item() == pytest.approx((3 * -1.2 + 3 * -0.5 / 0.6) / 6, rel=1e-6)
    loss.backward()
    assert torch.equal(logp.grad[0], torch.zeros(3))
    assert torch.allclose(logp.grad[1], torch.full((3,), -(0.1 * 0.5 / 0.6 ** 2) / 6), rtol=1e-6)
    assert float(metrics["luffy/off_pg_loss"].values[0]) == pytest.approx(3 * -0.5 / 0.6 / 6, rel=1e-6)


@pytest.mark.parametrize("a", [1.0, -1.0])
def test_on_policy_tokens_unclipped_by_default(token_mean_actor, a):
    """The authors' loss_remove_clip=True: ratio 5 gives -A * 5 per on-policy token (vanilla PPO would clip
    it to -1.2 for A = 1 and, with dual clip c = 3, to +3 for A = -1) and gradient -A * 5 per token."""
    logp = torch.full((2, 3), math.log(0.5), requires_grad=True)
    old = torch.full((2, 3), math.log(0.1))
    out, data = micro_batch(logp, old, torch.full((2, 3), a), torch.ones(2, 3, dtype=torch.long),
                            off_policy=torch.tensor([False, True]))
    loss, metrics = MethodLoss(token_mean_actor, EchoConfig(enable=False), MethodConfig(name="luffy"))(out, data)
    # on row: -A * 5 per token; off row: -A * 0.5 / 0.6 per token; token-mean over 6 tokens
    assert loss.item() == pytest.approx((3 * -a * 5.0 + 3 * -a * 0.5 / 0.6) / 6, rel=1e-6)
    loss.backward()
    assert torch.allclose(logp.grad[0], torch.full((3,), -a * 5.0 / 6), rtol=1e-6)
    assert torch.allclose(logp.grad[1], torch.full((3,), -a * (0.1 * 0.5 / 0.6 ** 2) / 6), rtol=1e-6)
    assert metrics["actor/pg_clipfrac"].values == [0.0]
    assert metrics["actor/ppo_kl"].values[0] == pytest.approx(-math.log(5.0), rel=1e-6)  # over the on-policy row


def test_unclipped_refuses_other_policy_losses():
    from methods_support import actor_config

    gspo = actor_config("actor_rollout_ref.actor.policy_loss.loss_mode=gspo")
    with pytest.raises(ValueError, match=r"method\.luffy\.on_policy_clip.*loss_mode='gspo'"):
        MethodLoss(gspo, EchoConfig(enable=False), MethodConfig(name="luffy"))
    keep = MethodConfig.from_dict({"name": "luffy", "luffy": {"on_policy_clip": True}})
    assert MethodLoss(gspo, EchoConfig(enable=False), keep).actor_config.policy_loss.loss_mode == "gspo"


def test_luffy_metrics_aggregate_over_ranks_with_different_expert_micro_batches(token_mean_actor):
    """Two data-parallel ranks, two micro-batches each; rank 1's first micro-batch holds no expert row.
    verl's Metric.aggregate_dp needs every key on every micro-batch of every rank; the aggregated
    values are the mini-batch totals by hand."""
    from verl.utils import tensordict_utils as tu
    from verl.utils.metric import Metric

    from echorl.methods.luffy import off_prob_metrics

    # (expert prob, on-policy prob) per micro-batch, 3 response tokens per row; None: no expert row
    plan = [[(0.5, 0.3), (0.25, 0.3)], [(None, 0.3), (0.8, 0.3)]]
    last_masked = (1, 1)  # rank 1, micro-batch 1: the expert row's last token is padding
    n_tokens = 23  # 8 rows x 3 tokens - 1
    loss_fn = MethodLoss(token_mean_actor, EchoConfig(enable=False), MethodConfig(name="luffy"))
    per_rank = []
    for r, mbs in enumerate(plan):
        acc: dict[str, Metric] = {}
        for k, (pe, po) in enumerate(mbs):
            probs = torch.tensor([[pe if pe is not None else po] * 3, [po] * 3])
            mask = torch.ones(2, 3, dtype=torch.long)
            if (r, k) == last_masked:
                mask[0, 2] = 0
            out, data = micro_batch(probs.log(), probs.log(), torch.ones(2, 3), mask,
                                    off_policy=torch.tensor([pe is not None, False]))
            tu.assign_non_tensor(data, dp_size=2, batch_num_tokens=n_tokens, global_batch_size=8)
            _, metrics = loss_fn(out, data)
            for key, m in metrics.items():
                if isinstance(m, Metric):
                    acc.setdefault(key, m.init_list()).append(m)
        per_rank.append(acc)
    assert per_rank[0].keys() == per_rank[1].keys()
    agg = {key: float(Metric.aggregate_dp([per_rank[0][key], per_rank[1][key]])) for key in per_rank[0]}
    assert agg["luffy/off_prob_sum"] == pytest.approx(3 * 0.5 + 3 * 0.25 + 2 * 0.8, rel=1e-6)
    assert agg["luffy/off_tokens"] == 8.0
    assert off_prob_metrics(agg)["luffy/off_prob"] == pytest.approx(3.85 / 8, rel=1e-6)
    f = lambda p: p / (p + 0.1)  # noqa: E731
    assert agg["luffy/off_pg_loss"] == pytest.approx(-(3 * f(0.5) + 3 * f(0.25) + 2 * f(0.8)) / n_tokens, rel=1e-6)
    assert off_prob_metrics({"luffy/off_prob_sum": 0.0, "luffy/off_tokens": 0.0}) == {}
    # the hosts read verl's actor/-prefixed names
    assert off_prob_metrics({"actor/luffy/off_prob_sum": 3.85, "actor/luffy/off_tokens": 8.0}, prefix="actor/") == {
        "actor/luffy/off_prob": pytest.approx(3.85 / 8)}


def test_no_off_policy_rows_is_ppo_loss_bit_for_bit(token_mean_actor):
    from verl.workers.utils.losses import ppo_loss

    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(3, 5, generator=g)).requires_grad_(True)
    old = logp.detach() + 0.2 * torch.randn(3, 5, generator=g)
    adv = torch.randn(3, 1, generator=g).expand(3, 5).clone()
    mask = torch.ones(3, 5, dtype=torch.long)
    out, data = micro_batch(logp, old, adv, mask, off_policy=torch.zeros(3, dtype=torch.bool))
    clipped = MethodConfig.from_dict({"name": "luffy", "luffy": {"on_policy_clip": True}})
    a, _ = MethodLoss(token_mean_actor, EchoConfig(enable=False), clipped)(out, data)
    a.backward()
    ga = logp.grad.clone()
    logp.grad = None
    out, data = micro_batch(logp, old, adv, mask)
    b, _ = ppo_loss(token_mean_actor, out, data)
    b.backward()
    assert torch.equal(a, b) and torch.equal(ga, logp.grad)


def test_rows_zeroed_dense_and_nested():
    m = torch.ones(3, 4, dtype=torch.long)
    assert rows_zeroed(m, torch.tensor([False, True, False])).sum(1).tolist() == [4, 0, 4]
    nested = torch.nested.as_nested_tensor([torch.ones(2, dtype=torch.long), torch.ones(3, dtype=torch.long)],
                                           layout=torch.jagged)
    out = rows_zeroed(nested, torch.tensor([True, False]))
    assert out.values().tolist() == [0, 0, 1, 1, 1]


def _fake_rollouts(n_groups: int, n: int, resp_len: int = 4):
    B = n_groups * n
    prompts = [[5, 6]] * n_groups
    resps = [[7, 9] + [7] * (resp_len - 2) for _ in range(B)]
    return prompts, assemble_batch([prompts[i // n] for i in range(B)], resps, [[1] * resp_len] * B, 0,
                                   torch.arange(n_groups).repeat_interleave(n))


def test_local_expert_rows_replace_the_first_rollout_of_groups_with_a_trace():
    from echorl.models.char_tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    prompts, rb = _fake_rollouts(2, 4)
    method = LocalMethod(MethodConfig.from_dict({"name": "luffy"}), tok, eos_id=tok.eos_token_id, pad_id=0, n=4,
                         max_response_length=16)
    rows = [{"solution": "1+2=3\nAnswer: 3"}, {"prompt": "no trace"}]
    out = method.after_rollout(rb, rows, prompts)
    trace = tok("1+2=3\nAnswer: 3", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert out.responses[0, :len(trace)].tolist() == trace and out.response_mask[0].sum() == len(trace)
    for i in range(1, 8):  # every other row is the policy's own rollout, unchanged
        assert out.responses[i, :4].tolist() == [7, 9, 7, 7] and int(out.response_mask[i].sum()) == 4
    assert method.batch_fields(out, 1)["off_policy"].tolist() == [True] + [False] * 7
    assert method.echo_response_mask(out)[0].sum() == 0
    assert torch.equal(method.echo_response_mask(out)[1:], out.response_mask[1:])
    with pytest.raises(ValueError, match=r"method\.luffy\.num_off_policy"):
        LocalMethod(MethodConfig.from_dict({"name": "luffy", "luffy": {"num_off_policy": 4}}), tok, eos_id=1,
                    pad_id=0, n=4, max_response_length=8)


def test_echo_group_rule_counts_on_policy_rows_only():
    """Group 0: expert fails, the 3 on-policy rollouts succeed -> all-success over on-policy rows: clips
    (over the whole mixed group it would be a mixed group: none with scope=degenerate).
    Group 1: expert succeeds, on-policy rows fail -> no clip; the expert row never gives one."""
    prompts, rb = _fake_rollouts(2, 4)
    off = torch.tensor([True, False, False, False, True, False, False, False])
    scores = torch.tensor([0.0, 1, 1, 1, 1, 0, 0, 0])
    entropy = torch.rand(8, 4, generator=torch.Generator().manual_seed(0))
    cfg = EchoConfig(boundary_token_ids=(9,), scope="degenerate", per="rollout")
    sel = select_echo_clips(rb.responses, rows_zeroed(rb.response_mask, off), entropy, scores, rb.group_index, cfg)
    assert sel.mask.any(1).tolist() == [False, True, True, True, False, False, False, False]
    whole = select_echo_clips(rb.responses, rb.response_mask, entropy, scores, rb.group_index, cfg)
    assert not whole.mask[:4].any()  # the whole-group reading would echo nothing from group 0


def test_recipe_loss_scale_is_the_authors_token_sum_over_8192_times_8():
    """LUFFY's script: each of 8 GPUs sums its 64 rows' token losses / 8192 (loss_remove_token_mean,
    padded width 8192); FSDP averages the 8 GPUs. The recipe's seq-mean-token-sum-norm with factor 128
    over a 512-row mini-batch gives the same loss: here a micro-batch of 2 rows of that mini-batch."""
    from methods_support import actor_config

    cfg = actor_config("actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum-norm",
                       "+actor_rollout_ref.actor.loss_scale_factor=128")
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.5], [0.2, 0.4, 0.8]]))
    adv = torch.tensor([[1.0] * 3, [-2.0] * 3])
    out, data = micro_batch(logp, logp.clone(), adv, torch.ones(2, 3, dtype=torch.long),
                            off_policy=torch.tensor([True, False]))
    from verl.utils import tensordict_utils as tu

    tu.assign_non_tensor(data, global_batch_size=512)
    loss, _ = MethodLoss(cfg, EchoConfig(enable=False), MethodConfig(name="luffy"))(out, data)
    token_sum = 3 * -1.0 * 0.5 / 0.6 + 3 * 2.0 * 1.0  # expert row -A f(p); on-policy row -A * ratio 1
    assert loss.item() == pytest.approx(token_sum / (8192 * 8), rel=1e-6)


@pytest.mark.parametrize("follow", [False, True])
def test_echo_term_as_echoloss_adds_it(follow):
    """No expert row, the clip kept: MethodLoss (LUFFY) and EchoLoss give the same loss and gradient,
    EchoRL term included (with and without echorl.follow_rl_agg, under seq-mean-token-sum-norm)."""
    from methods_support import actor_config

    from echorl.loss import EchoLoss

    cfg = actor_config("actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum-norm",
                       "+actor_rollout_ref.actor.loss_scale_factor=16")
    echo = EchoConfig(coef=0.5, boundary_token_ids=(9,), follow_rl_agg=follow)
    g = torch.Generator().manual_seed(1)
    logp = (-torch.rand(3, 5, generator=g)).requires_grad_(True)
    old = logp.detach() + 0.1 * torch.randn(3, 5, generator=g)
    adv = torch.randn(3, 1, generator=g).expand(3, 5).clone()
    mask = torch.ones(3, 5, dtype=torch.long)
    fields = {"echo_mask": torch.tensor([[1, 1, 0, 0, 0], [0] * 5, [1, 1, 1, 0, 0]], dtype=torch.bool),
              "echo_denom": torch.full((3,), 2.5)}
    clipped = MethodConfig.from_dict({"name": "luffy", "luffy": {"on_policy_clip": True}})
    out, data = micro_batch(logp, old, adv, mask, off_policy=torch.zeros(3, dtype=torch.bool), **fields)
    a, ma = MethodLoss(cfg, echo, clipped)(out, data)
    a.backward()
    ga, logp.grad = logp.grad.clone(), None
    out, data = micro_batch(logp, old, adv, mask, **fields)
    b, mb = EchoLoss(cfg, echo)(out, data)
    b.backward()
    assert torch.equal(a, b) and torch.equal(ga, logp.grad)
    assert ma["echo/loss"].values == mb["echo/loss"].values
