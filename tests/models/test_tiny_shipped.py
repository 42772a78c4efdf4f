"""Tests of the tiny model shipped in the package (echorl/assets/tiny-qwen2-char): it is the build of
RECIPE, loads in about a second without building, and really solves level-1 arithmetic when sampled."""

from __future__ import annotations

import json
import re
import time

import pytest
import torch

from echorl.models import tiny
from echorl.models.tiny import META_FILE, RECIPE, SHIPPED_DIR, load_tiny_model, sample_success
from echorl.tasks import arithmetic


@pytest.fixture(scope="module")
def meta():
    return json.loads((SHIPPED_DIR / META_FILE).read_text())


def _listing():
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in SHIPPED_DIR.iterdir()}


def test_shipped_folder_is_the_build_of_recipe(meta):
    assert meta["recipe"] == RECIPE  # rebuild and re-ship when RECIPE changes (see tiny.py docstring)
    acc = meta["sampled_success_T1"]
    assert acc["level/1"] >= 0.85  # all-8-success groups are common: EchoRL has something to echo
    assert acc["level/5"] <= 0.5 and acc["overall"] < acc["level/1"]  # harder levels still fail
    assert 200_000 < meta["num_params"] <= 1_100_000
    names = {p.name for p in SHIPPED_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", META_FILE} <= names
    assert (SHIPPED_DIR / "model.safetensors").stat().st_size < 8 * 2**20  # fp32, a few MB


def test_default_load_uses_shipped_model_without_building(monkeypatch, tmp_path):
    monkeypatch.setenv("ECHORL_CACHE", str(tmp_path / "empty-cache"))

    def no_build(*a, **k):
        raise AssertionError("load_tiny_model() built a model although one is shipped")

    monkeypatch.setattr(tiny, "build_tiny_model", no_build)
    before = _listing()
    from transformers import AutoTokenizer, Qwen2ForCausalLM  # noqa: F401  (time the load, not the import)

    t0 = time.perf_counter()
    model, tok = load_tiny_model(build_if_missing=False)
    assert time.perf_counter() - t0 < 5.0  # ~0.3 s idle; slack for a shared machine
    assert _listing() == before  # read-only: nothing written into the package
    assert not (tmp_path / "empty-cache").exists()
    assert model.dtype == torch.float32 and not model.training
    assert sum(p.numel() for p in model.parameters()) == json.loads((SHIPPED_DIR / META_FILE).read_text())["num_params"]
    assert tiny.boundary_ids(tok) == (3,) and tok.eos_token_id == 2 and tok.padding_side == "left"


def test_other_recipe_does_not_use_shipped_model(monkeypatch, tmp_path):
    monkeypatch.setenv("ECHORL_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        load_tiny_model(build_if_missing=False, recipe=dict(RECIPE, seed=RECIPE["seed"] + 1))


def test_shipped_model_solves_sampled_level1():
    model, tok = load_tiny_model(build_if_missing=False)
    rows = arithmetic.generate(64, seed=777, levels=(1,))
    res = sample_success(model, tok, rows, temperature=1.0, max_new_tokens=32, batch_size=64, seed=0)
    assert res["level/1"] >= 0.7, res
