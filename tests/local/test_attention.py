"""echorl/models/attention.py: GQA attention without repeat_kv equals transformers' sdpa."""

from __future__ import annotations

import torch
from engine_support import make_model

from echorl.local.rollout import generate_rollouts
from echorl.logprobs import old_policy_pass, policy_logprobs
from echorl.models.attention import GQA_SDPA, gqa_attention


def _gqa_model():
    model, tok = make_model()  # 2 query heads sharing 1 key/value head
    assert model.model.layers[0].self_attn.num_key_value_groups == 2
    assert model.config._attn_implementation == "sdpa"
    return model, tok


def test_outputs_bit_identical_and_gradients_close_to_sdpa():
    torch.set_num_threads(1)
    model, tok = _gqa_model()
    torch.manual_seed(0)
    rb = generate_rollouts(model, tok, [[5, 6, 7, 8], [9, 10], [11, 12, 13]], n=3, max_response_length=12,
                           temperature=1.0, top_p=1.0, top_k=-1, eos_ids=[2], pad_id=2, decode="generate")
    with torch.no_grad():
        ref = model(input_ids=rb.input_ids, attention_mask=rb.attention_mask).logits
        with gqa_attention(model):
            assert model.config._attn_implementation == GQA_SDPA
            got = model(input_ids=rb.input_ids, attention_mask=rb.attention_mask).logits
    assert model.config._attn_implementation == "sdpa"  # switched back
    assert torch.equal(got, ref)

    def grads(use_gqa):
        model.zero_grad()
        ctx = gqa_attention(model) if use_gqa else torch.enable_grad()
        with ctx:
            lp, _ = policy_logprobs(model, rb.input_ids, rb.attention_mask, rb.responses, 1.0)
        (lp * rb.response_mask).sum().backward()
        return lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    lp0, g0 = grads(False)
    lp1, g1 = grads(True)
    assert torch.equal(lp0, lp1)
    for n in g0:  # the key/value gradients are summed over the shared heads in another order
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-6)
    assert any(float(g.abs().max()) > 0 for g in g0.values())


def test_engine_paths_use_it_and_match_plain_sdpa(monkeypatch):
    import echorl.models.attention as att

    model, tok = _gqa_model()
    calls = []
    real = att.gqa_sdpa_forward
    monkeypatch.setattr(att, "gqa_sdpa_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(1)
    rb = generate_rollouts(model, tok, [[5, 6, 7], [9, 10]], n=2, max_response_length=8, temperature=1.0, top_p=1.0,
                           top_k=-1, eos_ids=[2], pad_id=2)
    assert calls  # the compact decode ran through gqa_sdpa_forward
    calls.clear()
    lp, ent = old_policy_pass(model, rb.input_ids, rb.attention_mask, rb.responses, 1.0, 16)
    assert calls and model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        ref, _ = policy_logprobs(model, rb.input_ids, rb.attention_mask, rb.responses, 1.0)
    m = rb.response_mask.bool()
    torch.testing.assert_close(lp[m], ref[m], rtol=0, atol=1e-6)


def test_other_attention_implementations_are_left_alone():
    model, _ = make_model()
    model.set_attn_implementation("eager")
    with gqa_attention(model):
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == "eager"
