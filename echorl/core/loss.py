"""The EchoRL loss term and the advantage variant (SPEC 2.4).

``mode='loss'`` (the paper): ``L = L_RL + coef * L_echo`` with

    L_echo = sum_{clip tokens} -log pi_theta(token) / D

computed from the log-probs the RL loss already has (no extra forward). ``D`` is fixed *before*
the update from the whole batch (:func:`echo_normalizer`), so the gradient is the same however a
mini-batch is cut into micro-batches or spread over data-parallel ranks: each micro-batch adds
``sum_{its clip tokens} -log p / D`` and the sum over micro-batches is the mini-batch term.
No ratio, no clipping, no advantage, and no collective inside the loss.

``mode='advantage'``: :func:`apply_echo_advantage` adds ``adv_coef`` to the advantage of every clip
token before the update, so the term rides any method's own policy loss.
"""

from __future__ import annotations

from typing import Callable

import torch

from echorl.core.registry import Registry
from echorl.core.tensorops import count_true

# loss_agg name -> fn(clip_tokens, valid_tokens, num_minibatches) -> float D (counts of the whole batch)
LOSS_AGGS: Registry[Callable[[float, float, int], float]] = Registry("loss_agg")


@LOSS_AGGS.register("clip_token_mean")
def _norm_clip_tokens(clip_tokens: float, valid_tokens: float, num_minibatches: int) -> float:
    """Clip tokens of the whole batch scaled to one mini-batch."""
    return clip_tokens / num_minibatches


@LOSS_AGGS.register("token_mean")
def _norm_all_tokens(clip_tokens: float, valid_tokens: float, num_minibatches: int) -> float:
    """Valid response tokens of the whole batch scaled to one mini-batch (the RL token-mean's)."""
    return valid_tokens / num_minibatches


def echo_normalizer(
    echo_mask: torch.Tensor, response_mask: torch.Tensor, loss_agg: str = "clip_token_mean", num_minibatches: int = 1
) -> float:
    """The fixed denominator ``D`` of the EchoRL term for one mini-batch.

    Args:
        echo_mask: ``[B, L] bool`` clip tokens of the whole batch (all mini-batches of the step).
        response_mask: ``[B, L]`` valid response tokens of the whole batch.
        loss_agg: a name in ``LOSS_AGGS``.
        num_minibatches: optimizer steps the batch is cut into (``B / ppo_mini_batch_size``).

    Returns:
        ``D >= 1`` (the term of an empty selection is 0 whatever ``D`` is; 1 avoids a 0/0).
    """
    def count(m: torch.Tensor) -> int:
        return int(count_true(m if m.dtype == torch.bool else m != 0).sum())

    return normalizer_from_counts(count(echo_mask), count(response_mask), loss_agg, num_minibatches)


def normalizer_from_counts(clip_tokens: float, valid_tokens: float, loss_agg: str, num_minibatches: int) -> float:
    """:func:`echo_normalizer` from the batch's clip-token and valid-token counts."""
    if isinstance(num_minibatches, bool) or not isinstance(num_minibatches, int) or num_minibatches < 1:
        raise ValueError(f"num_minibatches must be a positive int, got {num_minibatches!r}")
    return max(LOSS_AGGS.get(loss_agg)(float(clip_tokens), float(valid_tokens), num_minibatches), 1.0)


def echo_loss_term(log_prob: torch.Tensor, echo_mask: torch.Tensor, normalizer: float | torch.Tensor) -> torch.Tensor:
    """``L_echo`` of one micro-batch: ``sum(-log_prob * echo_mask) / normalizer``.

    Args:
        log_prob: ``[b, L] float`` current-policy log-probs of the response tokens (with grad).
        echo_mask: ``[b, L]`` clip tokens (bool or 0/1).
        normalizer: ``D`` from :func:`echo_normalizer` (a float or a scalar / ``[b]`` tensor whose
            entries are equal, as stored per row by the hosts).

    Returns:
        A float32 scalar. Exactly 0 (with zero gradient) when the mask is empty, even if
        ``log_prob`` holds NaN or -inf at masked positions.
    """
    if log_prob.shape != echo_mask.shape:
        raise ValueError(f"log_prob {list(log_prob.shape)} and echo_mask {list(echo_mask.shape)} must have one shape")
    m = echo_mask if echo_mask.dtype == torch.bool else echo_mask != 0
    nll = torch.where(m, -log_prob.float(), 0.0).sum()
    if torch.is_tensor(normalizer):
        normalizer = normalizer.reshape(-1)[0] if normalizer.numel() else 1.0
    return nll / normalizer


def apply_echo_advantage(advantages: torch.Tensor, echo_mask: torch.Tensor, adv_coef: float) -> torch.Tensor:
    """``mode='advantage'``: a new advantages tensor with ``adv_coef`` added on clip tokens.

    Args:
        advantages: ``[B, L] float``; not modified.
        echo_mask: ``[B, L] bool``.
        adv_coef: the bonus.
    """
    if advantages.shape != echo_mask.shape:
        raise ValueError(f"advantages {list(advantages.shape)} and echo_mask {list(echo_mask.shape)} must have one shape")
    return advantages + echo_mask.to(advantages.dtype) * adv_coef
