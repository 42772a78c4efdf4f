"""`+cpu=cpu` (echorl/config/cpu/cpu.yaml): every CPU setting in one override, for EchoRL's config,
a recipe and verl's own config; contradicting settings are refused with the key and the fix."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from echorl.verl.cpu import CPU_SETTINGS, config_selects_cpu, select_from_config


def _compose(module: str, name: str, overrides: list[str]):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=module, version_base=None):
        return compose(config_name=name, overrides=overrides)


EXPECTED = {
    **CPU_SETTINGS,
    "actor_rollout_ref.model.use_remove_padding": False,  # the CPU default; true also runs (packed sequences)
    "actor_rollout_ref.model.override_config.attn_implementation": "sdpa",
    "actor_rollout_ref.model.use_fused_kernels": False,
    "actor_rollout_ref.rollout.agent.num_workers": 1,
    "reward.num_workers": 1,
    "transfer_queue.backend.SimpleStorage.num_data_storage_units": 1,
    "data.dataloader_num_workers": 0,
    "ray_kwargs.ray_init.num_gpus": 1,
    "ray_kwargs.ray_init.runtime_env.env_vars.VERL_PLATFORM": "cpu",
    "actor_rollout_ref.actor.fsdp_config.use_torch_compile": False,
    "actor_rollout_ref.ref.strategy": "fsdp2",
}


@pytest.mark.parametrize("module,name,pre", [
    ("echorl.config", "echorl_trainer", []),
    ("verl.trainer.config", "ppo_trainer", ["hydra.searchpath=[pkg://echorl.config]"]),
], ids=["echorl_trainer", "verl_ppo_trainer"])
def test_one_override_sets_every_cpu_setting(module, name, pre):
    cfg = _compose(module, name, [*pre, "+cpu=cpu"])
    for key, value in EXPECTED.items():
        assert OmegaConf.select(cfg, key) == value, key
    assert config_selects_cpu(cfg)
    assert not config_selects_cpu(_compose(module, name, pre))
    # trainer ranks drive the logical GPUs Ray gets
    cfg2 = _compose(module, name, [*pre, "+cpu=cpu", "trainer.n_gpus_per_node=2"])
    assert OmegaConf.select(cfg2, "ray_kwargs.ray_init.num_gpus") == 2


def test_cpu_after_a_recipe_wins_over_its_gpu_settings():
    from pathlib import Path

    recipes = Path(__file__).resolve().parents[3] / "recipes"
    cfg = _compose("echorl.config", "echorl_trainer",
                   [f"hydra.searchpath=[pkg://verl.trainer.config,file://{recipes}]", "+dapo=dapo", "+cpu=cpu"])
    assert cfg.actor_rollout_ref.model.use_remove_padding is False and cfg.actor_rollout_ref.rollout.name == "hf_cpu"
    assert cfg.actor_rollout_ref.actor.clip_ratio_high == 0.28  # the recipe's own keys stay


def test_contradicting_settings_are_refused_with_the_fix():
    cfg = _compose("echorl.config", "echorl_trainer", ["+cpu=cpu", "actor_rollout_ref.actor.strategy=fsdp"])
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.actor\.strategy='fsdp2' \(got 'fsdp'\).*\+cpu=cpu"):
        select_from_config(cfg)
