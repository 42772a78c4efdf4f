"""The EchoRL loss term and the advantage variant (SPEC 2.4).

``mode='loss'`` (the paper): ``L = L_RL + coef * L_echo`` with

    L_echo = sum_{rows b} sum_{clip tokens t of b} -log pi_theta(t) / D_b

computed from the log-probs the RL loss already has (no extra forward). The per-row denominators
``D_b`` are fixed *before* the update from the whole batch (:func:`echo_row_denominators`), so the
gradient is the same however a mini-batch is cut into micro-batches or spread over data-parallel
ranks: each micro-batch adds its rows' terms and the sum over micro-batches is the mini-batch
term. No ratio, no clipping, no advantage, and no collective inside the loss.

``loss_agg`` (counts of the whole batch of ``M`` mini-batches, scaled to one mini-batch):

* ``clip_mean`` (the paper): ``D_b = |c_b| * C / M`` with ``|c_b|`` the clip length of row ``b`` and
  ``C`` the clips of the batch: token ``t`` of clip ``c`` weighs ``1 / (|c| * C_mb)``, i.e. the
  term is the mean over the mini-batch's ``C_mb = C / M`` clips of each clip's token-mean NLL.
  Each row holds at most one clip, so a per-row weight is a per-clip weight.
* ``clip_token_mean``: ``D_b = (clip tokens of the batch) / M`` on every row.
* ``token_mean``: ``D_b = (valid response tokens of the batch) / M`` on every row.

Rows without a clip get ``D_b = 1`` (their term is 0 anyway); the two token normalisations are
clamped to ``>= 1``.

``mode='advantage'``: :func:`apply_echo_advantage` adds ``adv_coef`` to the advantage of every clip
token before the update, so the term rides any method's own policy loss.
"""

from __future__ import annotations

import torch

from echorl.core.registry import LOSS_AGGS
from echorl.core.tensorops import count_true

# loss_agg name -> fn(clip_len [B] float64, valid_tokens, num_minibatches) -> [B] float64 D_b
# loss_aggs whose D_b differs between rows (no single scalar D)
PER_CLIP_LOSS_AGGS = ("clip_mean",)


@LOSS_AGGS.register("clip_mean")
def _norm_clip_mean(clip_len: torch.Tensor, valid_tokens: float, num_minibatches: int) -> torch.Tensor:
    """``|c_b| * C / M`` on rows with a clip, 1 elsewhere (``C`` clips in the batch)."""
    has = clip_len > 0
    clips_per_mini = float(count_true(has.unsqueeze(0)).sum()) / num_minibatches
    return torch.where(has, clip_len * clips_per_mini, 1.0)


@LOSS_AGGS.register("clip_token_mean")
def _norm_clip_tokens(clip_len: torch.Tensor, valid_tokens: float, num_minibatches: int) -> torch.Tensor:
    """Clip tokens of the whole batch scaled to one mini-batch, on every row."""
    return torch.full_like(clip_len, max(float(clip_len.sum()) / num_minibatches, 1.0))


@LOSS_AGGS.register("token_mean")
def _norm_all_tokens(clip_len: torch.Tensor, valid_tokens: float, num_minibatches: int) -> torch.Tensor:
    """Valid response tokens of the whole batch scaled to one mini-batch (the RL token-mean's)."""
    return torch.full_like(clip_len, max(float(valid_tokens) / num_minibatches, 1.0))


def _check_minibatches(num_minibatches: int) -> None:
    if isinstance(num_minibatches, bool) or not isinstance(num_minibatches, int) or num_minibatches < 1:
        raise ValueError(f"num_minibatches must be a positive int, got {num_minibatches!r}")


def _count(m: torch.Tensor) -> torch.Tensor:
    return count_true(m if m.dtype == torch.bool else m != 0)


def denominators_from_counts(clip_len: torch.Tensor, valid_tokens: float, loss_agg: str,
                             num_minibatches: int) -> torch.Tensor:
    """:func:`echo_row_denominators` from the clip length per row (``[B]`` integer) and the valid
    tokens of the batch. Returns ``[B] float32``."""
    _check_minibatches(num_minibatches)
    fn = LOSS_AGGS.get(loss_agg)
    return fn(clip_len.to(torch.float64), float(valid_tokens), num_minibatches).float()


def echo_row_denominators(
    echo_mask: torch.Tensor, response_mask: torch.Tensor, loss_agg: str = "clip_mean", num_minibatches: int = 1
) -> torch.Tensor:
    """The fixed per-row denominators ``D_b`` of the EchoRL term (see the module docstring).

    Args:
        echo_mask: ``[B, L] bool`` clip tokens of the whole batch (all mini-batches of the step).
        response_mask: ``[B, L]`` valid response tokens of the whole batch.
        loss_agg: a name in ``LOSS_AGGS``.
        num_minibatches: optimizer steps the batch is cut into (``B / ppo_mini_batch_size``).

    Returns:
        ``[B] float32``, every entry ``> 0``.
    """
    return denominators_from_counts(_count(echo_mask), float(_count(response_mask).sum()), loss_agg, num_minibatches)


def echo_normalizer(
    echo_mask: torch.Tensor, response_mask: torch.Tensor, loss_agg: str = "clip_token_mean", num_minibatches: int = 1
) -> float:
    """The one denominator ``D`` of the token normalisations (``clip_token_mean``, ``token_mean``)
    for one mini-batch; ``clip_mean`` has one per row (:func:`echo_row_denominators`).

    Args: as :func:`echo_row_denominators`. Returns ``D >= 1``.
    """
    if loss_agg in PER_CLIP_LOSS_AGGS:
        raise ValueError(f"loss_agg={loss_agg!r} weighs each clip by its own length: there is no single "
                         "denominator; use echo_row_denominators")
    return normalizer_from_counts(float(_count(echo_mask).sum()), float(_count(response_mask).sum()), loss_agg,
                                  num_minibatches)


def normalizer_from_counts(clip_tokens: float, valid_tokens: float, loss_agg: str, num_minibatches: int) -> float:
    """:func:`echo_normalizer` from the batch's clip-token and valid-token counts (token
    normalisations only)."""
    if loss_agg in PER_CLIP_LOSS_AGGS:
        raise ValueError(f"loss_agg={loss_agg!r} has per-row denominators; use denominators_from_counts")
    d = denominators_from_counts(torch.tensor([float(clip_tokens)]), valid_tokens, loss_agg, num_minibatches)
    return float(d[0])


def echo_loss_term(log_prob: torch.Tensor, echo_mask: torch.Tensor, normalizer: float | torch.Tensor) -> torch.Tensor:
    """``L_echo`` of one micro-batch: ``sum_b sum_t (-log_prob * echo_mask)[b, t] / D_b``.

    Args:
        log_prob: ``[b, L] float`` current-policy log-probs of the response tokens (with grad).
        echo_mask: ``[b, L]`` clip tokens (bool or 0/1).
        normalizer: ``D_b`` from :func:`echo_row_denominators` as a ``[b]`` tensor (as stored per
            row by the hosts), or one ``D`` (a float or a scalar tensor) for every row.

    Returns:
        A float32 scalar. Exactly 0 (with zero gradient) when the mask is empty, even if
        ``log_prob`` holds NaN or -inf at masked positions.
    """
    if log_prob.shape != echo_mask.shape:
        raise ValueError(f"log_prob {list(log_prob.shape)} and echo_mask {list(echo_mask.shape)} must have one shape")
    m = echo_mask if echo_mask.dtype == torch.bool else echo_mask != 0
    nll = torch.where(m, -log_prob.float(), 0.0)  # [b, L]
    if torch.is_tensor(normalizer) and normalizer.dim() > 0:
        if normalizer.shape != (log_prob.shape[0],):
            raise ValueError(f"normalizer must be a scalar or one value per row [b]=[{log_prob.shape[0]}], "
                             f"got {list(normalizer.shape)}")
        return (nll.sum(dim=1) / normalizer.to(device=nll.device, dtype=torch.float32)).sum()
    return nll.sum() / normalizer


RL_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-sum-norm", "seq-mean-token-mean")


def rl_agg_scale(loss_agg_mode: str, batch_num_tokens: float, global_batch_size: float,
                 loss_scale_factor: float | None = None, width: int | None = None) -> float:
    """The weight of one valid token in the RL loss under verl's ``loss_agg_mode`` divided by its
    weight under ``token-mean`` (``1 / N``), for a mini-batch of ``N = batch_num_tokens`` valid tokens
    in ``G = global_batch_size`` sequences (``echorl.follow_rl_agg``, docs/method.md):

    * ``token-mean``: 1; ``seq-mean-token-mean``: 1 (a mean of per-sequence means);
    * ``token-sum``: ``N``; ``seq-mean-token-sum``: ``N / G``;
    * ``seq-mean-token-sum-norm``: ``N / (G * F)`` with ``F = loss_scale_factor``, or ``width`` (verl's
      fallback: the micro-batch's padded response width) when it is ``None``.

    ``N`` and ``G`` are verl's ``batch_num_tokens`` and ``global_batch_size`` of the micro-batch data,
    fixed for the whole mini-batch before its micro-batches run, so the scale does not depend on the
    split (except through ``width`` when ``loss_scale_factor`` is unset, as verl's own RL term).
    """
    if loss_agg_mode not in RL_AGG_MODES:
        raise ValueError(f"actor.loss_agg_mode={loss_agg_mode!r} is not one of {list(RL_AGG_MODES)}: "
                         "echorl.follow_rl_agg cannot follow it; set echorl.follow_rl_agg=false")
    if loss_agg_mode in ("token-mean", "seq-mean-token-mean"):
        return 1.0
    if batch_num_tokens is None or (loss_agg_mode != "token-sum" and not global_batch_size):
        raise ValueError(f"echorl.follow_rl_agg with loss_agg_mode={loss_agg_mode} needs the micro-batch's "
                         f"batch_num_tokens and global_batch_size, got {batch_num_tokens} and {global_batch_size}")
    n = float(batch_num_tokens)
    if loss_agg_mode == "token-sum":
        return n
    scale = n / float(global_batch_size)
    if loss_agg_mode == "seq-mean-token-sum-norm":
        factor = loss_scale_factor if loss_scale_factor is not None else width
        if not factor:
            raise ValueError("seq-mean-token-sum-norm without actor.loss_scale_factor needs the response width")
        scale /= float(factor)
    return scale


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
