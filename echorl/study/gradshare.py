"""How large the EchoRL term's gradient is next to the RL term's (a study measurement, off by default).

:class:`GradShareLoss` wraps the engine's actor loss callable (``EchoLoss`` or ``MethodLoss``; both
return ``rl_loss + coef * dp_size * L_echo``). Every ``every`` training steps, on the first
micro-batch of the step, it recomputes the EchoRL part ``e = coef * dp_size * L_echo`` from the same
log-probs (:func:`echorl.core.loss.echo_loss_term`, unpadded as :class:`echorl.loss.EchoLoss`
does), takes ``r = loss - e``, and measures ``g_rl = grad r`` and ``g_echo = grad e`` with
``torch.autograd.grad`` (which leaves ``.grad`` alone, so the update that follows is the same as
without the measurement). Metrics, added to that micro-batch's metrics::

    study/grad_norm_rl      ||g_rl||  (before the update's clip_grad)
    study/grad_norm_echo    ||g_echo||
    study/grad_echo_share   ||g_echo|| / (||g_rl|| + ||g_echo||)
    study/grad_cos          cosine(g_rl, g_echo) (0 when either is 0)

Cost: two extra backward passes through one micro-batch every ``every`` steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from echorl.core.loss import echo_loss_term

__all__ = ["GradShareLoss", "grad_share"]


def grad_share(rl_loss: torch.Tensor, echo_loss: torch.Tensor, params: list[torch.nn.Parameter]) -> dict[str, float]:
    """Norms and cosine of ``grad rl_loss`` and ``grad echo_loss`` over ``params`` (graph kept)."""
    def flat(loss: torch.Tensor) -> torch.Tensor:
        if not loss.requires_grad:
            return torch.zeros(sum(p.numel() for p in params))
        gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double() for g, p in zip(gs, params)])

    g_rl, g_echo = flat(rl_loss), flat(echo_loss)
    n_rl, n_echo = float(g_rl.norm()), float(g_echo.norm())
    cos = float(g_rl @ g_echo / (n_rl * n_echo)) if n_rl > 0 and n_echo > 0 else 0.0
    share = n_echo / (n_rl + n_echo) if n_rl + n_echo > 0 else 0.0
    return {"study/grad_norm_rl": n_rl, "study/grad_norm_echo": n_echo, "study/grad_echo_share": share,
            "study/grad_cos": cos}


class GradShareLoss:
    """Wraps ``inner`` (the engine's loss callable); see the module docstring.

    Args:
        inner: ``loss_fn(model_output, data, dp_group=None) -> (loss, metrics)``.
        model: the policy whose parameters the norms are taken over.
        step_of: returns the trainer's current ``global_step`` (steps completed before this one).
        every: measure on steps ``s`` with ``s % every == 0`` (first micro-batch only); 0: never.
        coef: the EchoRL ``coef`` (mode=loss); the term is rebuilt from ``echo_mask``/``echo_denom``.
    """

    def __init__(self, inner: Callable, model: torch.nn.Module, step_of: Callable[[], int], every: int, coef: float):
        self.inner, self.model, self.step_of, self.every, self.coef = inner, model, step_of, int(every), float(coef)
        self._done_step = -1

    def __call__(self, model_output: dict, data: Any, dp_group=None):
        loss, metrics = self.inner(model_output, data, dp_group)
        step = self.step_of()
        if self.every <= 0 or step % self.every != 0 or step == self._done_step or "echo_mask" not in data.keys():
            return loss, metrics
        self._done_step = step
        # verl (an optional extra) loads only when a share is measured, on the engine's verl-backed loss
        from verl.workers.utils.padding import no_padding_2_padding

        from echorl.loss import padded_response_field  # echorl.loss imports verl, as above

        log_prob = no_padding_2_padding(model_output["log_probs"], data)  # [b, W]
        mask = padded_response_field(data, "echo_mask", log_prob.shape[1])  # [b, W] bool
        echo = self.coef * echo_loss_term(log_prob, mask, data["echo_denom"]) * data["dp_size"]
        params = [p for p in self.model.parameters() if p.requires_grad]
        metrics = dict(metrics)
        metrics.update(grad_share(loss - echo, echo, params))
        return loss, metrics
