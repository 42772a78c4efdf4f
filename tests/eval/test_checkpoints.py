"""echorl/models/loading.py load_policy and echorl/eval/export.py: engine checkpoint -> Hugging Face folder with the same outputs."""

from __future__ import annotations

import json

import pytest
import torch

from echorl.checkpoints import save_checkpoint
from echorl.eval.cli import export_main
from echorl.eval.export import export_checkpoint
from echorl.models.loading import load_model, load_policy, resolve_checkpoint
from echorl.models.tiny import load_tiny_model


@pytest.fixture
def engine_run(tmp_path):
    """A run folder with one checkpoint in the engine's format: the tiny model with moved weights."""
    model, tok = load_tiny_model()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints", 3, {"model": model.state_dict(), "config": {"model": {"name": "tiny"}}})
    return run, model, tok


def test_export_loads_with_auto_classes_and_gives_the_same_logits(engine_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, model, tok = engine_run
    assert resolve_checkpoint(run) == run / "checkpoints" / "global_step_3"
    assert export_main([str(run), str(tmp_path / "hf")]) == 0
    out = tmp_path / "hf"
    assert json.loads((out / "echorl_export.json").read_text())["step"] == 3
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    hf_tok = AutoTokenizer.from_pretrained(out)
    text = "Compute (3+4)*2.\n3+4=7\n"
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids[0].tolist()
    assert hf_tok.decode(ids[0]) == text
    with torch.no_grad():
        ref = model.eval()(ids).logits
        got = hf(ids).logits
    assert torch.equal(ref, got)
    base, _ = load_tiny_model()  # the export holds the checkpoint's weights, not the base model's
    with torch.no_grad():
        assert not torch.allclose(base(ids).logits, got)


def test_load_policy_accepts_run_checkpoints_and_step_folders(engine_run):
    run, model, _ = engine_run
    for path in (run, run / "checkpoints", run / "checkpoints" / "global_step_3"):
        pol = load_policy(str(path))
        assert pol.step == 3
        sd = pol.model.state_dict()
        assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())


def test_bad_paths_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"is not a built-in model \(tiny, tiny-chain, smollm2\)"):
        load_policy(str(tmp_path))
    with pytest.raises(ValueError, match="model merger"):
        export_checkpoint(tmp_path, tmp_path / "out")


def test_every_built_in_model_loads_as_a_policy():
    """``echorl eval tiny-chain`` evaluates the testbed model: the same weights as the engine loads."""
    pol = load_policy("tiny-chain")
    model, _ = load_model("tiny-chain")
    assert pol.source == "model tiny-chain" and not pol.model.training
    assert all(torch.equal(pol.model.state_dict()[k], v) for k, v in model.state_dict().items())
    tiny, _ = load_model("tiny")
    assert not all(torch.equal(tiny.state_dict()[k], v) for k, v in model.state_dict().items())


def test_tokenizer_only_for_vllm_needs_a_hugging_face_folder(engine_run, tmp_path):
    run, _, tok = engine_run
    with pytest.raises(ValueError, match="echorl export"):
        load_policy(str(run), with_model=False)
    export_checkpoint(run, tmp_path / "hf")
    pol = load_policy(str(tmp_path / "hf"), with_model=False)
    assert pol.model is None and pol.hf_dir == str(tmp_path / "hf")
    assert pol.tokenizer("1+2=3\n")["input_ids"] == tok("1+2=3\n")["input_ids"]
