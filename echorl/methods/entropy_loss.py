"""RL-ZVP and the forking-token rule on the hosts' actor loss (``docs/methods.md``, "The zero-variance competitors").

Both hosts train through one loss callable with verl's engine contract
``loss_fn(model_output, data, dp_group=None) -> (loss, metrics)`` (:class:`echorl.loss.EchoLoss`,
:class:`echorl.methods.luffy.MethodLoss`). :class:`EntropyMethodLoss` wraps such a callable: it
rewrites the micro-batch's ``advantages`` (RL-ZVP) and ``response_mask`` plus the token-mean
normaliser (forking tokens) from the update forward's entropy, then calls the wrapped loss
unchanged. The rules themselves live in :mod:`echorl.core.rl_zvp` and :mod:`echorl.core.forking`.

What a host adds to use it (one line each):

* the advantage stage writes ``zvp_sign`` (``[B]`` long, :func:`zvp_sign_field`) into the batch
  after the base estimator (RL-ZVP only), and the micro-batches carry it;
* the actor forward returns ``model_output["entropy"]`` (both hosts compute it only when
  ``entropy_coeff != 0`` today);
* the loss callable is ``EntropyMethodLoss(inner, rl_zvp=..., forking=...)``.

Forking-token normaliser: the authors' code takes a token mean over each micro-batch's kept tokens
and weighs it by the micro-batch's share of the mini-batch's rows (their ``loss_scale_factor``,
``docs/methods.md``). verl's ``token-mean`` gives ``sum / batch_num_tokens * dp_size`` per
micro-batch with a gradient average over ranks, so the loss passes
``batch_num_tokens = kept * global_batch_size / rows`` for the micro-batch (``kept`` its kept
tokens, ``rows`` its rows): the applied gradient is then
``sum_micro (sum_kept x / kept) * rows / global_batch_size``, theirs. Only ``loss_agg_mode=token-mean``
(theirs) is accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from verl.utils.metric import AggregationType, Metric
from verl.workers.utils.padding import no_padding_2_padding

from echorl import metric_names as M
from echorl.core.forking import ForkingConfig, forking_token_mask
from echorl.core.rl_zvp import ZVP_SIGN, RlZvpConfig, rl_zvp_shape, zero_variance_signs
from echorl.loss import padded_response_field
from echorl.methods.config import check_forking_actor

__all__ = ["ZVP_SIGN", "EntropyMethodLoss", "zvp_sign_field"]


def zvp_sign_field(scores: torch.Tensor, group_ids: torch.Tensor | Sequence, response_mask: torch.Tensor,
                   cfg: RlZvpConfig) -> torch.Tensor:
    """The ``zvp_sign`` batch field of the advantage stage: ``[B] long`` (+1 / -1 / 0), from the
    rollouts' ``scores`` ``[B]``, their prompt ids and ``response_mask`` ``[B, L]``
    (:func:`echorl.core.rl_zvp.zero_variance_signs`)."""
    return zero_variance_signs(scores, group_ids, response_mask, positive_above=cfg.positive_above, tol=cfg.tol)


def _as_field(template: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``dense`` (``[b, W]``) in the layout of ``template``: a jagged nested tensor with the template's
    offsets, or a dense tensor of the template's width (cut or right-padded with 0)."""
    if template.is_nested:
        lens = template.offsets().diff()
        rows = [dense[i, : int(n)] for i, n in enumerate(lens)]
        if any(r.shape[0] < int(n) for r, n in zip(rows, lens)):
            raise ValueError("a response field is longer than the log-probs of its micro-batch")
        return torch.nested.nested_tensor_from_jagged(torch.cat(rows).to(template.dtype), offsets=template.offsets(),
                                                      max_seqlen=int(lens.max()), min_seqlen=int(lens.min()))
    width = template.shape[1]
    out = dense[:, :width] if dense.shape[1] >= width else F.pad(dense, (0, width - dense.shape[1]))
    return out.to(template.dtype)


def _padded(data: TensorDict, key: str, width: int) -> torch.Tensor:
    value = data[key]
    value = data.select(key).to_padded_tensor()[key] if value.is_nested else value
    cur = value.shape[1]
    return F.pad(value, (0, width - cur)) if cur < width else value[:, :width]


class EntropyMethodLoss:
    """Loss callable: RL-ZVP's advantages and / or the forking-token mask, then ``inner``.

    Args:
        inner: the host's loss callable with verl's engine contract (``EchoLoss``, ``MethodLoss`` or
            a ``ppo_loss`` partial).
        actor_config: verl's actor config (``loss_agg_mode``, ``entropy_coeff``, ``use_kl_loss`` are read).
        rl_zvp: :class:`RlZvpConfig` or None (off).
        forking: :class:`ForkingConfig` or None (off).
        echo_adds_term: whether ``inner`` adds the EchoRL term; refused with the forking rule, whose
            mask and normaliser the term would see.

    Reads from the micro-batch, besides what ``inner`` reads: ``zvp_sign`` (``[b]``, RL-ZVP) and
    ``model_output["entropy"]`` (packed like ``log_probs``).
    """

    def __init__(self, inner: Callable, actor_config: Any, *, rl_zvp: RlZvpConfig | None = None,
                 forking: ForkingConfig | None = None, echo_adds_term: bool = False):
        if rl_zvp is None and forking is None:
            raise ValueError("EntropyMethodLoss needs rl_zvp or forking; without either use the inner loss itself")
        if forking is not None:
            check_forking_actor(actor_config, echo_adds_term)
        self.inner, self.actor_config, self.rl_zvp, self.forking = inner, actor_config, rl_zvp, forking

    def __repr__(self) -> str:
        return f"EntropyMethodLoss(rl_zvp={self.rl_zvp}, forking={self.forking}, inner={self.inner!r})"

    def __call__(self, model_output: dict, data: TensorDict, dp_group=None) -> tuple[torch.Tensor, dict]:
        entropy = model_output.get("entropy")
        if entropy is None:
            raise KeyError("EntropyMethodLoss: the actor forward returned no 'entropy'; RL-ZVP and the forking rule "
                           "need the policy's token entropy in the update forward (calculate_entropy)")
        ent = no_padding_2_padding(entropy, data).detach()  # [b, W]
        width = ent.shape[1]
        mask = padded_response_field(data, "response_mask", width)  # [b, W] bool
        data = data.copy()
        extra: dict[str, float] = {}  # the methods' metrics (echorl.metric_names), means over micro-batches
        if self.rl_zvp is not None:
            if ZVP_SIGN not in data.keys():
                raise KeyError(f"EntropyMethodLoss (RL-ZVP): the micro-batch lacks '{ZVP_SIGN}'; the advantage stage "
                               "did not write it (zvp_sign_field)")
            adv = _padded(data, "advantages", width)
            shaped = rl_zvp_shape(adv, data[ZVP_SIGN].reshape(-1), ent, mask, self.rl_zvp.alpha)
            data["advantages"] = _as_field(data["advantages"], shaped)
            sign = data[ZVP_SIGN].reshape(-1)
            extra[M.RL_ZVP_POS_FRAC] = float((sign > 0).float().mean())
            extra[M.RL_ZVP_NEG_FRAC] = float((sign < 0).float().mean())
        if self.forking is not None:
            keep = forking_token_mask(ent, mask, self.forking.rho)  # [b, W] bool
            kept, rows = int(keep.sum()), int(keep.shape[0])
            extra[M.FORKING_KEPT_FRAC] = kept / max(int(mask.sum()), 1)
            data["response_mask"] = _as_field(data["response_mask"], keep)
            global_rows = tu.get_non_tensor_data(data=data, key="global_batch_size", default=None)
            if global_rows is None:
                raise KeyError("EntropyMethodLoss (forking): the micro-batch lacks global_batch_size")
            tu.assign_non_tensor(data, batch_num_tokens=max(kept, 1) * int(global_rows) / rows)
        loss, metrics = self.inner(model_output, data, dp_group)
        metrics.update({k: Metric(value=v, aggregation=AggregationType.MEAN) for k, v in extra.items()})
        return loss, metrics
