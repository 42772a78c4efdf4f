"""echorl/eval/backends.py: batched transformers generation (seeded, RNG-neutral) and the vLLM guard."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from echorl.eval.backends import SamplingSettings, TransformersBackend, make_backend
from echorl.models.tiny import load_tiny_model


@pytest.fixture(scope="module")
def tiny():
    return load_tiny_model()


def _ids(tok, prompts):
    from echorl.eval.benchmarks import prompt_ids

    return prompt_ids(tok, [{"prompt": p} for p in prompts])


def test_generation_is_seeded_batch_layout_and_leaves_the_rng_alone(tiny):
    model, tok = tiny
    ids = _ids(tok, ["Compute 3+4.", "Compute ((2*3)+5)-1."])  # different lengths: left padding
    be = TransformersBackend(model, tok, batch_size=4)
    s = SamplingSettings(n=3, temperature=1.0, max_new_tokens=40, seed=5)
    state = torch.get_rng_state()
    out = be.generate(ids, s)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is untouched
    assert [len(x) for x in out] == [3, 3]
    assert out == be.generate(ids, s)  # same seed, same samples
    assert out != be.generate(ids, SamplingSettings(n=3, temperature=1.0, max_new_tokens=40, seed=6))
    for c in (c for cs in out for c in cs):
        assert 1 <= c.num_tokens <= 40
        if c.num_tokens < 40:  # stopped before the limit: only an EOS stops generation
            assert c.finished
        assert tok.decode(tok(c.text, add_special_tokens=False)["input_ids"]) == c.text


def test_greedy_matches_a_single_prompt_unpadded_run(tiny):
    model, tok = tiny
    ids = _ids(tok, ["Compute 7-2.", "Compute ((9+1)*2)-3."])
    be = TransformersBackend(model, tok, batch_size=8)
    s = SamplingSettings(n=1, temperature=0.0, max_new_tokens=40)
    both = be.generate(ids, s)
    alone = [be.generate([x], s)[0] for x in ids]  # no padding at all
    assert [c[0].text for c in both] == [c[0].text for c in alone]
    assert both[0][0].finished and both[0][0].text.endswith("Answer: 5")


def test_sampling_settings_errors():
    with pytest.raises(ValueError, match="n \\(samples per problem\\)"):
        SamplingSettings(n=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingSettings(top_p=0.0)
    with pytest.raises(ValueError, match="greedy"):
        SamplingSettings(n=2, temperature=0.0)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed: the guard does not apply")
def test_vllm_backend_without_vllm_names_the_fix(tiny, tmp_path):
    with pytest.raises(ImportError, match="needs the vllm package"):
        make_backend("vllm", None, tiny[1], str(tmp_path), 8)
    with pytest.raises(ValueError, match="echorl export"):
        make_backend("vllm", None, tiny[1], None, 8)
