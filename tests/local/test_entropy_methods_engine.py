"""method.name=rl_zvp / forking on the embedded engine: one training step each, whose loss and gradient
are recomputed here from the step's stored tensors with literal loops of the papers' rules."""

from __future__ import annotations

import pytest
import torch
from engine_support import base_overrides, make_model
from verl.workers.utils.padding import no_padding_2_padding

from echorl.local import load_config
from echorl.local import trainer as trainer_mod
from echorl.local.trainer import LocalTrainer
from echorl.logprobs import policy_logprobs

ROWS = [{"prompt": f"Compute {i}+1.", "answer": a, "data_source": "test", "solution": "x"}
        for i, a in enumerate(["pos", "neg", "mix", "mix"])]
STEP = {"reward.score_fn": "zvp_scorers:by_answer", "data.train_batch_size": 4, "data.shuffle": False,
        "actor_rollout_ref.actor.optim.clip_grad": 1e9,  # no clipping: compare raw gradients
        "actor_rollout_ref.actor.ppo_mini_batch_size": 4,  # one mini-batch of 16 rows
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 8,  # two micro-batches
        "echorl.enable": False}


def _trainer(tmp_path, name, **extra):
    model, tok = make_model()
    cfg = load_config(base_overrides(tmp_path / name, steps=1, **{**STEP, **extra}))
    return LocalTrainer(cfg, model=model, tokenizer=tok, rows=[dict(r) for r in ROWS])


def _step_with_spies(tr, monkeypatch):
    """One step; returns (metrics, pre-step weights, gradients at optimizer.step, what the inner loss saw)."""
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    grads, seen, scores = {}, [], []
    real_step, inner = tr.optimizer.step, tr.loss_fn.inner

    def spy_step(*a, **k):
        grads.update({n: p.grad.clone() for n, p in tr.model.named_parameters() if p.grad is not None})
        return real_step(*a, **k)

    def spy_inner(model_output, data, dp_group=None):
        seen.append({"entropy": no_padding_2_padding(model_output["entropy"], data).detach(),
                     "response_mask": data.select("response_mask").to_padded_tensor()["response_mask"].bool(),
                     "advantages": data.select("advantages").to_padded_tensor()["advantages"],
                     "batch_num_tokens": data.get_non_tensor("batch_num_tokens")})
        return inner(model_output, data, dp_group)

    real_sign = trainer_mod.zvp_sign

    def spy_sign(method, s, g, m):
        scores.append(s.clone())
        return real_sign(method, s, g, m)

    tr.optimizer.step, tr.loss_fn.inner = spy_step, spy_inner
    monkeypatch.setattr(trainer_mod, "zvp_sign", spy_sign)
    try:
        m = tr.step()
    finally:
        tr.pool.close()
    return m, before, grads, seen, scores


def _reference(before, batch):
    ref, _ = make_model()
    ref.load_state_dict(before)
    lp, ent = policy_logprobs(ref, batch["input_ids"], batch["attention_mask"], batch["responses"], 1.0,
                              with_entropy=True)
    return ref, lp, ent.detach()


def _check_grads(ref, grads):
    for n, p in ref.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-7)
    assert float(sum(g.abs().sum() for g in grads.values())) > 0


def test_rl_zvp_step_trains_on_the_papers_shaped_advantages(tmp_path, monkeypatch):
    alpha = 0.3
    tr = _trainer(tmp_path, "zvp", **{"method.name": "rl_zvp", "method.rl_zvp.alpha": alpha})
    m, before, grads, seen, scores = _step_with_spies(tr, monkeypatch)
    b = tr.last_batch
    mask = b["response_mask"].bool()
    s = scores[0]
    # the signs, by a literal loop over the groups (4 prompts x 4 rollouts, rows of a group adjacent)
    want_sign = torch.zeros(16, dtype=torch.long)
    for g in range(4):
        rows = list(range(4 * g, 4 * g + 4))
        if len({float(s[i]) for i in rows}) == 1:
            for i in rows:
                want_sign[i] = 1 if float(s[i]) > 0 else -1
    assert want_sign.tolist()[:8] == [1] * 4 + [-1] * 4  # the pos and neg prompts
    assert (want_sign[8:] == 0).any()  # a mixed group keeps GRPO's advantages
    assert torch.equal(b["zvp_sign"], want_sign)
    ref, lp, ent = _reference(before, b)
    # Eq. 5, literally: alpha * H_t on +, -alpha * (max_k H_k - H_t) on -, GRPO's advantage on 0
    adv = b["advantages"].clone()
    for i in range(16):
        valid = [t for t in range(mask.shape[1]) if mask[i, t]]
        hmax = max(float(ent[i, t]) for t in valid)
        for t in valid:
            if want_sign[i] > 0:
                adv[i, t] = alpha * float(ent[i, t])
            elif want_sign[i] < 0:
                adv[i, t] = -alpha * (hmax - float(ent[i, t]))
    shaped = torch.cat([x["advantages"] for x in seen])
    torch.testing.assert_close(shaped[:, :adv.shape[1]] * mask, adv * mask, rtol=1e-4, atol=1e-6)
    assert all(x["batch_num_tokens"] == int(mask.sum()) for x in seen)  # GRPO's token mean, unchanged
    n_tok = mask.sum()
    loss = (-(adv * torch.exp(lp - lp.detach())) * mask).sum() / n_tok  # on-policy: ratio 1, inside the clip
    loss.backward()
    assert m["actor/pg_loss"] == pytest.approx(float(-(adv * mask).sum() / n_tok), rel=1e-4, abs=1e-7)
    _check_grads(ref, grads)
    halves = (want_sign[:8], want_sign[8:])  # the two micro-batches; the metric is their mean
    assert m["actor/rl_zvp/pos_frac"] == pytest.approx(sum(float((h > 0).float().mean()) for h in halves) / 2)
    assert m["actor/rl_zvp/neg_frac"] == pytest.approx(sum(float((h < 0).float().mean()) for h in halves) / 2)


def test_forking_step_keeps_the_top_rho_tokens_of_each_micro_batch(tmp_path, monkeypatch):
    rho = 0.2
    tr = _trainer(tmp_path, "fork", **{"method.name": "forking", "method.forking.rho": rho})
    m, before, grads, seen, _ = _step_with_spies(tr, monkeypatch)
    b = tr.last_batch
    mask = b["response_mask"].bool()
    ref, lp, ent = _reference(before, b)
    adv = b["advantages"]
    assert (adv != 0).any()
    loss, fracs = 0.0, []
    for u, rows in enumerate([range(0, 8), range(8, 16)]):  # shuffle=false: micro-batch u is rows 8u..8u+7
        got, h = seen[u]["response_mask"], seen[u]["entropy"]  # the update forward's entropy, [8, W]
        W = h.shape[1]
        torch.testing.assert_close(h * mask[list(rows)][:, :W], ent[list(rows)][:, :W] * mask[list(rows)][:, :W],
                                   rtol=1e-4, atol=1e-5)  # = the policy's entropy at T=1 (the reference forward)
        # the entropies of this random tiny model nearly tie, so the rule ranks the update's own values
        cells = [(float(h[i - rows[0], t]), i, t) for i in rows for t in range(W) if mask[i, t]]
        k = max(1, int(len(cells) * rho + 0.9999))  # the authors' count
        ranked = sorted(cells, key=lambda c: (-c[0], c[1], c[2]))  # ties: the earlier token first
        keep = torch.zeros_like(mask)
        for _, i, t in ranked[:k]:
            keep[i, t] = True
        assert torch.equal(got, keep[list(rows)][:, :got.shape[1]])
        # the authors' per-micro-batch token mean over the kept tokens, weighed by the micro-batch's rows
        assert seen[u]["batch_num_tokens"] == pytest.approx(k * 16 / 8)
        loss = loss + (-(adv * torch.exp(lp - lp.detach())) * keep).sum() / k * (8 / 16)
        fracs.append(k / len(cells))
    loss.backward()
    _check_grads(ref, grads)
    assert m["actor/forking/kept_frac"] == pytest.approx(sum(fracs) / 2)


def _weights(tr):
    return {k: v.clone() for k, v in tr.model.state_dict().items()}


def _one_step(tr):
    try:
        return tr.step()
    finally:
        tr.pool.close()


def test_method_grpo_ignores_the_options_and_forking_rho_1_is_grpo_bit_for_bit(tmp_path):
    one_micro = {"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 16}
    plain = _trainer(tmp_path, "plain", **one_micro)
    _one_step(plain)
    opts = _trainer(tmp_path, "opts", **one_micro, **{"method.rl_zvp.alpha": 0.5, "method.forking.rho": 0.5})
    _one_step(opts)
    rho1 = _trainer(tmp_path, "rho1", **one_micro, **{"method.name": "forking", "method.forking.rho": 1.0})
    m = _one_step(rho1)
    init, _ = make_model()
    assert any(not torch.equal(v, init.state_dict()[k]) for k, v in plain.model.state_dict().items())
    for other in (opts, rho1):
        assert all(torch.equal(v, _weights(other)[k]) for k, v in _weights(plain).items())
    assert m["actor/forking/kept_frac"] == 1.0


@pytest.mark.parametrize("extra, match", [
    ({"method.name": "forking", "echorl.enable": True}, "echorl.enable=false"),
    ({"method.name": "forking", "actor_rollout_ref.actor.loss_agg_mode": "seq-mean-token-mean"}, "token-mean"),
    ({"method.name": "rl_zvp", "echorl.enable": True, "echorl.mode": "advantage"}, "echorl.mode=loss"),
    ({"method.name": "rl_zvp", "algorithm.filter_groups.enable": True}, "filter_groups.enable=false"),
])
def test_bad_combinations_are_refused_before_training(tmp_path, extra, match):
    with pytest.raises(ValueError, match=match):
        _trainer(tmp_path, "bad", **extra)


def test_rl_zvp_with_the_echorl_term_adds_both(tmp_path, monkeypatch):
    tr = _trainer(tmp_path, "zvp_echo", **{"method.name": "rl_zvp", "echorl.enable": True, "echorl.coef": 0.5,
                                           "echorl.preset": "degenerate"})
    m, *_ = _step_with_spies(tr, monkeypatch)
    assert m["echo/clips"] > 0 and "echo/loss" in m and m["actor/rl_zvp/pos_frac"] == 0.25  # rows 0-3 of 8, then 0
