"""echorl/local/rollout.py: the compact decode loop samples exactly what ``model.generate`` samples."""

from __future__ import annotations

import pytest
import torch
from engine_support import make_model

from echorl.local.rollout import compact_decode_supported, generate_rollouts

PROMPTS = [[5, 6, 7, 8, 9, 10], [9, 10], [11, 12, 13], [14, 15, 16, 17]]


def _both(model, tok, seed, **kw):
    out = {}
    for decode in ("generate", "compact"):
        torch.manual_seed(seed)
        out[decode] = generate_rollouts(model, tok, PROMPTS, decode=decode, pad_id=tok.pad_token_id, **kw)
    return out["generate"], out["compact"]


@pytest.mark.parametrize("temperature,top_p,top_k", [(1.0, 1.0, -1), (0.7, 0.9, 20), (1.5, 0.8, 0)])
def test_compact_decode_equals_generate(temperature, top_p, top_k):
    torch.set_num_threads(1)
    model, tok = make_model()
    # EOS = a frequent id of the random model, so rows end at different steps and get dropped
    # from the cache while others keep going (the case the compact loop exists for)
    torch.manual_seed(0)
    probe = generate_rollouts(model, tok, PROMPTS, n=4, max_response_length=24, temperature=temperature, top_p=top_p,
                              top_k=top_k, eos_ids=[tok.pad_token_id], pad_id=tok.pad_token_id, decode="generate")
    eos = int(torch.mode(probe.responses[:, :8].flatten()).values)
    ended_early = 0
    for seed in range(3):
        ref, fast = _both(model, tok, seed, n=4, max_response_length=24, temperature=temperature, top_p=top_p,
                          top_k=top_k, eos_ids=[eos])
        assert ref.responses.shape == fast.responses.shape
        assert torch.equal(ref.responses, fast.responses)
        assert torch.equal(ref.attention_mask, fast.attention_mask)
        assert torch.equal(ref.input_ids, fast.input_ids)
        lens = ref.response_mask.sum(-1)
        ended_early += int((lens < lens.max()).sum())
    assert ended_early > 0  # rows really were dropped mid-generation


def test_unsupported_generation_config_falls_back_to_generate():
    model, tok = make_model()
    assert compact_decode_supported(model) is None
    model.generation_config.repetition_penalty = 1.3
    assert "repetition_penalty" in compact_decode_supported(model)
    ref, fast = _both(model, tok, 0, n=2, max_response_length=12, temperature=1.0, top_p=1.0, top_k=-1,
                      eos_ids=[tok.pad_token_id])
    assert torch.equal(ref.responses, fast.responses)


def test_bad_decode_name_is_refused():
    model, tok = make_model()
    with pytest.raises(ValueError, match="decode must be 'compact' or 'generate', got 'fast'"):
        generate_rollouts(model, tok, PROMPTS, n=2, max_response_length=4, temperature=1.0, top_p=1.0, top_k=-1,
                          eos_ids=[1], pad_id=tok.pad_token_id, decode="fast")
