"""RL-ZVP and forking tokens as selectable methods (``method.name=rl_zvp`` / ``forking``), one place for both hosts.

The rules are :mod:`echorl.core.rl_zvp` and :mod:`echorl.core.forking`; the loss wrapper is
:class:`echorl.entropy_methods.EntropyMethodLoss`. This module holds what a host calls:

* :func:`check_combination`: refuses the combinations that do not compose (see
  :mod:`echorl.methods.config` for the rules and why), before anything is built;
* :func:`method_loss`: the host's loss callable, wrapped when an entropy method is selected
  (``inner`` itself otherwise, so ``method.name=grpo`` trains bit for bit as before);
* :func:`zvp_sign`: the ``[B]`` field ``zvp_sign`` of the advantage stage (RL-ZVP only).

docs/methods.md, "The zero-variance competitors".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from echorl.core.config import EchoConfig
from echorl.entropy_methods import ZVP_SIGN, EntropyMethodLoss, zvp_sign_field
from echorl.methods.config import MethodConfig

__all__ = ["ZVP_SIGN", "check_combination", "method_loss", "zvp_sign"]


def check_combination(method: MethodConfig, echo: EchoConfig, *, filter_groups: bool, entropy_in_update: bool,
                      actor_config: Any = None) -> None:
    """Raise ``ValueError`` naming the setting to change when ``method`` cannot run with the rest.

    Args:
        method: the ``method:`` config; echo: the ``echorl:`` config.
        filter_groups: DAPO's dynamic sampling is on (``algorithm.filter_groups.enable``).
        entropy_in_update: the host computes the token entropy in the update forward (verl:
            ``actor_rollout_ref.actor.calculate_entropy``; the engine always can).
        actor_config: verl's actor config; when given, the loss wrapper's own checks run now
            (forking: ``loss_agg_mode=token-mean``, no entropy bonus, no KL loss).
    """
    if not method.needs_entropy:
        return
    name = method.name
    if not entropy_in_update:
        raise ValueError(f"method.name={name} needs the policy's token entropy in the update forward; set "
                         "actor_rollout_ref.actor.calculate_entropy=true")
    if name == "rl_zvp" and echo.adds_advantage_bonus:
        raise ValueError("method.name=rl_zvp replaces the advantages of zero-variance groups, where "
                         "echorl.mode=advantage puts its bonus; use echorl.mode=loss (the two then add up) or "
                         "echorl.enable=false")
    if name == "rl_zvp" and filter_groups:
        raise ValueError("method.name=rl_zvp trains on the zero-variance groups that DAPO's dynamic sampling drops; "
                         "set algorithm.filter_groups.enable=false")
    if name == "forking" and echo.active:
        raise ValueError("method.name=forking and EchoRL are not combined (the EchoRL term would be trained under the "
                         "forking mask and normaliser); set echorl.enable=false")
    if actor_config is not None:
        method_loss(_never_called, actor_config, method, echo)


def _never_called(*_args: Any) -> None:  # the inner loss of a check-only wrapper
    raise AssertionError("check-only loss called")


def method_loss(inner: Callable, actor_config: Any, method: MethodConfig, echo: EchoConfig) -> Callable:
    """``inner`` (the host's loss, verl's engine contract) wrapped in :class:`EntropyMethodLoss` when
    ``method`` is ``rl_zvp`` or ``forking``; ``inner`` itself otherwise."""
    if not method.needs_entropy:
        return inner
    return EntropyMethodLoss(inner, actor_config, rl_zvp=method.rl_zvp_on, forking=method.forking_on,
                             echo_adds_term=echo.adds_loss_term)


def zvp_sign(method: MethodConfig, scores: torch.Tensor, group_ids: torch.Tensor | Sequence,
             response_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"zvp_sign": [B] long}`` for RL-ZVP, ``{}`` for every other method.

    scores: ``[B]`` outcome rewards; group_ids: ``[B]`` prompt ids; response_mask: ``[B, L]`` with the
    rows that must not count (padding, rows kept for EchoRL only) already zero (they get sign 0)."""
    cfg = method.rl_zvp_on
    if cfg is None:
        return {}
    return {ZVP_SIGN: zvp_sign_field(scores, group_ids, response_mask, cfg)}
