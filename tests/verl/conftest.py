"""Fixtures for the verl-side tests: one composed EchoRL config per session (Hydra takes ~6 s)."""

from __future__ import annotations

import pytest


def compose_echorl(overrides: list[str] | None = None):
    """Compose ``echorl/config/echorl_trainer.yaml`` (verl's ppo_trainer + ``echorl:``) like a user run."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="echorl.config", version_base=None):
        return compose(config_name="echorl_trainer", overrides=list(overrides or []))


@pytest.fixture(scope="session")
def compose():
    """``compose(overrides)`` -> a freshly composed config."""
    return compose_echorl


@pytest.fixture(scope="session")
def echorl_cfg():
    """The default composed config (a DictConfig; copy it before changing it)."""
    return compose_echorl()


@pytest.fixture(scope="session")
def actor_config(echorl_cfg):
    """verl's real FSDP ``ActorConfig`` dataclass, as the worker builds it."""
    from verl.utils.config import omega_conf_to_dataclass

    return omega_conf_to_dataclass(echorl_cfg.actor_rollout_ref.actor)
