"""echorl/logprobs.py, rollout.py and update.py numerics against naive references."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from engine_support import base_overrides, make_model

from echorl.generation import response_mask_from_eos
from echorl.local.rollout import generate_rollouts
from echorl.local.update import compute_advantages, token_level_rewards
from echorl.logprobs import old_policy_pass, pack_for_verl, policy_logprobs, position_ids_from_mask


def _batch(tok, model):
    torch.manual_seed(1)
    return generate_rollouts(model, tok, [[5, 6, 7, 8], [9, 10], [11, 12, 13]], n=2, max_response_length=10,
                             temperature=0.7, top_p=1.0, top_k=-1, eos_ids=[2], pad_id=2)


def test_old_policy_pass_matches_full_vocab_reference(tiny_model):
    model, tok = tiny_model
    rb = _batch(tok, model)
    B, L = rb.responses.shape
    temp = 0.7
    lp, ent = old_policy_pass(model, rb.input_ids, rb.attention_mask, rb.responses, temp, chunk_rows=4)  # 2 chunks
    with torch.no_grad():  # naive: full logits of every position, then the response slice
        logits = model(input_ids=rb.input_ids, attention_mask=rb.attention_mask,
                       position_ids=position_ids_from_mask(rb.attention_mask)).logits.double() / temp
    P = rb.prompts.shape[1]
    z = logits[:, P - 1:P - 1 + L]  # [B, L, V]
    logp_all = torch.log_softmax(z, -1)
    ref_lp = logp_all.gather(-1, rb.responses.unsqueeze(-1)).squeeze(-1)
    ref_ent = -(logp_all.exp() * logp_all).sum(-1)
    m = rb.response_mask.bool()
    assert lp.shape == ent.shape == (B, L) and lp.dtype == torch.float32
    torch.testing.assert_close(lp[m].double(), ref_lp[m], rtol=0, atol=2e-5)
    torch.testing.assert_close(ent[m].double(), ref_ent[m], rtol=0, atol=2e-5)
    assert float(ent[m].min()) > 0 and float(ent[m].max()) <= np.log(len(tok)) + 1e-4


def test_pack_for_verl_round_trips_through_verls_unpadding(tiny_model):
    from tensordict import TensorDict
    from verl.workers.utils.padding import no_padding_2_padding

    model, tok = tiny_model
    rb = _batch(tok, model)
    vals = torch.randn(rb.responses.shape)
    packed = pack_for_verl(vals, rb.attention_mask, rb.prompts.shape[1])
    assert packed.shape == (int(rb.attention_mask.sum()),)
    td = TensorDict({"prompts": rb.prompts, "responses": rb.responses, "attention_mask": rb.attention_mask},
                    batch_size=[rb.responses.shape[0]])
    back = no_padding_2_padding(packed, td)
    m = rb.response_mask.bool()
    assert torch.equal(back[m], vals[m])
    assert torch.equal(back[~m], torch.zeros_like(back[~m]))


def test_rollout_layout_left_pad_prompts_right_pad_responses(tiny_model):
    model, tok = tiny_model
    rb = _batch(tok, model)
    assert rb.prompts.shape == (6, 4)
    assert rb.prompts[2].tolist() == [2, 2, 9, 10] and rb.attention_mask[2, :4].tolist() == [0, 0, 1, 1]
    assert rb.group_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(rb.attention_mask[:, 4:], rb.response_mask)
    assert torch.equal(rb.input_ids, torch.cat([rb.prompts, rb.responses], 1))
    # right-padded: the mask is a prefix, and masked positions hold the pad id
    assert torch.all(rb.response_mask[:, 1:] <= rb.response_mask[:, :-1])
    assert torch.all(rb.responses[rb.response_mask == 0] == 2)


def test_response_mask_includes_first_eos_only():
    r = torch.tensor([[5, 6, 2, 7, 2], [5, 5, 5, 5, 5], [2, 2, 2, 2, 2], [5, 9, 6, 2, 2]])
    m = response_mask_from_eos(r, [2, 9])
    assert m.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]]


def test_token_level_rewards_on_last_valid_token():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    r = token_level_rewards(torch.tensor([0.5, 1.0, 2.0]), mask)
    assert r.tolist() == [[0, 0, 0.5, 0], [1.0, 0, 0, 0], [0, 0, 0, 2.0]]


def test_verl_estimators_by_name_give_known_values():
    from echorl.local.config import build_algo_config, load_config

    algo = build_algo_config(load_config())
    mask = torch.ones(8, 3)
    scores = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    uids = np.array(["a"] * 4 + ["b"] * 4, dtype=object)
    rew = token_level_rewards(scores, mask)
    grpo = compute_advantages("grpo", rew, mask, uids, algo)
    # group a: mean 0.75, unbiased std 0.5 -> (1-0.75)/0.5 = 0.5, (0-0.75)/0.5 = -1.5; group b: all 0
    torch.testing.assert_close(grpo[:, 0], torch.tensor([0.5, -1.5, 0.5, 0.5, 0, 0, 0, 0]), atol=1e-5, rtol=0)
    assert torch.equal(grpo, grpo[:, :1].expand(8, 3))
    rloo = compute_advantages("rloo", rew, mask, uids, algo)
    # leave-one-out: 1 - 2/3 = 1/3, 0 - 1 = -1
    torch.testing.assert_close(rloo[:4, 0], torch.tensor([1 / 3, -1.0, 1 / 3, 1 / 3]), atol=1e-6, rtol=0)
    assert torch.all(rloo[4:] == 0)


def test_trim_padding_cuts_only_all_padding_columns():
    from echorl.logprobs import trim_padding

    am = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 0]])  # P = 4
    assert trim_padding(am, 4) == (1, 6)
    # the last prompt column and the first response column are always kept
    assert trim_padding(torch.tensor([[0, 0, 0, 1, 1, 0]]), 4) == (3, 5)
    assert trim_padding(torch.tensor([[1, 1, 1, 1, 1, 1]]), 4) == (0, 6)


def _full_width(model, input_ids, attention_mask, responses, temperature, *, with_entropy, bucket_rows=None):
    """The reference of bucketed_logprobs: one forward over the whole [b, P+L] (micro-)batch."""
    return policy_logprobs(model, input_ids, attention_mask, responses, temperature, with_entropy=with_entropy)


def test_actor_update_in_length_buckets_equals_the_full_width_update(tmp_path, monkeypatch):
    """Each micro-batch runs in length buckets on their own columns (bucketed_logprobs); the
    reference runs every micro-batch at the whole batch's width in one forward. Same data and
    weights: the same update and metrics up to float summation order."""

    import echorl.local.update as upd
    from echorl.core.config import EchoConfig
    from echorl.local import load_config
    from echorl.local.config import build_actor_config
    from echorl.logprobs import bucketed_logprobs, trim_padding
    from echorl.loss import EchoLoss

    model, tok = make_model(seed=2)
    torch.manual_seed(4)
    # short and long prompts in different micro-batches; EOS = a frequent id, so lengths differ
    rb = generate_rollouts(model, tok, [[5, 6], [7, 8, 9, 10, 11, 12, 13], [14, 15, 16], [17, 18, 19, 20, 21, 22]],
                           n=2, max_response_length=12, temperature=1.0, top_p=1.0, top_k=-1, eos_ids=[2, 7, 9],
                           pad_id=2)
    B, L = rb.responses.shape
    P = rb.prompts.shape[1]
    widths = [trim_padding(rb.attention_mask[r:r + 2], P) for r in range(0, B, 2)]
    assert any(c1 - c0 < P + L for c0, c1 in widths)  # the trimmed path really differs
    # old-policy pass: buckets of 3 rows in chunks of 5 vs one full-width forward
    lp_b, ent_b = bucketed_logprobs(model.eval(), rb.input_ids, rb.attention_mask, rb.responses, 0.8,
                                    with_entropy=True, bucket_rows=3)
    with torch.no_grad():
        lp_f, ent_f = _full_width(model, rb.input_ids, rb.attention_mask, rb.responses, 0.8, with_entropy=True)
    m = rb.response_mask.bool()
    torch.testing.assert_close(lp_b[m], lp_f[m], rtol=0, atol=1e-5)
    torch.testing.assert_close(ent_b[m], ent_f[m], rtol=0, atol=1e-5)
    cfg = load_config(base_overrides(tmp_path, **{"actor_rollout_ref.actor.ppo_mini_batch_size": 2,
                                                 "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 4,
                                                 "actor_rollout_ref.actor.entropy_coeff": 0.01,
                                                 "actor_rollout_ref.actor.optim.clip_grad": 1e9}))
    actor_cfg = build_actor_config(cfg)
    old_lp, _ = old_policy_pass(model, rb.input_ids, rb.attention_mask, rb.responses, 1.0, 16)
    g = torch.Generator().manual_seed(5)
    batch = {"prompts": rb.prompts, "responses": rb.responses, "input_ids": rb.input_ids,
             "attention_mask": rb.attention_mask, "response_mask": rb.response_mask,
             "old_log_probs": old_lp + 0.1 * torch.randn(B, L, generator=g),
             "advantages": torch.randn(B, 1, generator=g).expand(B, L) * rb.response_mask,
             "echo_mask": rb.response_mask.bool() & (torch.arange(L) < 3), "echo_denom": torch.full((B,), 5.0)}
    loss_fn = EchoLoss(actor_cfg, EchoConfig(coef=0.5))

    def run():
        m, _ = make_model(seed=2)
        opt = torch.optim.SGD(m.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        with monkeypatch.context() as mp:  # 2 buckets of 2 rows per micro-batch of 4
            mp.setattr("echorl.logprobs.BUCKET_ROWS", 2)
            metrics = upd.actor_update(m, opt, sched, loss_fn, batch, actor_cfg, n=2, temperature=1.0)
        return m.state_dict(), metrics

    w_trim, m_trim = run()
    monkeypatch.setattr(upd, "bucketed_logprobs", functools.partial(_full_width))  # the full-width reference
    w_full, m_full = run()
    w0 = make_model(seed=2)[0].state_dict()
    assert any(not torch.equal(w_full[k], w0[k]) for k in w0)
    for k in w0:
        torch.testing.assert_close(w_trim[k], w_full[k], rtol=1e-5, atol=1e-6)
    assert m_trim.keys() == m_full.keys()
    for k in m_full:
        assert m_trim[k] == pytest.approx(m_full[k], rel=1e-4, abs=1e-6), k
