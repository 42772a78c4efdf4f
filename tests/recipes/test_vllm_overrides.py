"""The recipes' ``actor_rollout_ref.rollout.engine_kwargs.vllm.hf_overrides`` against verl 0.9.1's vLLM
server (``verl/workers/rollout/vllm_rollout/vllm_async_server.py``, read from the installed source:
the module imports vLLM, which is CUDA-only, at its top).

verl builds vLLM's arguments as ``{..., "hf_overrides": <verl's own>, ..., **engine_kwargs}``, so a
config's ``hf_overrides`` replaces verl's instead of adding to it. verl's own comes from
``_apply_quantization`` and holds only a quantization config (fp8 rollout, QAT). The tests run that
function, as verl ships it, on every recipe's composed rollout config: it sets nothing there, so the
recipes' ``max_position_embeddings`` override is all vLLM gets and loses nothing; with fp8 it would
set a quantization config that the recipes' dict replaces (recipes/README.md says what to do then).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import textwrap
import typing
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
METHODS = sorted(p.parent.name for p in (ROOT / "recipes").glob("*/*.yaml") if p.stem == p.parent.name)
SERVER = Path(importlib.util.find_spec("verl").submodule_search_locations[0]) / "workers" / "rollout" / "vllm_rollout" / \
    "vllm_async_server.py"


def compose_recipe(method: str, extra: list[str] | None = None):
    """The recipe's config as scripts/launch_common.sh composes it (EchoRL on)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="echorl.config", version_base=None):
        return compose(config_name="echorl_trainer", overrides=[
            f"hydra.searchpath=[pkg://verl.trainer.config,file://{ROOT / 'recipes'}]", f"+{method}={method}",
            *(extra or [])])


def _function(name: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    tree = ast.parse(SERVER.read_text())
    hits = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name]
    assert len(hits) == 1, f"{name} in {SERVER}: {len(hits)} definitions"
    return hits[0]


def verl_apply_quantization(rollout_cfg, hf_config, patched: list[str]):
    """verl's ``vLLMHttpServer._apply_quantization``, compiled from its source, called on a server whose
    ``config`` is ``rollout_cfg`` (verl's ``RolloutConfig``); vLLM's patch hook only records its call."""
    fn = _function("_apply_quantization")
    src = textwrap.dedent(ast.get_source_segment(SERVER.read_text(), fn))
    namespace = {"Optional": typing.Optional, "os": os, "apply_vllm_quant_patches": lambda: patched.append("fp8")}
    saved = os.environ.get("VERL_VLLM_FP8_QUANT_ENABLED")
    try:
        exec(compile(src, str(SERVER), "exec"), namespace)
        server = SimpleNamespace(config=rollout_cfg, model_config=SimpleNamespace(hf_config=hf_config))
        return namespace["_apply_quantization"](server)
    finally:  # verl sets this for its subprocesses
        if saved is None:
            os.environ.pop("VERL_VLLM_FP8_QUANT_ENABLED", None)
        else:
            os.environ["VERL_VLLM_FP8_QUANT_ENABLED"] = saved


def test_engine_kwargs_replace_verls_hf_overrides():
    """In the dict of vLLM's arguments, ``**engine_kwargs`` comes after the ``hf_overrides`` key, whose
    value is what ``_apply_quantization`` returned: a config's dict wins whole."""
    launch = _function("launch_server")
    dicts = [n for n in ast.walk(launch) if isinstance(n, ast.Dict)
             and any(isinstance(k, ast.Constant) and k.value == "hf_overrides" for k in n.keys)]
    assert len(dicts) == 1, len(dicts)
    keys = dicts[0].keys
    at = next(i for i, k in enumerate(keys) if isinstance(k, ast.Constant) and k.value == "hf_overrides")
    assert isinstance(dicts[0].values[at], ast.Name) and dicts[0].values[at].id == "hf_overrides"
    unpacked = [i for i, k in enumerate(keys) if k is None]
    assert [ast.unparse(dicts[0].values[i]) for i in unpacked] == ["engine_kwargs"] and unpacked[0] > at
    assigned = [ast.unparse(n) for n in ast.walk(launch) if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Tuple) and "hf_overrides" in ast.unparse(t) for t in n.targets)]
    assert assigned == ["quantization, hf_overrides = self._apply_quantization()"]


@pytest.mark.parametrize("method", METHODS)
def test_verl_sets_no_hf_overrides_for_the_recipes(method):
    """Every recipe's rollout (no quantization, no QAT) on Qwen2.5-Math-7B's architecture (no
    quantization config): verl's own hf_overrides is empty, so the recipe's dict is all vLLM gets."""
    from transformers import Qwen2Config
    from verl.utils.config import omega_conf_to_dataclass

    cfg = compose_recipe(method)
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    patched: list[str] = []
    assert verl_apply_quantization(rollout, Qwen2Config(num_hidden_layers=2), patched) == (None, {})
    assert patched == []
    assert dict(cfg.actor_rollout_ref.rollout.engine_kwargs.vllm.hf_overrides) == {"max_position_embeddings": 16384}


def test_with_fp8_rollout_verl_would_set_a_quantization_config_the_recipes_replace():
    """The case the recipes' dict would break: ``rollout.quantization=fp8`` makes verl put its block-fp8
    config in hf_overrides (the check above would fail if the recipes turned it on)."""
    from transformers import Qwen2Config
    from verl.utils.config import omega_conf_to_dataclass

    cfg = compose_recipe("grpo", extra=["actor_rollout_ref.rollout.quantization=fp8"])
    patched: list[str] = []
    quant, overrides = verl_apply_quantization(omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout),
                                               Qwen2Config(num_hidden_layers=2), patched)
    assert quant == "fp8" and patched == ["fp8"]
    assert overrides["quantization_config"]["quant_method"] == "fp8"
    assert overrides["quantization_config"]["ignored_layers"] == ["model.layers.0.mlp.gate", "model.layers.1.mlp.gate"]
    assert "quantization_config" not in cfg.actor_rollout_ref.rollout.engine_kwargs.vllm.hf_overrides
