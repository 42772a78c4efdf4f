"""echorl.trl.generation: the LogitsProcessor that records token entropies during generate, on
hand-computed cases and on a real ``generate`` call of the tiny-chain model."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GenerationConfig

from echorl.trl.generation import GenerationEntropy, logits_changing_options, recording_generate
from echorl.trl.testbed import load_chain_model


def test_records_the_entropy_of_the_temperature_scaled_distribution_and_returns_the_scores():
    rec = GenerationEntropy(temperature=2.0)
    ids = torch.zeros(2, 3, dtype=torch.long)
    s1 = torch.tensor([[0.0, 2 * math.log(3.0)], [5.0, 5.0]])  # /2 -> [0, ln 3]: p = (1/4, 3/4); uniform
    s2 = torch.tensor([[0.0, -1e4], [0.0, 0.0]])  # a point mass; uniform
    rec.calls = 1
    assert rec(ids, s1) is s1 and rec(ids, s2) is s2
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    expected = torch.tensor([[h, 0.0], [math.log(2.0), math.log(2.0)]])
    torch.testing.assert_close(rec.result(2, 2), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(rec.result(2, 1), expected[:, :1], rtol=0, atol=1e-6)


def test_refuses_a_batch_it_did_not_see_whole():
    rec = GenerationEntropy(temperature=1.0)
    assert rec.result(2, 1) is None and "generate ran 0 times" in rec.refused
    rec.begin()
    rec.calls = 1
    rec(None, torch.zeros(2, 4))
    assert rec.result(3, 1) is None and "2 rows x 1 steps" in rec.refused and "3 rows x 1" in rec.refused
    rec.begin()
    rec.calls = 2
    rec(None, torch.zeros(2, 4))
    assert rec.result(2, 1) is None and "2 times" in rec.refused
    with pytest.raises(ValueError, match="positive sampling temperature"):
        GenerationEntropy(0.0)


def test_names_the_options_that_change_the_logits_before_sampling():
    plain = GenerationConfig(do_sample=True, temperature=0.7, top_k=5, top_p=0.9, min_p=0.1, repetition_penalty=1.0)
    assert logits_changing_options(plain, None) == []  # warpers act after the recorder: allowed
    bad = GenerationConfig(repetition_penalty=1.2, no_repeat_ngram_size=3, suppress_tokens=[7])
    assert logits_changing_options(plain, bad) == ["repetition_penalty=1.2", "no_repeat_ngram_size=3",
                                                   "suppress_tokens=[7]"]


def test_recording_generate_sees_the_logits_generate_samples_from():
    """On a real generate call: the recorded entropies are those of the returned raw logits at T,
    the sampled tokens are those of an unrecorded call at the same seed, and the model's own
    ``generate`` is back afterwards."""
    torch.set_num_threads(1)
    model, tok = load_chain_model()
    model.eval()
    ids = torch.tensor([tok.encode("1+2")] * 3)
    cfg = GenerationConfig(do_sample=True, temperature=0.5, top_k=4, max_new_tokens=6, pad_token_id=0,
                           eos_token_id=None)
    torch.manual_seed(0)
    ref = model.generate(ids, generation_config=cfg, output_logits=True, return_dict_in_generate=True)
    rec = GenerationEntropy(0.5)
    torch.manual_seed(0)
    with recording_generate(model, rec):
        out = model.generate(ids, generation_config=cfg, output_logits=True, return_dict_in_generate=True)
    assert "generate" not in vars(model)
    assert torch.equal(out.sequences, ref.sequences)
    got = rec.result(3, 6)
    logp = torch.log_softmax(torch.stack(ref.logits, 1).float() / 0.5, dim=-1)  # [3, 6, V]
    torch.testing.assert_close(got, -(logp.exp() * logp).sum(-1), rtol=1e-6, atol=1e-6)
    # a config that changes the logits: the batch is refused and generate runs as without the recorder
    rec.begin()
    with recording_generate(model, rec):
        model.generate(ids, generation_config=GenerationConfig(**cfg.to_dict() | {"repetition_penalty": 1.3}))
    assert rec.result(3, 6) is None and "repetition_penalty=1.3" in rec.refused
