"""check_model_context: the model's position limit (its real config.json) against prompt + response,
for the actor and the rollout engine, with the recipes' override and LUFFY's config.json edit."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from verl_cfg_helpers import with_keys

from echorl.verl.config_checks import check_model_context, read_model_config

ROOT = Path(__file__).resolve().parents[2]
RECIPE_SEARCHPATH = f"hydra.searchpath=[pkg://verl.trainer.config,file://{ROOT / 'recipes'}]"


def write_model(folder: Path, max_positions: int = 4096, rope_theta: float = 10000.0) -> Path:
    """A tiny Qwen2 model folder's config.json (Qwen2.5-Math-7B's context fields, toy sizes)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 128,
        "max_position_embeddings": max_positions, "rope_theta": rope_theta, "torch_dtype": "float32"}))
    return folder


def _recipe(method: str, *overrides: str):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="echorl.config", version_base=None):
        return compose(config_name="echorl_trainer", overrides=[RECIPE_SEARCHPATH, f"+{method}={method}", *overrides])


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """echorl_trainer.yaml with the paper's lengths (1024 + 8192) and no context override."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="echorl.config", version_base=None):
        return compose(config_name="echorl_trainer",
                       overrides=["data.max_prompt_length=1024", "data.max_response_length=8192"])


def _with_model(cfg, path, **updates):
    return with_keys(cfg, **{"actor_rollout_ref.model.path": str(path), **updates})


def test_refuses_short_model_with_both_fixes_in_the_message(plain, tmp_path):
    model = write_model(tmp_path / "qwen-math")
    with pytest.raises(ValueError) as err:
        check_model_context(_with_model(plain, model))
    msg = str(err.value)
    assert f"actor_rollout_ref.model.path='{model}'" in msg
    assert "max_position_embeddings=4096, below the 9216 positions" in msg
    assert "data.max_prompt_length 1024 + data.max_response_length 8192" in msg
    assert "the actor (4096) and the vllm rollout (4096)" in msg
    assert '"max_position_embeddings": 16384 and "rope_theta": 40000' in msg
    assert ("++actor_rollout_ref.model.override_config.max_position_embeddings=16384 "
            "++actor_rollout_ref.rollout.engine_kwargs.vllm.hf_overrides.max_position_embeddings=16384") in msg


@pytest.mark.parametrize("earlier", [[], ["+actor_rollout_ref.model.override_config.max_position_embeddings=8192"]])
def test_the_messages_override_fix_composes_and_is_accepted(tmp_path, caplog, earlier):
    """The (b) overrides printed in the refusal, given to Hydra as written, make the check pass (also
    over a smaller override already in the config)."""
    from hydra import compose, initialize_config_module

    model = write_model(tmp_path / "m")
    base = [f"actor_rollout_ref.model.path={model}", "data.max_prompt_length=1024", "data.max_response_length=8192",
            *earlier]
    with initialize_config_module(config_module="echorl.config", version_base=None):
        cfg = compose(config_name="echorl_trainer", overrides=base)
        with pytest.raises(ValueError) as err:
            check_model_context(cfg)
        fixes = re.findall(r"\+\+actor_rollout_ref\.\S+=\d+", str(err.value))
        assert len(fixes) == 2
        fixed = compose(config_name="echorl_trainer", overrides=base + fixes)
    with caplog.at_level(logging.WARNING, logger="echorl.verl.config_checks"):
        found = check_model_context(fixed)
    assert (found["need"], found["model_max_positions"]) == (9216, 4096)
    assert (found["actor_max_positions"], found["rollout_max_positions"]) == (16384, 16384)
    assert "raised from 4096 to 16384 (actor) / 16384 (vllm rollout)" in caplog.text
    assert "rope_theta=10000.0" in caplog.text


def test_accepts_luffy_edited_config_json_without_overrides(plain, tmp_path, caplog):
    model = write_model(tmp_path / "qwen-math-16k", max_positions=16384, rope_theta=40000.0)
    with caplog.at_level(logging.WARNING, logger="echorl.verl.config_checks"):
        found = check_model_context(_with_model(plain, model))
    assert found == {"model": str(model), "config_json": str(model / "config.json"), "need": 9216,
                     "model_max_positions": 16384, "actor_max_positions": 16384, "rollout_max_positions": 16384,
                     "rope_theta": 40000.0}
    assert caplog.text == ""


def test_exact_fit_passes_and_one_position_short_refuses(plain, tmp_path):
    assert check_model_context(_with_model(plain, write_model(tmp_path / "a", 9216)))["need"] == 9216
    with pytest.raises(ValueError, match="max_position_embeddings=9215, below the 9216"):
        check_model_context(_with_model(plain, write_model(tmp_path / "b", 9215)))


def test_rollout_max_model_len_counts_when_larger(plain, tmp_path):
    cfg = _with_model(plain, write_model(tmp_path / "m", 10000),
                      **{"actor_rollout_ref.rollout.max_model_len": 12000})
    with pytest.raises(ValueError, match=r"below the 12000 positions .*actor_rollout_ref.rollout.max_model_len 12000"):
        check_model_context(cfg)


def test_actor_override_alone_is_refused_for_the_rollout(plain, tmp_path):
    """vLLM reads config.json itself: raising only override_config leaves the rollout at 4096."""
    cfg = _with_model(plain, write_model(tmp_path / "m"),
                      **{"actor_rollout_ref.model.override_config": {"max_position_embeddings": 16384}})
    with pytest.raises(ValueError) as err:
        check_model_context(cfg)
    assert "too short for the vllm rollout (4096)" in str(err.value)
    assert "the actor" not in str(err.value).split("too short for")[1].split(".")[0]


def test_sglang_rollout_reads_its_json_override(plain, tmp_path):
    cfg = _with_model(plain, write_model(tmp_path / "m"), **{
        "actor_rollout_ref.rollout.name": "sglang",
        "actor_rollout_ref.model.override_config": {"max_position_embeddings": 16384}})
    with pytest.raises(ValueError, match="sglang rollout \\(4096\\)") as err:
        check_model_context(cfg)
    assert ("++actor_rollout_ref.rollout.engine_kwargs.sglang.json_model_override_args="
            "'{\"max_position_embeddings\": 16384}'") in str(err.value)
    ok = _with_model(cfg, cfg.actor_rollout_ref.model.path, **{
        "actor_rollout_ref.rollout.engine_kwargs.sglang.json_model_override_args": '{"max_position_embeddings": 16384}'})
    assert check_model_context(ok)["rollout_max_positions"] == 16384


def test_rollout_override_that_is_not_json_is_refused(plain, tmp_path):
    key = "actor_rollout_ref.rollout.engine_kwargs.sglang.json_model_override_args"
    cfg = _with_model(plain, write_model(tmp_path / "m"), **{"actor_rollout_ref.rollout.name": "sglang",
                                                              key: "{max_position_embeddings: 16384"})
    with pytest.raises(ValueError, match=re.escape(key) + ".* is not valid JSON"):
        check_model_context(cfg)


@pytest.mark.parametrize("key,value", [("rope_theta", 40000.0), ("rope_parameters", {"rope_theta": 40000.0})])
def test_rope_override_is_refused(plain, tmp_path, key, value):
    cfg = _with_model(plain, write_model(tmp_path / "m", 16384),
                      **{f"actor_rollout_ref.model.override_config.{key}": value})
    with pytest.raises(ValueError, match=f"override_config.{key}=.*edit a copy of the model folder's config.json"):
        check_model_context(cfg)


def test_why_rope_overrides_are_refused(tmp_path):
    """verl 0.9.1's override path on a real transformers config: rope_theta is ignored, rope_parameters raises."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from verl.utils.model import update_model_config

    hf = AutoConfig.from_pretrained(write_model(tmp_path / "m"), local_files_only=True)
    update_model_config(hf, {"rope_theta": 40000.0})
    assert hf.rope_parameters["rope_theta"] == 10000.0
    inv_freq = AutoModelForCausalLM.from_config(hf).model.rotary_emb.inv_freq
    head_dim = 16
    assert inv_freq[1].item() == pytest.approx(10000.0 ** (-2 / head_dim), rel=1e-6)  # not 40000's
    with pytest.raises(AttributeError):
        update_model_config(hf, {"rope_parameters": {"rope_theta": 40000.0}})
    # LUFFY's way, the edited config.json, does reach the rotary embedding
    edited = AutoConfig.from_pretrained(write_model(tmp_path / "e", 16384, 40000.0), local_files_only=True)
    assert edited.rope_parameters["rope_theta"] == 40000.0


def test_hub_id_read_from_cache_only(plain, tmp_path, monkeypatch, caplog):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = _with_model(plain, "Qwen/Qwen2.5-Math-7B")
    with caplog.at_level(logging.WARNING, logger="echorl.verl.config_checks"):
        assert check_model_context(cfg) is None
    assert "hub id 'Qwen/Qwen2.5-Math-7B' is not in the local HF cache" in caplog.text
    assert "need 9216 positions" in caplog.text
    # the same id once in the cache (the hub's cache layout): read, and refused
    repo = tmp_path / "hub" / "models--Qwen--Qwen2.5-Math-7B"
    write_model(repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    assert read_model_config("Qwen/Qwen2.5-Math-7B")[0]["max_position_embeddings"] == 4096
    with pytest.raises(ValueError, match="max_position_embeddings=4096"):
        check_model_context(cfg)


def test_missing_local_folder_is_a_logged_skip(plain, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="echorl.verl.config_checks"):
        assert check_model_context(_with_model(plain, tmp_path / "absent")) is None
    assert f"{tmp_path / 'absent'} does not exist on this machine" in caplog.text


def test_paper_setting_carries_the_override_for_qwen_math(tmp_path, caplog):
    """Every recipe targets Qwen2.5-Math-7B: its stock config.json (4096) passes with paper_setting's
    overrides, and is refused once the rollout override is removed."""
    stock = write_model(tmp_path / "Qwen2.5-Math-7B")
    cfg = _recipe("grpo", f"actor_rollout_ref.model.path={stock}")
    assert cfg.actor_rollout_ref.model.override_config.max_position_embeddings == 16384
    assert cfg.actor_rollout_ref.rollout.engine_kwargs.vllm.hf_overrides.max_position_embeddings == 16384
    with caplog.at_level(logging.WARNING, logger="echorl.verl.config_checks"):
        assert check_model_context(cfg)["rollout_max_positions"] == 16384
    assert "rotary base stays" in caplog.text
    bare = _recipe("dapo", f"actor_rollout_ref.model.path={stock}",
                   "~actor_rollout_ref.rollout.engine_kwargs.vllm.hf_overrides")
    with pytest.raises(ValueError, match=r"too short for the vllm rollout \(4096\)"):
        check_model_context(bare)


def test_prepare_runs_the_check(tmp_path):
    from echorl.main import prepare

    cfg = _recipe("grpo", f"actor_rollout_ref.model.path={write_model(tmp_path / 'm')}",
                  "~actor_rollout_ref.model.override_config.max_position_embeddings")
    with pytest.raises(ValueError, match="too short for the actor \\(4096\\)"):
        prepare(cfg)
