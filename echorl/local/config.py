"""Configuration of the embedded engine: Hydra composition of ``echorl/config/local.yaml`` and the
real verl config dataclasses built from it.

* :func:`load_config` composes ``local.yaml`` with command-line style overrides.
* :func:`build_actor_config` merges ``actor_rollout_ref.actor`` onto verl's own
  ``actor/dp_actor.yaml`` (composed from ``pkg://verl.trainer.config``) and converts it with verl's
  ``omega_conf_to_dataclass`` into ``verl.workers.config.FSDPActorConfig``: the object verl's
  ``ppo_loss`` reads, with verl's defaults and validation.
* :func:`build_algo_config` gives verl's ``AlgoConfig`` for the advantage estimators.
* :func:`validate` checks the cross-key rules once, at start-up, with messages that name the key.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from echorl.config.keys import compose_config
from echorl.core.config import EchoConfig
from echorl.estimators import check_estimator_name, check_group_size, engine_refusal, registered
from echorl.methods.config import MethodConfig

RESUME_MODES = ("auto", "disable")
OVERLONG_MODES = ("error", "skip")


def load_config(overrides: Sequence[str] = (), config_name: str = "local") -> DictConfig:
    """Compose ``echorl/config/<config_name>.yaml`` with Hydra overrides (``key=value`` strings); an
    unknown key is a ``ValueError`` naming the nearest valid key."""
    return compose_config("echorl.config", config_name, overrides)


def _verl_actor_node() -> DictConfig:
    """verl's ``actor/dp_actor.yaml`` (with its optim and fsdp defaults), composed by Hydra."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_module("verl.trainer.config", version_base=None):
        node = compose(config_name="actor/dp_actor")
    return node.actor


def build_actor_config(cfg: DictConfig):
    """verl's ``FSDPActorConfig`` from ``cfg.actor_rollout_ref.actor`` merged onto verl's defaults.

    The engine reads the optimizer (``optim.*``), mini/micro-batch sizes, ``ppo_epochs`` and the
    loss options from this one object, as verl's workers do. ``optim.total_training_steps`` is set
    from ``trainer.total_training_steps`` (verl does the same before building the scheduler).
    """
    from verl.utils.config import omega_conf_to_dataclass

    base = _verl_actor_node()
    user = cfg.actor_rollout_ref.actor
    unknown = sorted(set(user.keys()) - set(base.keys()))
    if unknown:
        raise ValueError(
            f"unknown key(s) {[f'actor_rollout_ref.actor.{k}' for k in unknown]}: not fields of verl's actor config "
            f"(actor/dp_actor.yaml); valid keys: {sorted(k for k in base.keys() if not str(k).startswith('_'))}"
        )
    root = OmegaConf.create({"actor_rollout_ref": {"actor": base, "rollout": {"n": int(cfg.actor_rollout_ref.rollout.n)},
                                                  "model": {"use_remove_padding": False, "use_fused_kernels": False}}})
    OmegaConf.set_struct(root, False)
    root.actor_rollout_ref.actor = OmegaConf.merge(root.actor_rollout_ref.actor, user)
    root.actor_rollout_ref.actor.optim.total_training_steps = int(cfg.trainer.total_training_steps)
    node = root.actor_rollout_ref.actor
    return omega_conf_to_dataclass(node)


def build_algo_config(cfg: DictConfig):
    """verl's ``AlgoConfig`` (what the estimators receive as ``config``) from ``cfg.algorithm``."""
    from verl.trainer.config import AlgoConfig
    from verl.utils.config import omega_conf_to_dataclass

    node = OmegaConf.to_container(cfg.algorithm, resolve=True)
    valid = set(inspect.signature(AlgoConfig).parameters)
    unknown = sorted(set(node) - valid - {"_target_"})
    if unknown:
        raise ValueError(f"unknown key(s) {[f'algorithm.{k}' for k in unknown]}; valid keys: {sorted(valid)}")
    node.pop("_target_", None)
    return omega_conf_to_dataclass(OmegaConf.create(node), dataclass_type=AlgoConfig)


def build_echo_config(cfg: DictConfig) -> EchoConfig:
    """``EchoConfig.from_dict(cfg.echorl)``: unknown keys and bad values name ``echorl.<key>``, and ids
    given with ``boundary: auto`` (``local.yaml``'s setting) are refused with the fix."""
    return EchoConfig.from_dict(OmegaConf.to_container(cfg.echorl, resolve=True), prefix="echorl")


def build_method_config(cfg: DictConfig):
    """The ``method:`` node (LUFFY / UFT, :class:`echorl.methods.config.MethodConfig`); absent = GRPO."""
    node = cfg.get("method")
    return MethodConfig.from_dict(OmegaConf.to_container(node, resolve=True) if node is not None else None)


def validate(cfg: DictConfig, actor_cfg: Any) -> None:
    """Cross-key rules of the embedded engine; each error names the key(s) and the fix."""
    if cfg.resume not in RESUME_MODES:
        raise ValueError(f"resume must be one of {list(RESUME_MODES)}, got {cfg.resume!r}")
    if cfg.data.overlong_prompt not in OVERLONG_MODES:
        raise ValueError(f"data.overlong_prompt must be one of {list(OVERLONG_MODES)}, got {cfg.data.overlong_prompt!r}")
    n = int(cfg.actor_rollout_ref.rollout.n)
    bs = int(cfg.data.train_batch_size)
    for key, v in (("data.train_batch_size", bs), ("actor_rollout_ref.rollout.n", n),
                   ("data.max_prompt_length", cfg.data.max_prompt_length),
                   ("data.max_response_length", cfg.data.max_response_length),
                   ("trainer.total_training_steps", cfg.trainer.total_training_steps),
                   ("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu",
                    cfg.actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{key} must be a positive int, got {v!r}")
    est = str(cfg.algorithm.adv_estimator)
    check_estimator_name(est)  # unknown: lists the registered names
    if engine_refusal(est):
        raise ValueError(f"algorithm.adv_estimator={est} {engine_refusal(est)}; choose one of "
                         f"{[e for e in registered() if not engine_refusal(e)]} or use the verl path")
    check_group_size(est, n)  # before the batch-size rules: n=1 is refused for its real reason
    mini = actor_cfg.ppo_mini_batch_size
    if bs % mini != 0:
        raise ValueError(f"data.train_batch_size ({bs}) must be a multiple of actor_rollout_ref.actor.ppo_mini_batch_size ({mini})")
    micro = actor_cfg.ppo_micro_batch_size_per_gpu
    if micro is None or micro < 1 or (mini * n) % micro != 0:
        raise ValueError(
            f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu ({micro}) must divide ppo_mini_batch_size x "
            f"rollout.n = {mini} x {n} = {mini * n} rows")
    if actor_cfg.use_dynamic_bsz:
        raise ValueError("actor_rollout_ref.actor.use_dynamic_bsz=true is not supported by the embedded engine; "
                         "set ppo_micro_batch_size_per_gpu instead")
    if actor_cfg.use_kl_loss:
        raise ValueError("actor_rollout_ref.actor.use_kl_loss=true needs a reference model, which the embedded engine "
                         "does not keep; use the verl path or set it to false")
    if actor_cfg.policy_loss.get("loss_mode", "vanilla") == "bypass_mode":
        raise ValueError("actor_rollout_ref.actor.policy_loss.loss_mode=bypass_mode skips the old-policy pass, "
                         "so there is no token entropy for EchoRL; choose another loss_mode")
    for b in cfg.trainer.logger:
        if b not in ("console", "tensorboard", "wandb"):
            raise ValueError(f"trainer.logger entries must be console, tensorboard or wandb, got {b!r}")
