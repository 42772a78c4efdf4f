"""The verl side of ``method.name=rl_zvp`` / ``forking`` (:mod:`echorl.methods.entropy`).

* :func:`check_entropy_method` (from :func:`echorl.verl.config_checks.validate_config`, before Ray
  starts): :func:`echorl.methods.config.check_combination` with verl's keys. verl computes the
  token entropy in the update forward only with ``actor_rollout_ref.actor.calculate_entropy=true``
  (or ``entropy_coeff != 0``, ``PPOTrainerSync._update_actor``); it is the entropy of the logits
  divided by the rollout temperature (verl's FSDP engine, ``prepare_model_outputs``): the training
  policy's at ``T``, as both papers define it.
* :func:`zvp_sign_of`: the ``zvp_sign`` field of the advantage stage from the batch as verl stores it.

The loss is installed by :meth:`echorl.verl.trainer.EchoPPOTrainerSync.install_echo_loss`
(:func:`echorl.methods.entropy.method_loss` around ``EchoLoss``). Imports nothing heavy (the
start-up checks import this module).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict

from echorl.core.config import EchoConfig
from echorl.core.rl_zvp import ZVP_SIGN, zero_variance_signs
from echorl.methods.config import MethodConfig, check_combination
from echorl.verl.fields import _padded, group_ids

__all__ = ["check_entropy_method", "zvp_sign_of"]


def _method(config: DictConfig) -> MethodConfig:
    node = OmegaConf.select(config, "method")
    return MethodConfig.from_dict(OmegaConf.to_container(node, resolve=True) if node is not None else None)


def check_entropy_method(config: DictConfig, echo: EchoConfig) -> None:
    """Refuse what RL-ZVP / forking tokens cannot run with on verl (``ValueError`` naming the key)."""
    method = _method(config)
    if not method.needs_entropy:
        return
    actor = config.actor_rollout_ref.actor
    entropy = bool(actor.get("calculate_entropy", False)) or float(actor.get("entropy_coeff", 0.0)) != 0.0
    if bool(OmegaConf.select(config, "distillation.enabled", default=False)):
        raise ValueError(f"method.name={method.name} wraps verl's ppo_loss and would replace the distillation loss; "
                         "set distillation.enabled=false")
    check_combination(method, echo, filter_groups=bool(OmegaConf.select(config, "algorithm.filter_groups.enable",
                                                                         default=False)),
                      entropy_in_update=entropy, actor=actor)


def zvp_sign_of(method: MethodConfig, data: TensorDict, is_padding: Sequence[bool]) -> dict[str, torch.Tensor]:
    """``{"zvp_sign": [B] long}`` for RL-ZVP (``{}`` otherwise) from ``uid``, ``response_mask`` and
    ``rm_scores`` (summed over tokens: the outcome reward) as verl stores them; ``is_padding`` rows
    (verl's balancing copies) are no group members and get 0."""
    cfg = method.rl_zvp_on
    if cfg is None:
        return {}
    mask = _padded(data, "response_mask") != 0  # [B, L]
    pad = torch.as_tensor(list(is_padding), dtype=torch.bool)
    scores = _padded(data, "rm_scores").float().sum(dim=-1)  # [B]
    return {ZVP_SIGN: zero_variance_signs(scores, group_ids(data["uid"]), mask & ~pad[:, None],
                                          positive_above=cfg.positive_above, tol=cfg.tol)}
