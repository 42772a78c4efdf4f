"""Tests for echorl/models/tiny.py and char_tokenizer.py: tokenizer, chat template, build, cache."""

from __future__ import annotations

import json
import time

import pytest
import torch

from echorl.models.char_tokenizer import CHARS, build_char_tokenizer
from echorl.models.tiny import (
    RECIPE,
    boundary_ids,
    build_tiny_model,
    encode_sft_batch,
    load_tiny_model,
    sample_success,
    warm_start,
)
from echorl.tasks import arithmetic

# A short recipe: same architecture, a few warm-start steps (the full build is ~1-2 min on 2 cores).
SHORT = dict(RECIPE, warm_start_steps=4, batch_size=8, warmup_steps=2, train_rows=64)



@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "tiny"
    meta = build_tiny_model(path, SHORT, eval_rows=10)
    return path, meta


def test_tokenizer_round_trips_and_is_char_level(tok):
    text = "Compute ((3+4)*2)-5.\n3+4=7\n7*2=14\n14-5=9\nAnswer: 9"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == len(text)  # one token per character
    assert tok.decode(ids) == text
    every = "".join(CHARS)
    ids = tok.encode(every, add_special_tokens=False)
    assert ids == list(range(3, 3 + len(CHARS)))  # the task alphabet is ids 3.. in order
    assert tok.decode(ids) == every
    # Outside the alphabet: one token per UTF-8 byte, still a lossless round trip.
    assert len(tok.encode("é", add_special_tokens=False)) == 2
    assert tok.decode(tok.encode("x é ü\tλ", add_special_tokens=False)) == "x é ü\tλ"
    assert len(tok) == 3 + 256 == 259


def test_newline_is_one_token_and_the_boundary(tok):
    nl = tok.encode("\n", add_special_tokens=False)
    assert nl == [3]
    assert tok.encode("\n\n", add_special_tokens=False) == [3, 3]
    assert boundary_ids(tok) == (3,)
    from echorl import EchoConfig

    assert EchoConfig(boundary="auto").resolve_boundary(tok).boundary_token_ids == (3,)


def test_autotokenizer_reload_is_identical(tok, tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config

    tok.save_pretrained(tmp_path)
    Qwen2Config(vocab_size=len(tok)).save_pretrained(tmp_path)  # AutoTokenizer reads model_type
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(tok, PreTrainedTokenizerFast) and isinstance(tok2, PreTrainedTokenizerFast)
    text = "<|im_start|>user\nCompute 3+4.<|im_end|>\n3+4=7\nAnswer: 7\n"
    assert tok2.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    assert tok2.get_vocab() == tok.get_vocab()


def test_special_tokens_and_chat_template(tok):
    assert tok.eos_token == tok.pad_token == "<|im_end|>"
    assert tok.eos_token_id == tok.pad_token_id == 2
    assert tok.convert_tokens_to_ids("<|im_start|>") == 1
    text = tok.apply_chat_template([{"role": "user", "content": "Compute 3+4."}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == "<|im_start|>user\nCompute 3+4.<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids[0] == 1 and ids.count(2) == 1 and len(ids) == len(text) - 2 * len("<|im_start|>") - len("<|im_end|>") + 3
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "user\nCompute 3+4.\nassistant\n"


def test_sft_batch_masks_prompt_and_padding(tok):
    rows = arithmetic.generate(3, seed=0)
    ids, att, labels = encode_sft_batch(tok, rows)
    for i, r in enumerate(rows):
        lab = labels[i][labels[i] != -100].tolist()
        assert tok.decode(lab) == r["solution"] + "<|im_end|>"
        n = int(att[i].sum())
        assert (labels[i, n:] == -100).all() and (att[i, :n] == 1).all()


def test_warm_start_is_seeded_and_lowers_loss(tok):
    from transformers import Qwen2ForCausalLM

    from echorl.models.tiny import tiny_config

    rec = dict(SHORT, warm_start_steps=6)
    curves = []
    for _ in range(2):
        torch.manual_seed(0)
        m = Qwen2ForCausalLM(tiny_config(len(tok), rec))
        curves.append(warm_start(m, tok, rec))
    assert curves[0] == curves[1]
    assert curves[0][-1] < curves[0][0] - 0.5  # from ~ln(259)=5.6 down


def test_build_save_reload_equal_weights_and_fast(built, tok):
    path, meta = built
    assert meta["recipe"] == SHORT
    assert 200_000 < meta["num_params"] < 1_000_000
    assert set(meta["sampled_success_T1"]) >= {"overall", "level/1"}
    saved = json.loads((path / "echorl_tiny.json").read_text())
    assert saved["num_params"] == meta["num_params"] and saved["boundary_ids"] == [3]
    t0 = time.perf_counter()
    model, tok2 = load_tiny_model(path, build_if_missing=False, recipe=SHORT)
    assert time.perf_counter() - t0 < 3.0  # < 1 s on an idle machine; slack for a shared one
    assert sum(p.numel() for p in model.parameters()) == meta["num_params"]
    assert model.config.model_type == "qwen2" and model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model2, _ = load_tiny_model(path, build_if_missing=False, recipe=SHORT)
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert tok2.get_vocab() == tok.get_vocab() and tok2.chat_template == tok.chat_template
    assert tok2.eos_token_id == 2 and tok2.padding_side == "left"
    x = torch.tensor([tok2.encode("1+1=2\n", add_special_tokens=False)])
    logits = model(input_ids=x).logits
    assert logits.shape == (1, 6, len(tok2)) and torch.isfinite(logits).all()


def test_rebuilds_for_another_recipe_or_refuses(built):
    path, _ = built
    with pytest.raises(FileNotFoundError, match="build_tiny_model.py"):
        load_tiny_model(path, build_if_missing=False)  # default recipe != SHORT
    with pytest.raises(FileNotFoundError):
        load_tiny_model(path.parent / "missing", build_if_missing=False, recipe=SHORT)


def test_sample_success_reports_levels(built):
    path, _ = built
    model, tok = load_tiny_model(path, build_if_missing=False, recipe=SHORT)
    rows = arithmetic.generate(10, seed=1)
    res = sample_success(model, tok, rows, max_new_tokens=8)
    assert set(res) == {"overall", "level/1", "level/2", "level/3", "level/4", "level/5"}
    assert all(0.0 <= v <= 1.0 for v in res.values())
