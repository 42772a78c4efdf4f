"""EchoLoss against verl's real ``ppo_loss`` on TensorDict micro-batches built as verl builds them.

The mini-batch holds nested (jagged) fields as the v1 trainer stores them; micro-batches come from
verl's own ``prepare_micro_batches``; the packed log-probs ``[b, prompt+response]`` are a function
of one leaf tensor ``theta`` (one logit per packed token), so gradients can be compared exactly.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from verl.workers.engine.utils import prepare_micro_batches
from verl.workers.utils.losses import ppo_loss

from echorl import EchoConfig
from echorl.loss import EchoLoss

B = 8  # rows of the mini-batch


def _nested(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def make_minibatch(seed: int = 0, adv_zero: bool = False, empty_clip: bool = False):
    """A mini-batch of B rows in verl's v1 layout, plus the packed-logit leaf ``theta`` per row.

    Returns (data TensorDict, thetas list of [prompt_len + response_len] leaves, clip mask list).
    """
    g = torch.Generator().manual_seed(seed)
    prompt_lens = torch.randint(2, 6, (B,), generator=g)
    resp_lens = torch.randint(3, 11, (B,), generator=g)
    thetas, prompts, responses, rmask, old_lp, adv, echo = [], [], [], [], [], [], []
    for i in range(B):
        p, r = int(prompt_lens[i]), int(resp_lens[i])
        theta = torch.randn(p + r, generator=g)
        thetas.append(theta)
        prompts.append(torch.randint(0, 50, (p,), generator=g))
        responses.append(torch.randint(0, 50, (r,), generator=g))
        m = torch.ones(r, dtype=torch.int64)
        if i == 3:
            m[1] = 0  # a hole (multi-turn tool output)
        rmask.append(m)
        # response token j is predicted at packed position p - 1 + j
        lp = torch.nn.functional.logsigmoid(theta[p - 1 : p - 1 + r])
        old_lp.append(lp + 0.3 * torch.randn(r, generator=g))  # ratios around 1, some clipped
        a = torch.zeros(r) if adv_zero else torch.randn(1, generator=g).expand(r).clone()
        adv.append(a)
        e = torch.zeros(r, dtype=torch.bool)
        if not empty_clip and i % 2 == 0:
            e[: int(torch.randint(1, r + 1, (1,), generator=g))] = True
            e &= m.bool()
        echo.append(e)
    n_clip = sum(int(e.sum()) for e in echo)
    denom = max(n_clip / 1.0, 1.0)  # one mini-batch: D = clip tokens of the batch
    data = TensorDict(
        {
            "prompts": _nested(prompts),
            "responses": _nested(responses),
            "input_ids": _nested([torch.cat([p, r]) for p, r in zip(prompts, responses)]),
            "response_mask": _nested(rmask),
            "loss_mask": _nested(rmask),
            "old_log_probs": _nested(old_lp),
            "advantages": _nested(adv),
            "echo_mask": _nested(echo),
            "echo_denom": torch.full((B,), denom, dtype=torch.float32),
            "row": torch.arange(B),
        },
        batch_size=[B],
    )
    return data, thetas, echo


def run_minibatch(loss_fn, data, thetas, n_micro: int = 1, dp: int = 1):
    """Forward + backward of one mini-batch as the FSDP engine does it.

    ``dp`` ranks get contiguous row shards; each rank cuts its shard into ``n_micro`` micro-batches
    with verl's ``prepare_micro_batches`` and backprops every micro-batch loss unscaled; the
    data-parallel reduction averages gradients over ranks. Returns (grads per row, losses, metrics).
    """
    leaves = [t.clone().requires_grad_(True) for t in thetas]
    batch_num_tokens = int(data["loss_mask"].values().sum())  # all-reduced over dp by the engine
    losses, metrics = [], []
    shard = B // dp
    for rank in range(dp):
        rank_data = tu.index_select_tensor_dict(data, torch.arange(rank * shard, (rank + 1) * shard))
        tu.assign_non_tensor(rank_data, dp_size=dp, batch_num_tokens=batch_num_tokens, global_batch_size=B,
                             use_dynamic_bsz=False, micro_batch_size_per_gpu=shard // n_micro)
        micro_batches, _ = prepare_micro_batches(rank_data, dp_group=None)
        assert len(micro_batches) == n_micro
        for mb in micro_batches:
            rows = mb["row"].tolist()
            packed = torch.cat([torch.nn.functional.logsigmoid(leaves[i]) for i in rows])
            offsets = torch.tensor([0] + [len(leaves[i]) for i in rows]).cumsum(0)
            model_output = {"log_probs": torch.nested.nested_tensor_from_jagged(packed, offsets)}
            loss, m = loss_fn(model_output=model_output, data=mb, dp_group=None)
            (loss / dp).backward()  # DDP/FSDP average over dp ranks
            losses.append(loss.detach())
            metrics.append(m)
    return [leaf.grad for leaf in leaves], losses, metrics


def _ppo(actor_config):
    def fn(model_output, data, dp_group=None):
        return ppo_loss(actor_config, model_output, data, dp_group)

    return fn


@pytest.mark.parametrize("echo", [EchoConfig(enable=False, coef=0.5), EchoConfig(coef=0.0)], ids=["off", "coef0"])
def test_off_or_coef0_is_ppo_loss_bit_identical(actor_config, echo):
    data, thetas, _ = make_minibatch(seed=1)
    g_ref, l_ref, m_ref = run_minibatch(_ppo(actor_config), data, thetas, n_micro=2)
    g, losses, m = run_minibatch(EchoLoss(actor_config, echo), data, thetas, n_micro=2)
    for a, b in zip(l_ref, losses):
        assert torch.equal(a, b)
    for a, b in zip(g_ref, g):
        assert torch.equal(a, b)
    assert [sorted(x) for x in m] == [sorted(x) for x in m_ref]
    assert all("echo/loss" not in x for x in m)


def test_zero_advantages_put_gradient_only_on_clip_tokens(actor_config):
    coef = 0.25
    data, thetas, echo = make_minibatch(seed=2, adv_zero=True)
    denom = float(data["echo_denom"][0])
    grads, _, metrics = run_minibatch(EchoLoss(actor_config, EchoConfig(coef=coef)), data, thetas, n_micro=2)
    n_clip = 0
    for i in range(B):
        p = len(data["prompts"][i])
        r = len(data["responses"][i])
        expected = torch.zeros_like(thetas[i])
        # d/dtheta [coef * -logsigmoid(theta) / D] = -coef * (1 - sigmoid(theta)) / D on clip tokens
        pos = torch.arange(p - 1, p - 1 + r)[echo[i]]
        expected[pos] = -coef * (1 - torch.sigmoid(thetas[i][pos])) / denom
        n_clip += len(pos)
        torch.testing.assert_close(grads[i], expected, rtol=1e-6, atol=1e-9)
        assert torch.equal(grads[i] != 0, expected != 0)
    assert n_clip > 0
    # echo/loss (SUM over micro-batches) is L_echo of the mini-batch
    total = sum(m["echo/loss"].aggregate() for m in metrics)
    nll = sum(
        float(-torch.nn.functional.logsigmoid(thetas[i][len(data["prompts"][i]) - 1 :][: len(echo[i])][echo[i]]).sum())
        for i in range(B)
    )
    assert total == pytest.approx(nll / denom, rel=1e-6)


@pytest.mark.parametrize("denominators", ["make_minibatch", "clip_mean"])
@pytest.mark.parametrize("seed", [3, 4])
def test_gradient_invariant_to_micro_batch_split_and_dp(actor_config, seed, denominators):
    """The denominators are fixed per row before the update (make_minibatch's, or the paper's
    default loss_agg=clip_mean: |c_i| * C), so any micro-batch split and data-parallel size gives
    the gradient of one whole-mini-batch pass."""
    data, thetas, echo = make_minibatch(seed=seed)
    if denominators == "clip_mean":
        data, _ = with_clip_mean_denominators(data, echo)
    fn = EchoLoss(actor_config, EchoConfig(coef=0.5))
    ref, _, _ = run_minibatch(fn, data, thetas, n_micro=1)
    for n_micro, dp in [(2, 1), (4, 1), (8, 1), (1, 2), (2, 2), (1, 4), (2, 4)]:
        g, _, _ = run_minibatch(fn, data, thetas, n_micro=n_micro, dp=dp)
        for a, b in zip(ref, g):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-8)
    # the term is really there: it changes the gradient relative to ppo_loss
    base, _, _ = run_minibatch(_ppo(actor_config), data, thetas, n_micro=1)
    assert max(float((a - b).abs().max()) for a, b in zip(ref, base)) > 1e-3


def test_echo_loss_metric_sums_to_minibatch_value_across_dp(actor_config):
    from verl.utils.metric import Metric

    data, thetas, _ = make_minibatch(seed=5)
    fn = EchoLoss(actor_config, EchoConfig(coef=0.5))
    _, _, m1 = run_minibatch(fn, data, thetas, n_micro=1)
    _, _, m4 = run_minibatch(fn, data, thetas, n_micro=2, dp=2)
    one = m1[0]["echo/loss"].aggregate()
    # verl: Metric.aggregate_dp = mean over dp ranks of each micro-batch, then SUM over micro-batches
    per_rank = []
    for rank in range(2):  # run_minibatch lists rank 0's micro-batches first
        metric = Metric("sum")
        for m in m4[2 * rank : 2 * rank + 2]:
            metric.extend(m["echo/loss"])
        per_rank.append(metric)
    assert Metric.aggregate_dp(per_rank) == pytest.approx(one, rel=1e-6)
    assert one > 0


def test_empty_clip_set_adds_exact_zero(actor_config):
    data, thetas, _ = make_minibatch(seed=6, empty_clip=True)
    g_ref, l_ref, _ = run_minibatch(_ppo(actor_config), data, thetas, n_micro=2)
    g, losses, m = run_minibatch(EchoLoss(actor_config, EchoConfig(coef=0.5)), data, thetas, n_micro=2)
    for a, b in zip(l_ref, losses):
        assert torch.equal(a, b)
    for a, b in zip(g_ref, g):
        assert torch.equal(a, b)
    assert all(x["echo/loss"].aggregate() == 0.0 for x in m)


def test_picklable_and_same_result(actor_config):
    fn = EchoLoss(actor_config, {"coef": 0.5, "boundary": "fixed", "boundary_token_ids": [198]})
    fn2 = pickle.loads(pickle.dumps(fn))
    assert fn2.echo_cfg == fn.echo_cfg
    data, thetas, _ = make_minibatch(seed=7)
    _, l1, _ = run_minibatch(fn, data, thetas, n_micro=2)
    _, l2, _ = run_minibatch(fn2, data, thetas, n_micro=2)
    assert all(torch.equal(a, b) for a, b in zip(l1, l2))


def test_missing_echo_fields_fail_with_the_fix(actor_config):
    data, thetas, _ = make_minibatch(seed=8)
    data = data.exclude("echo_mask", "echo_denom")
    with pytest.raises(KeyError, match=r"echo_mask.*echorl\.main"):
        run_minibatch(EchoLoss(actor_config, EchoConfig(coef=0.5)), data, thetas)


def test_dense_echo_mask_is_accepted(actor_config):
    """The embedded engine may hand padded [b, L] fields; the result equals the nested layout's."""
    data, thetas, _ = make_minibatch(seed=9)
    fn = EchoLoss(actor_config, EchoConfig(coef=0.5))
    g_nested, _, _ = run_minibatch(fn, data, thetas, n_micro=1)
    dense = copy.copy(data)
    dense["echo_mask"] = data.select("echo_mask").to_padded_tensor()["echo_mask"]
    g_dense, _, _ = run_minibatch(fn, dense, thetas, n_micro=1)
    for a, b in zip(g_nested, g_dense):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------- loss_agg=clip_mean
def with_clip_mean_denominators(data, echo, num_minibatches: int = 1):
    """Replace ``echo_denom`` by the per-row ``D_b = |c_b| * C / M`` of ``loss_agg='clip_mean'``."""
    from echorl import echo_row_denominators

    width = max(len(e) for e in echo)
    dense = torch.zeros(len(echo), width, dtype=torch.bool)
    for i, e in enumerate(echo):
        dense[i, : len(e)] = e
    d = echo_row_denominators(dense, dense, "clip_mean", num_minibatches)
    out = copy.copy(data)
    out["echo_denom"] = d
    return out, d


def test_clip_mean_gradient_by_hand(actor_config):
    """Zero advantages: the gradient on clip token t of row i is -coef (1 - sigmoid(theta_t)) / (|c_i| C),
    and echo/loss is the mean over the C clips of each clip's token-mean NLL."""
    coef = 0.25
    data, thetas, echo = make_minibatch(seed=2, adv_zero=True)
    data, d = with_clip_mean_denominators(data, echo, num_minibatches=1)
    clips = [i for i in range(B) if bool(echo[i].any())]
    C = len(clips)
    assert C >= 2 and len({int(echo[i].sum()) for i in clips}) >= 2  # clips of different lengths
    grads, _, metrics = run_minibatch(EchoLoss(actor_config, EchoConfig(coef=coef)), data, thetas, n_micro=2, dp=2)
    means = []
    for i in range(B):
        p, r = len(data["prompts"][i]), len(data["responses"][i])
        pos = torch.arange(p - 1, p - 1 + r)[echo[i]]
        expected = torch.zeros_like(thetas[i])
        if i in clips:
            n_i = int(echo[i].sum())
            assert float(d[i]) == n_i * C
            expected[pos] = -coef * (1 - torch.sigmoid(thetas[i][pos])) / (n_i * C)
            means.append(float(-torch.nn.functional.logsigmoid(thetas[i][pos]).mean()))
        torch.testing.assert_close(grads[i], expected, rtol=1e-6, atol=1e-9)
    from verl.utils.metric import Metric

    per_rank = []
    for rank in range(2):
        metric = Metric("sum")
        for m in metrics[2 * rank : 2 * rank + 2]:
            metric.extend(m["echo/loss"])
        per_rank.append(metric)
    assert Metric.aggregate_dp(per_rank) == pytest.approx(sum(means) / C, rel=1e-6)


# ---------------------------------------------------------------------------- echorl.follow_rl_agg
def _actor(compose, mode: str, factor: int | None = None):
    from verl.utils.config import omega_conf_to_dataclass

    ov = [f"actor_rollout_ref.actor.loss_agg_mode={mode}"]
    if factor is not None:
        ov.append(f"actor_rollout_ref.actor.loss_scale_factor={factor}")
    return omega_conf_to_dataclass(compose(ov).actor_rollout_ref.actor)


def hand_batch():
    """Two rows (prompts of 2 tokens; responses of 4 and 2 tokens: N = 6 tokens, G = 2 sequences),
    advantage 1 everywhere, old log-probs = current ones (ratio 1: every token's PPO loss is -1), one
    clip: row 0's first two tokens with log-probs -0.5 and -1.5 (clip_mean D = 2 * 1 clip = 2, so
    L_echo = (0.5 + 1.5) / 2 = 1)."""
    lps = [torch.tensor([-0.5, -1.5, -0.7, -0.2]), torch.tensor([-0.3, -0.9])]
    thetas = [torch.cat([torch.zeros(1), torch.logit(lp.exp(), eps=0), torch.zeros(1)]) for lp in lps]  # [2 + r]
    old = [torch.nn.functional.logsigmoid(t[1:-1]) for t in thetas]  # what the packed log-probs give
    data = TensorDict({
        "prompts": _nested([torch.tensor([1, 2])] * 2),
        "responses": _nested([torch.tensor([3, 4, 5, 6]), torch.tensor([7, 8])]),
        "input_ids": _nested([torch.tensor([1, 2, 3, 4, 5, 6]), torch.tensor([1, 2, 7, 8])]),
        "response_mask": _nested([torch.ones(4, dtype=torch.int64), torch.ones(2, dtype=torch.int64)]),
        "loss_mask": _nested([torch.ones(4, dtype=torch.int64), torch.ones(2, dtype=torch.int64)]),
        "old_log_probs": _nested(old),
        "advantages": _nested([torch.ones(4), torch.ones(2)]),
        "echo_mask": _nested([torch.tensor([True, True, False, False]), torch.zeros(2, dtype=torch.bool)]),
        "echo_denom": torch.tensor([2.0, 1.0]),
        "row": torch.arange(2),
    }, batch_size=[2])
    return data, thetas


def one_pass(fn, data, thetas):
    leaves = [t.clone().requires_grad_(True) for t in thetas]
    packed = torch.cat([torch.nn.functional.logsigmoid(x) for x in leaves])
    offsets = torch.tensor([0] + [len(x) for x in leaves]).cumsum(0)
    mb = copy.copy(data)
    tu.assign_non_tensor(mb, dp_size=1, batch_num_tokens=6, global_batch_size=2)
    loss, m = fn(model_output={"log_probs": torch.nested.nested_tensor_from_jagged(packed, offsets)}, data=mb)
    return float(loss.detach()), m


@pytest.mark.parametrize("mode, factor, rl, scale", [
    ("token-mean", None, -1.0, 1.0),  # -6 / N
    ("seq-mean-token-sum-norm", 8, -0.375, 6 / 16),  # -6 / (G * F): the RL term is N / (G F) of the token mean
    ("seq-mean-token-sum-norm", None, -0.375 * 8 / 4, 6 / 8),  # F = padded width 4 (verl's fallback)
    ("seq-mean-token-sum", None, -3.0, 3.0),  # -6 / G
])
def test_follow_rl_agg_scales_the_echo_term_as_verl_scales_the_rl_term(compose, mode, factor, rl, scale):
    """Through verl's real ppo_loss: the RL term, and the EchoRL term coef * L_echo (= coef * 1) with
    follow_rl_agg off (the paper: the same whatever the RL aggregation) and on (times the RL's scale,
    so echo / RL is the same under every aggregation)."""
    actor = _actor(compose, mode, factor)
    data, thetas = hand_batch()
    coef = 0.01
    rl_loss, _ = one_pass(_ppo(actor), data, thetas)
    assert rl_loss == pytest.approx(rl, rel=1e-5)
    off, m = one_pass(EchoLoss(actor, EchoConfig(coef=coef)), data, thetas)
    on, m_on = one_pass(EchoLoss(actor, EchoConfig(coef=coef, follow_rl_agg=True)), data, thetas)
    assert off - rl_loss == pytest.approx(coef * 1.0, rel=1e-4)
    assert on - rl_loss == pytest.approx(coef * scale, rel=1e-4)
    assert (on - rl_loss) / rl_loss == pytest.approx(-coef, rel=1e-4)  # the token-mean ratio, under every mode
    assert m["echo/loss"].aggregate() == pytest.approx(1.0, rel=1e-5) == m_on["echo/loss"].aggregate()


def test_follow_rl_agg_gradient_invariant_to_split_and_dp(compose):
    """N and G are the mini-batch's (fixed before its micro-batches), so the scaled term keeps the
    split invariance: 1, 2, 4 micro-batches and 2 ranks give the gradient of one pass."""
    actor = _actor(compose, "seq-mean-token-sum-norm", 16)
    data, thetas, echo = make_minibatch(seed=11)
    data, _ = with_clip_mean_denominators(data, echo)
    fn = EchoLoss(actor, EchoConfig(coef=0.5, follow_rl_agg=True))
    ref, _, _ = run_minibatch(fn, data, thetas, n_micro=1)
    for n_micro, dp in [(2, 1), (4, 1), (1, 2), (2, 2)]:
        g, _, _ = run_minibatch(fn, data, thetas, n_micro=n_micro, dp=dp)
        for a, b in zip(ref, g):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-8)
    off, _, _ = run_minibatch(EchoLoss(actor, EchoConfig(coef=0.5)), data, thetas, n_micro=1)
    assert max(float((a - b).abs().max()) for a, b in zip(ref, off)) > 1e-4  # the scale changes the gradient


def test_follow_rl_agg_refuses_an_unknown_aggregation():
    from echorl.core.loss import rl_agg_scale

    with pytest.raises(ValueError, match=r"loss_agg_mode='weird'.*set echorl.follow_rl_agg=false"):
        rl_agg_scale("weird", 6, 2)
    assert rl_agg_scale("token-sum", 6, 2) == 6.0 and rl_agg_scale("seq-mean-token-mean", 6, 2) == 1.0
