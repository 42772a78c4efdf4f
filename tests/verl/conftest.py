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


@pytest.fixture(scope="module")
def transfer_queue(ray_session, echorl_cfg):
    """A real TransferQueue (controller + one storage unit on the shared Ray session) for one test
    module; tests clear the keys they put. Closed after the module: its actors hold CPUs of the
    shared 2-CPU Ray session that later tests' tasks need (a session-wide one starved them)."""
    import copy

    import transfer_queue as tq
    from omegaconf import open_dict

    cfg = copy.deepcopy(echorl_cfg)
    with open_dict(cfg):
        cfg.transfer_queue.backend.SimpleStorage.num_data_storage_units = 1
    tq.init(cfg.transfer_queue)
    yield tq
    tq.close()
