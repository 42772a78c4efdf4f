"""RL-ZVP and forking tokens as selectable methods (``method.name=rl_zvp`` / ``forking``), one place for both hosts.

The rules are :mod:`echorl.core.rl_zvp` and :mod:`echorl.core.forking`; the loss wrapper is
:class:`echorl.methods.entropy_loss.EntropyMethodLoss`. What a host calls:

* :func:`echorl.methods.config.check_combination`: refuses the combinations that do not compose
  (the rules and why: :mod:`echorl.methods.config`), before anything is built;
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
from echorl.methods.config import MethodConfig, check_combination
from echorl.methods.entropy_loss import ZVP_SIGN, EntropyMethodLoss, zvp_sign_field

__all__ = ["ZVP_SIGN", "check_combination", "method_loss", "zvp_sign"]


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
