"""The EchoRL stage: the one call both hosts make between rollout scoring and the actor update.

verl's trainer (:mod:`echorl.verl.trainer`) and the embedded engine (:mod:`echorl.local`) hand it
the batch's tensors; it returns the EchoClip mask, the fixed loss normaliser (SPEC 2.4), the
advantages (changed only in ``mode='advantage'``) and the ``echo/*`` metrics (SPEC 2.5).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from echorl import metric_names as M
from echorl.core.clips import EchoSelection, grad_token_fractions, select_echo_clips
from echorl.core.config import EchoConfig
from echorl.core.loss import PER_CLIP_LOSS_AGGS, apply_echo_advantage, denominators_from_counts
from echorl.core.steps import EchoBoundaryWarning, EchoSingleStepWarning


@dataclass
class EchoStageOutput:
    """Result of :func:`run_echo_stage`.

    Attributes:
        echo_mask: ``[B, L] bool`` clip tokens to train on (all False unless ``cfg.active`` and
            ``mode='loss'``; in ``mode='advantage'`` the clips are in ``advantages`` instead).
        echo_denom_rows: ``[B] float32`` the fixed per-row denominators ``D_b`` of the EchoRL term
            (:func:`echorl.core.loss.echo_row_denominators`); the hosts store them as ``echo_denom``.
        echo_denom: a scalar summary (``echo/denom``): the one ``D`` of the token normalisations,
            or for ``loss_agg='clip_mean'`` the clips per mini-batch ``C / M``.
        advantages: ``[B, L]`` advantages for the actor (a new tensor in ``mode='advantage'``,
            the input object otherwise; ``None`` if none was given).
        selection: the raw :class:`EchoSelection` (for analysis and pictures).
        metrics: ``echo/*`` scalars.
    """

    echo_mask: torch.Tensor
    echo_denom_rows: torch.Tensor
    echo_denom: float
    advantages: torch.Tensor | None
    selection: EchoSelection
    metrics: dict[str, float]


def run_echo_stage(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    entropy: torch.Tensor,
    scores: torch.Tensor,
    group_ids: torch.Tensor | Sequence,
    cfg: EchoConfig,
    *,
    advantages: torch.Tensor | None = None,
    num_minibatches: int = 1,
    step: int = 0,
    echo_only: torch.Tensor | None = None,
) -> EchoStageOutput:
    """Select EchoClips and prepare the actor update.

    Args:
        responses, response_mask, entropy, scores, group_ids: as :func:`select_echo_clips`
            (``[B, L]``, ``[B, L]``, ``[B, L]``, ``[B]``, ``[B]``).
        cfg: the options.
        advantages: ``[B, L] float`` from the base estimator; used for the gradient-token metrics
            and, in ``mode='advantage'``, returned with the clip bonus added.
        num_minibatches: optimizer steps per batch, for the normaliser.
        step: training step; seeds ``selector='random_prefix'`` as ``(cfg.seed, step)``.
        echo_only: ``[B] bool`` rows kept for the EchoRL term only (``echorl.keep_filtered``: groups
            dynamic sampling dropped); they take part in selection like any row, and are counted in
            ``echo/kept_rows``, ``echo/kept_clip_tokens`` and ``echo/clips_from_kept``. Keeping them
            out of the RL term is the host's job (:mod:`echorl.filtering`).

    With ``cfg.enable=False`` the selection is still made and reported (what EchoRL *would* echo;
    ``echo/active`` is 0) but nothing reaches training.
    """
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + int(step))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EchoBoundaryWarning)  # the core warns once per run itself
        sel = select_echo_clips(responses, response_mask, entropy, scores, group_ids, cfg, generator=gen)
    metrics = dict(sel.metrics)
    for w in caught:  # a boundary warning is also a metric of the step; every warning goes on to the caller
        if issubclass(w.category, EchoBoundaryWarning):
            single = issubclass(w.category, EchoSingleStepWarning)
            metrics[M.SINGLE_STEP_WARNING if single else M.NO_BOUNDARY_WARNING] = 1.0
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    active = cfg.active
    metrics["echo/active"] = float(active)
    use_loss = cfg.adds_loss_term
    echo_mask = sel.mask if use_loss else torch.zeros_like(sel.mask)
    denom_rows = denominators_from_counts(sel.clip_len, float(sel.lengths.sum()), cfg.loss_agg, num_minibatches)
    if cfg.loss_agg in PER_CLIP_LOSS_AGGS:
        denom = metrics["echo/clips"] / num_minibatches
    else:
        denom = float(denom_rows[0]) if denom_rows.numel() else 1.0
    metrics["echo/denom"] = denom
    if echo_only is not None:
        kept = torch.as_tensor(echo_only, dtype=torch.bool, device=sel.mask.device)
        if kept.shape != sel.clip_len.shape:
            raise ValueError(f"echo_only must have shape [B]=[{sel.clip_len.shape[0]}], got {list(kept.shape)}")
        metrics["echo/kept_rows"] = float(kept.sum())
        metrics["echo/kept_clip_tokens"] = float(torch.where(kept, sel.clip_len, 0).sum())
        metrics["echo/clips_from_kept"] = float((kept & (sel.clip_end_step >= 0)).sum())
    out_adv = advantages
    if advantages is not None:
        if advantages.shape != sel.mask.shape:
            raise ValueError(f"advantages must have shape [B, L]={list(sel.mask.shape)}, got {list(advantages.shape)}")
        if cfg.adds_advantage_bonus:
            out_adv = apply_echo_advantage(advantages, sel.mask, cfg.adv_coef)
        metrics.update(grad_token_fractions(advantages, response_mask, sel.mask))
    return EchoStageOutput(echo_mask=echo_mask, echo_denom_rows=denom_rows, echo_denom=denom, advantages=out_adv,
                           selection=sel, metrics=metrics)


def num_minibatches(batch_size: int, ppo_mini_batch_size: int, rollout_n: int) -> int:
    """Optimizer steps per epoch of one step's batch of ``batch_size`` rows, as both hosts cut it.

    verl's ``_update_actor`` passes ``mini_batch_size = ppo_mini_batch_size * rollout.n`` rows (the
    mini-batch size counts prompts) and ``_balance_batch`` pads the batch to a multiple of it, so it
    is ``batch_size / mini``; the embedded engine cuts its batch the same way.
    """
    mini = int(ppo_mini_batch_size) * int(rollout_n)
    if mini <= 0:
        raise ValueError(f"actor_rollout_ref.actor.ppo_mini_batch_size * rollout.n must be > 0, got {mini}")
    return max(1, -(-int(batch_size) // mini))
