"""scripts/prepare_model.py: LUFFY's model config (rope_theta 40000, 16384 positions) as transformers reads it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "echorl" / "assets" / "tiny-qwen2-char"


def _script():
    spec = importlib.util.spec_from_file_location("prepare_model", ROOT / "scripts" / "prepare_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_model_gets_luffys_rotary_base_and_positions(tmp_path):
    """transformers 5 layout (rope_parameters): the copy loads with base 40000 in its rotary embedding."""
    from transformers import AutoModelForCausalLM

    pm = _script()
    before = (TINY / "config.json").read_text()
    out = tmp_path / "tiny-luffy"
    assert pm.main(["--model", str(TINY), "--out", str(out)]) == 0
    assert (TINY / "config.json").read_text() == before  # the source is untouched
    assert pm.effective_rope_theta(out) == (40000.0, 16384)
    assert (out / "model.safetensors").is_symlink() and (out / "model.safetensors").resolve() == (TINY / "model.safetensors").resolve()
    model = AutoModelForCausalLM.from_pretrained(str(out))
    dim = model.config.hidden_size // model.config.num_attention_heads
    want = 1.0 / 40000.0 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    assert torch.allclose(model.model.rotary_emb.inv_freq, want, rtol=1e-6)
    with pytest.raises(FileExistsError, match="--force"):
        pm.main(["--model", str(TINY), "--out", str(out)])
    pm.main(["--model", str(TINY), "--out", str(out), "--force", "--copy", "--rope-theta", "20000"])
    assert pm.effective_rope_theta(out) == (20000.0, 16384) and not (out / "model.safetensors").is_symlink()


def test_legacy_top_level_rope_theta_as_in_qwen25_math_7b(tmp_path):
    """Qwen2.5-Math-7B's config.json keeps rope_theta 10000 at the top level, 4096 positions."""
    pm = _script()
    src = tmp_path / "qwen-math"
    src.mkdir()
    cfg = json.loads((TINY / "config.json").read_text())
    cfg.pop("rope_parameters")
    cfg.update(rope_theta=10000.0, max_position_embeddings=4096)
    (src / "config.json").write_text(json.dumps(cfg))
    assert pm.effective_rope_theta(src) == (10000.0, 4096)
    out = pm.prepare_model(src, tmp_path / "out")
    written = json.loads((out / "config.json").read_text())
    assert written["rope_theta"] == 40000.0 and written["max_position_embeddings"] == 16384
    assert pm.effective_rope_theta(out) == (40000.0, 16384)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        pm.prepare_model(tmp_path / "out" / "missing", tmp_path / "x")
