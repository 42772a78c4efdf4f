"""echorl/local/trainer.py: few-step training runs whose weights, losses and metrics are known."""

from __future__ import annotations

import functools

import pytest
import torch
from engine_support import base_overrides, make_model

from echorl.local import load_config
from echorl.local.trainer import LocalTrainer


def _run(tmp_path, name, steps=3, loss_fn=None, score_fn="local_scorers:len_mod4", **extra):
    model, tok = make_model()
    cfg = load_config(base_overrides(tmp_path / name, steps=steps, **{"reward.score_fn": score_fn, **extra}))
    tr = LocalTrainer(cfg, model=model, tokenizer=tok, loss_fn=loss_fn(cfg) if loss_fn else None)
    metrics = []
    try:
        for _ in range(steps):
            metrics.append(tr.step())
    finally:
        tr.pool.close()
    return tr, metrics


def _plain_ppo_loss(cfg):
    """verl's own actor loss, exactly what verl's workers build: partial(ppo_loss, config=actor_cfg)."""
    from verl.workers.utils.losses import ppo_loss

    from echorl.local.config import build_actor_config

    return functools.partial(ppo_loss, build_actor_config(cfg))


def _equal_weights(a, b) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_echo_off_and_coef0_are_bit_identical_to_plain_grpo(tmp_path):
    plain, pm = _run(tmp_path, "plain", loss_fn=_plain_ppo_loss)
    off, _ = _run(tmp_path, "off", **{"echorl.enable": False})
    zero, _ = _run(tmp_path, "zero", **{"echorl.coef": 0.0})
    on, om = _run(tmp_path, "on", **{"echorl.coef": 0.5})
    # the runs are not vacuous: GRPO had gradient, EchoRL had clips
    assert any(m["actor/grad_norm"] > 0 for m in pm)
    assert sum(m["echo/clips"] for m in om) > 0
    assert _equal_weights(plain, off)
    assert _equal_weights(plain, zero)
    assert not _equal_weights(plain, on)
    init, _ = make_model()
    assert not all(torch.equal(v, init.state_dict()[k]) for k, v in plain.model.state_dict().items())


@pytest.mark.parametrize("preset", ["degenerate", "paper"])
def test_all_degenerated_only_clip_tokens_get_gradient(tmp_path, preset):
    """Every rollout succeeds: advantages are 0, so the policy-gradient part is exactly 0 and the
    whole gradient is the EchoRL term, computed here independently: coef * sum_{clip} -log p / D
    (preset degenerate: every rollout's clip, D = clip tokens) or coef * mean over the C clips of
    each clip's token-mean NLL (preset paper: one clip per group, loss_agg=clip_mean)."""
    coef = 0.5
    model, tok = make_model()
    cfg = load_config(base_overrides(tmp_path / "deg", steps=1, **{
        "reward.score_fn": "local_scorers:always_one", "echorl.coef": coef, "echorl.preset": preset,
        "actor_rollout_ref.actor.optim.clip_grad": 1e9,  # no clipping: compare raw gradients
        "actor_rollout_ref.actor.ppo_mini_batch_size": 4, "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 8}))
    tr = LocalTrainer(cfg, model=model, tokenizer=tok)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    grads = {}
    real_step = tr.optimizer.step

    def spy_step(*a, **k):
        grads.update({n: p.grad.clone() for n, p in tr.model.named_parameters() if p.grad is not None})
        return real_step(*a, **k)

    tr.optimizer.step = spy_step
    try:
        m = tr.step()
    finally:
        tr.pool.close()
    b = tr.last_batch
    assert m["reward/mean"] == 1.0 and m["reward/accuracy"] == 1.0
    assert m["echo/groups_all_success_frac"] == 1.0 and m["echo/groups_zero_var_frac"] == 1.0
    assert torch.all(b["advantages"] == 0)
    assert m["actor/pg_loss"] == 0.0
    clip = b["echo_mask"]
    assert clip.any() and m["echo/clip_tokens"] == float(clip.sum())
    from echorl.logprobs import policy_logprobs

    ref, _ = make_model()  # independent reference with the pre-step weights
    ref.load_state_dict(before)
    lp, _ = policy_logprobs(ref, b["input_ids"], b["attention_mask"], b["responses"], 1.0)
    if preset == "degenerate":
        assert m["echo/clips"] == 16.0  # scope=degenerate, per=rollout: every rollout has a clip
        D = m["echo/denom"]
        assert D == float(clip.sum())  # clip_token_mean, one mini-batch
        nll = -(lp * clip).sum() / D
    else:
        assert m["echo/clips"] == 4.0  # per=group: one clip per group (4 prompts)
        has = clip.any(dim=1)
        assert m["echo/clips_from_all_success"] == 4.0 and m["echo/clips_from_mixed"] == 0.0
        nll = (-(lp * clip).sum(dim=1)[has] / clip.sum(dim=1)[has]).mean()  # mean of per-clip token means
    (coef * nll).backward()
    assert m["echo/loss"] == pytest.approx(float(nll), rel=1e-5)
    for n, p in ref.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-7)
    assert float(sum(g.abs().sum() for g in grads.values())) > 0


def test_all_degenerated_echo_off_leaves_weights_unchanged(tmp_path):
    tr, ms = _run(tmp_path, "deg_off", steps=1, score_fn="local_scorers:always_one",
                  **{"echorl.enable": False, "echorl.preset": "degenerate"})
    init, _ = make_model()
    assert ms[0]["actor/grad_norm"] == 0.0 and ms[0]["echo/clips"] == 16.0 and ms[0]["echo/active"] == 0.0
    assert all(torch.equal(v, init.state_dict()[k]) for k, v in tr.model.state_dict().items())


def test_verifier_timeout_is_counted_and_scores_zero(tmp_path):
    tr, ms = _run(tmp_path, "hang", steps=1, score_fn="local_scorers:hang_on_even",
                  **{"reward.timeout_s": 0.5, "reward.num_workers": 2, "data.train_batch_size": 2,
                     "actor_rollout_ref.rollout.n": 2, "actor_rollout_ref.actor.ppo_mini_batch_size": 2})
    last = tr.last
    lens = last["response_mask"].sum(-1)
    texts = tr.tok.batch_decode([r[:k] for r, k in zip(last["responses"].tolist(), lens.tolist())],
                                skip_special_tokens=True)
    even = torch.tensor([len(t) % 2 == 0 for t in texts])
    assert ms[0]["reward/timeouts"] == float(even.sum())
    assert torch.equal(last["scores"], (~even).float())


def _grads_per_optimizer_step(tmp_path, name, micro):
    """One step's accumulated ``.grad`` of every parameter, captured just before each optimizer step
    (gradient clipping off, so nothing rescales them), and the trainer."""
    model, tok = make_model()
    cfg = load_config(base_overrides(tmp_path / name, steps=1, **{
        "reward.score_fn": "local_scorers:len_mod4", "echorl.coef": 0.5,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": micro, "actor_rollout_ref.actor.optim.clip_grad": 1e9}))
    tr = LocalTrainer(cfg, model=model, tokenizer=tok)
    grads: list[dict[str, torch.Tensor]] = []
    names = {p: k for k, p in tr.model.named_parameters()}
    tr.optimizer.register_step_pre_hook(lambda opt, args, kwargs: grads.append(
        {names[p]: p.grad.detach().clone() for g in opt.param_groups for p in g["params"] if p.grad is not None}))
    try:
        m = tr.step()
    finally:
        tr.pool.close()
    return tr, m, grads


def test_micro_batch_split_does_not_change_the_gradient(tmp_path):
    """Same data as 1 or 4 micro-batches per mini-batch (8 rows): the accumulated gradients of each
    mini-batch are equal up to float summation order (a mis-scaled micro-batch would change them)."""
    one, m1, g1 = _grads_per_optimizer_step(tmp_path, "mb8", 8)
    four, m4, g4 = _grads_per_optimizer_step(tmp_path, "mb2", 2)
    assert torch.equal(one.last_batch["responses"], four.last_batch["responses"])
    assert m1["echo/clips"] > 0
    assert len(g1) == len(g4) == 2  # 4 prompts x 4 rollouts, 2 prompts per mini-batch: two optimizer steps
    for a, b in zip(g1, g4):
        assert set(a) == set(b) and len(a) == len(list(one.model.parameters()))
        norm = torch.sqrt(sum((v.double() ** 2).sum() for v in a.values()))
        assert norm > 1e-4  # a real gradient, not zeros
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6 * float(norm))
    assert m1["actor/pg_loss"] == pytest.approx(m4["actor/pg_loss"], rel=1e-4, abs=1e-7)
    assert m1["echo/loss"] == pytest.approx(m4["echo/loss"], rel=1e-4)


def test_advantage_mode_puts_adv_coef_on_clip_tokens(tmp_path):
    """mode=advantage, every group degenerated: the advantages the actor sees are exactly adv_coef on
    the EchoClip tokens (a prefix of each rollout's valid tokens) and 0 elsewhere; no loss term is
    added, and the policy loss alone moves the weights."""
    adv_coef = 0.3
    tr, ms = _run(tmp_path, "advmode", steps=1, score_fn="local_scorers:always_one",
                  **{"echorl.mode": "advantage", "echorl.adv_coef": adv_coef, "echorl.preset": "degenerate"})
    m, b = ms[0], tr.last_batch
    assert m["echo/active"] == 1.0 and m["echo/clips"] == 16.0
    adv, valid = b["advantages"], b["response_mask"].bool()
    on = adv != 0
    assert torch.all(adv[on] == torch.tensor(adv_coef, dtype=adv.dtype))
    assert float(on.sum()) == m["echo/clip_tokens"] > 0
    assert not torch.any(on & ~valid)
    # each row's bonus covers a prefix of its (right-padded) valid positions: its first n_r tokens
    n = on.sum(dim=1, keepdim=True)
    assert torch.equal(on, valid & (torch.arange(adv.shape[1]) < n))
    assert not b["echo_mask"].any()  # the clips ride the advantages, not the loss term
    assert "echo/loss" not in m  # logged only when the EchoRL term is trained, as on verl
    assert m["actor/grad_norm"] > 0.0
    init, _ = make_model()
    assert any(not torch.equal(v, init.state_dict()[k]) for k, v in tr.model.state_dict().items())


def test_non_finite_gradient_skips_the_update_and_counts_it(tmp_path):
    """A NaN loss must not reach the weights: every mini-batch's update is skipped, counted and warned."""

    def nan_loss(cfg):
        plain = _plain_ppo_loss(cfg)

        def fn(output, data, dp_group=None):
            loss, metrics = plain(output, data)
            return loss * float("nan"), metrics

        return fn

    with pytest.warns(RuntimeWarning, match="actor update skipped: gradient norm is nan"):
        tr, ms = _run(tmp_path, "nan", steps=1, loss_fn=nan_loss,
                      **{"actor_rollout_ref.actor.ppo_mini_batch_size": 2})
    n_mini = 4 // 2  # base_overrides: 4 prompts per step
    assert ms[0]["actor/skipped_updates"] == float(n_mini)
    init, _ = make_model()
    assert all(torch.equal(v, init.state_dict()[k]) for k, v in tr.model.state_dict().items())
