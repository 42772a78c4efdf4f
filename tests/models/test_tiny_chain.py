"""Tests of the testbed model shipped in echorl/assets/tiny-chain: it is the build of CHAIN_RECIPE,
loads without building, its regime at T=1.0 is the one EchoRL needs (part of the prompts solved,
rollouts of a prompt that differ, all three group kinds), and the warm start's noisy data and
constant schedule behave as documented."""

from __future__ import annotations

import json

import pytest
import torch

from echorl.models import tiny
from echorl.models.char_tokenizer import build_char_tokenizer
from echorl.models.regime import rollout_regime
from echorl.models.tiny import CHAIN_RECIPE, META_FILE, RECIPES, load_tiny_model, sft_rows, shipped_dir
from echorl.tasks import chain

SHIPPED = shipped_dir(CHAIN_RECIPE)


@pytest.fixture(scope="module")
def meta():
    return json.loads((SHIPPED / META_FILE).read_text())


def test_shipped_folder_is_the_build_of_chain_recipe(meta):
    assert SHIPPED.name == "tiny-chain" and RECIPES["tiny-chain"] is CHAIN_RECIPE
    assert meta["recipe"] == CHAIN_RECIPE  # rebuild: python scripts/build_tiny_model.py --recipe tiny-chain --ship
    assert meta["num_params"] < 1_000_000
    assert (SHIPPED / "model.safetensors").stat().st_size < 4 * 2**20
    reg = meta["regime_T1"]  # 128 dev prompts x 8 rollouts at T=1.0, measured by the build
    assert 0.30 <= reg["success"] <= 0.70
    assert reg["groups/all_success"] > 0 and reg["groups/mixed"] > 0.3 and reg["groups/all_fail"] > 0
    assert reg["distinct"] > 2.0 and reg["entropy"] > 0.05


def test_loads_shipped_model_by_name_without_building(monkeypatch, tmp_path):
    from echorl.models.loading import load_model

    monkeypatch.setenv("ECHORL_CACHE", str(tmp_path / "empty"))

    def no_build(*a, **k):
        raise AssertionError("built a model although tiny-chain is shipped")

    monkeypatch.setattr(tiny, "build_tiny_model", no_build)
    model, tok = load_model("tiny-chain")
    assert sum(p.numel() for p in model.parameters()) == json.loads((SHIPPED / META_FILE).read_text())["num_params"]
    assert tiny.boundary_ids(tok) == (3,) and not (tmp_path / "empty").exists()


def test_shipped_model_regime_on_dev():
    """Fresh samples (another seed than the build's): the regime holds, and a correct solution
    really is produced by sampling (checked with the task's exact verifier)."""
    torch.set_num_threads(1)
    model, tok = load_tiny_model(build_if_missing=False, recipe=CHAIN_RECIPE)
    rows = chain.generate(48, split="dev")
    reg = rollout_regime(model, tok, rows, chain.score, n=8, temperature=1.0, seed=123)
    assert 0.2 <= reg["success"] <= 0.8, reg
    assert reg["groups/mixed"] > 0.2 and reg["distinct"] > 2.0, reg
    assert abs(reg["groups/all_success"] + reg["groups/mixed"] + reg["groups/all_fail"] - 1.0) < 1e-9


def test_noisy_warm_start_rows_and_constant_schedule_prefixes():
    rec = dict(CHAIN_RECIPE, train_rows=400, noise=0.5)
    rows = sft_rows(rec, 4, 400)
    clean = chain.generate(400, seed=10_000 + rec["seed"], split="train")
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in clean]
    wrong = sum(chain.score(r["solution"], r["answer"]) == 0.0 for r in rows)
    assert 150 <= wrong <= 250  # about half corrupted, seeded
    assert sft_rows(rec, 4, 400) == rows
    assert sum(chain.score(r["solution"], r["answer"]) == 0.0 for r in sft_rows(dict(rec, noise=0.0), 4, 400)) == 0
    # constant rate: the first k steps of a longer warm start are the k-step warm start
    from transformers import Qwen2ForCausalLM

    small = dict(rec, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
                 batch_size=4, warmup_steps=2, train_rows=40)
    tok = build_char_tokenizer()
    states = {}
    for steps in (3, 5):
        torch.manual_seed(0)
        m = Qwen2ForCausalLM(tiny.tiny_config(len(tok), small))
        seen = []

        def snap(k, mm, steps=steps, seen=seen):
            seen.append(k)
            if k == 3:
                states[steps] = {n: p.detach().clone() for n, p in mm.state_dict().items()}

        tiny.warm_start(m, tok, dict(small, warm_start_steps=steps), on_step=snap)
        assert seen == list(range(1, steps + 1))
    assert all(torch.equal(states[3][n], states[5][n]) for n in states[3])
