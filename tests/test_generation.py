"""echorl/generation.py and echorl/prompts.py: left padding, EOS masks, sampling arguments, and
``generate_left_padded`` against a literal reference (one prompt at a time, token by token)."""

from __future__ import annotations

import pytest
import torch

from echorl.generation import eos_ids_of, generate_left_padded, left_pad, response_mask_from_eos, sampling_kwargs
from echorl.models.tiny import RECIPES, load_tiny_model
from echorl.prompts import encode_prompts, format_prompts


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return load_tiny_model(recipe=RECIPES["tiny-chain"])


def test_left_pad_right_aligns_each_row():
    ids, mask = left_pad([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]


def test_response_mask_keeps_the_first_eos_and_nothing_after():
    r = torch.tensor([[4, 2, 5, 2], [4, 4, 4, 4], [9, 0, 0, 0]])
    assert response_mask_from_eos(r, [2, 9]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_eos_ids_join_tokenizer_and_generation_config():
    class Tok:
        eos_token_id = 7

    class GC:
        eos_token_id = [3, 7]

    class Model:
        generation_config = GC()

    assert eos_ids_of(Tok(), Model()) == [3, 7]
    Tok.eos_token_id, GC.eos_token_id = None, None
    with pytest.raises(ValueError, match="no EOS token"):
        eos_ids_of(Tok(), Model())


def test_sampling_kwargs():
    assert sampling_kwargs(0.0, top_p=0.5, top_k=3) == {"do_sample": False}
    assert sampling_kwargs(0.7, top_p=0.9, top_k=-1) == {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 0}
    assert sampling_kwargs(1.0, top_k=5)["top_k"] == 5
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        sampling_kwargs(-0.1)


def _greedy_reference(model, prompt: list[int], eos: int, max_new: int) -> list[int]:
    """Slow literal greedy decoding: one unpadded prompt, the full sequence re-run for every token."""
    seq, out = list(prompt), []
    with torch.no_grad():
        for _ in range(max_new):
            logits = model(input_ids=torch.tensor([seq])).logits[0, -1]
            t = int(logits.argmax())
            out.append(t)
            seq.append(t)
            if t == eos:
                break
    return out


def test_greedy_generation_equals_token_by_token_decoding_of_each_prompt(tiny):
    model, tok = tiny
    model.train()  # generate_left_padded runs in eval mode and gives the mode back
    texts = format_prompts(tok, ["Compute 12*3 step by step.", "Compute 7+8*2 step by step."], "true")
    ids = encode_prompts(tok, texts)
    ids[1] = ids[1][4:]  # prompts of different lengths: the short one is left-padded
    eos, pad = tok.eos_token_id, tok.pad_token_id
    gen = generate_left_padded(model, ids, eos_ids=[eos], pad_id=pad, max_new_tokens=24, temperature=0.0, n=2)
    assert model.training
    P = max(len(x) for x in ids)
    assert gen.prompts.shape == (4, P) and gen.prompt_mask.sum(-1).tolist() == [len(ids[0])] * 2 + [len(ids[1])] * 2
    assert gen.prompts[3, P - len(ids[1]):].tolist() == ids[1]  # rows of a prompt adjacent, right-aligned
    for row in range(4):
        ref = _greedy_reference(model.eval(), ids[row // 2], eos, 24)
        k = int(gen.response_mask[row].sum())
        assert gen.responses[row, :k].tolist() == ref
        assert bool((gen.responses[row, k:] == pad).all())
    model.train()


def test_sampling_draws_from_the_global_rng_with_the_callers_seed(tiny):
    model, tok = tiny
    ids = encode_prompts(tok, format_prompts(tok, ["Compute 3*4 step by step."], "true"))
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append(generate_left_padded(model, ids, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id,
                                         max_new_tokens=16, temperature=1.0, n=4).responses)
    assert torch.equal(runs[0], runs[1])
    assert len({tuple(r) for r in runs[0].tolist()}) > 1  # n samples of one prompt differ


def test_format_prompts_renders_strings_and_chat_messages(tiny):
    _, tok = tiny
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Compute 1+1."}]
    templated = format_prompts(tok, ["Compute 1+1.", msgs], "auto")
    assert templated[0] == tok.apply_chat_template([{"role": "user", "content": "Compute 1+1."}], tokenize=False,
                                                   add_generation_prompt=True)
    assert format_prompts(tok, ["Compute 1+1.", msgs], "false") == ["Compute 1+1.", "Compute 1+1."]
    with pytest.raises(ValueError, match="prompt 0: must be a string or a list of chat messages"):
        format_prompts(tok, [3], "auto")
    with pytest.raises(ValueError, match="data.chat_template must be auto, true or false"):
        format_prompts(tok, ["x"], "yes")
