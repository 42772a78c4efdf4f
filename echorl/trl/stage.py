"""The EchoRL stage over a batch that TRL deals out over processes (docs/trl.md "Processes").

TRL's ``GRPOTrainer`` gives process ``p`` the rows ``[p*b, (p+1)*b)`` of the global generation batch
of ``B = P*b`` rows; the rollouts of one prompt are ``num_generations`` consecutive global rows and
may straddle two processes. EchoRL's choice is per group (the member with the largest peak step
entropy, SPEC 2.3) and its normaliser counts the clips of the whole batch (SPEC 2.4), so no process
can choose from its own rows. :func:`split_echo_stage` gathers what the choice reads (token ids,
valid mask, token entropy and advantages of every row; the scores are already global in TRL), runs
:func:`echorl.stage.run_echo_stage` once on the global batch on every process (each gets the same
result), and hands back this process's rows. The selection, the per-row denominators ``D_b`` and
the metrics are those of a single process holding the whole batch, whatever the split.

Cost: one all-gather of ``[b, L]`` int32 ids, bool mask, float32 entropy and ``[b]`` advantages per
generation batch (9 bytes a token position), and the selection over ``[B, L]`` on every process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from echorl.core.config import EchoConfig
from echorl.stage import EchoStageOutput, run_echo_stage

__all__ = ["Collective", "SingleProcess", "SplitStageResult", "echo_term_scale", "minibatches_per_generation",
           "split_echo_stage"]


class Collective(Protocol):
    """What :func:`split_echo_stage` needs of ``accelerate.Accelerator`` (which provides both)."""

    num_processes: int
    process_index: int

    def gather(self, tensor: torch.Tensor) -> torch.Tensor: ...

    def pad_across_processes(self, tensor: torch.Tensor, dim: int = 0, pad_index: int = 0) -> torch.Tensor: ...


class SingleProcess:
    """The :class:`Collective` of one process holding the whole batch (no communication)."""

    num_processes = 1
    process_index = 0

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def pad_across_processes(self, tensor: torch.Tensor, dim: int = 0, pad_index: int = 0) -> torch.Tensor:
        return tensor


@dataclass
class SplitStageResult:
    """This process's share of the global stage.

    Attributes:
        echo_mask: ``[b, L] bool`` clip tokens of this process's rows (``L``: its own width).
        echo_denom: ``[b] float32`` the fixed per-row denominators ``D_b`` of those rows.
        advantages: ``[b, L] float`` with the clip bonus in ``mode='advantage'``, else ``None``.
        rows: the slice of global rows this process holds.
        stage: the global :class:`echorl.stage.EchoStageOutput` (``[B, L_max]`` tensors, the metrics).
    """

    echo_mask: torch.Tensor
    echo_denom: torch.Tensor
    advantages: torch.Tensor | None
    rows: slice
    stage: EchoStageOutput


def _gather_rows(acc: Collective, t: torch.Tensor, pad: float | int) -> torch.Tensor:
    """``[b, L_p]`` on every process -> ``[P*b, max_p L_p]`` in process order."""
    if t.dim() == 2:
        t = acc.pad_across_processes(t, dim=1, pad_index=pad)
    return acc.gather(t.contiguous())


def split_echo_stage(
    completion_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    entropy: torch.Tensor,
    advantages: torch.Tensor,
    scores: torch.Tensor,
    num_generations: int,
    cfg: EchoConfig,
    acc: Collective,
    *,
    num_minibatches: int = 1,
    step: int = 0,
) -> SplitStageResult:
    """Run :func:`echorl.stage.run_echo_stage` on the global batch and return this process's rows.

    Args:
        completion_ids: ``[b, L] long`` this process's completion token ids (right-padded).
        loss_mask: ``[b, L]`` 1 on the tokens the loss trains (TRL's ``completion_mask * tool_mask``).
        entropy: ``[b, L] float`` old-policy token entropy at the sampling temperature.
        advantages: ``[b]`` or ``[b, L] float`` TRL's advantages of this process's rows.
        scores: ``[B] float`` outcome reward of every row of the global batch (TRL gathers them).
        num_generations: rollouts per prompt; global row ``i`` belongs to group ``i // num_generations``.
        cfg: the options (``boundary_token_ids`` resolved).
        acc: the processes (an ``accelerate.Accelerator``, or :class:`SingleProcess`).
        num_minibatches: optimizer steps per pass over the generation batch (for ``D_b``).
        step: training step (seeds ``selector='random_prefix'``).

    Returns:
        :class:`SplitStageResult`; every process computes the same global stage.
    """
    b, width = completion_ids.shape
    for name, t in (("loss_mask", loss_mask), ("entropy", entropy)):
        if t.shape != (b, width):
            raise ValueError(f"{name} must have the shape of completion_ids [b, L]={[b, width]}, got {list(t.shape)}")
    if advantages.shape not in ((b,), (b, width)):
        raise ValueError(f"advantages must have shape [b]=[{b}] or [b, L]={[b, width]}, got {list(advantages.shape)}")
    P, p = acc.num_processes, acc.process_index
    B = P * b
    if scores.shape != (B,):
        raise ValueError(f"scores must hold one reward per row of the global batch [P*b]=[{B}], got {list(scores.shape)}")
    if num_generations < 1 or B % num_generations:
        raise ValueError(f"the global batch of {B} rows is not a whole number of groups of num_generations="
                         f"{num_generations}")
    responses = _gather_rows(acc, completion_ids.to(torch.int32), 0)  # [B, L]
    mask = _gather_rows(acc, (loss_mask != 0).to(torch.uint8), 0).bool()  # [B, L]
    ent = _gather_rows(acc, entropy.float(), 0.0)  # [B, L]
    adv = _gather_rows(acc, advantages.float(), 0.0)  # [B] or [B, L]
    if adv.dim() == 1:
        adv = adv.unsqueeze(1).expand(-1, mask.shape[1])
    group_ids = torch.arange(B, device=responses.device) // num_generations  # [B]
    out = run_echo_stage(responses, mask, ent, scores.to(responses.device), group_ids, cfg, advantages=adv,
                         num_minibatches=num_minibatches, step=step)
    rows = slice(p * b, (p + 1) * b)
    local_adv = None
    if cfg.adds_advantage_bonus:
        local_adv = out.advantages[rows, :width].to(advantages.dtype)
    return SplitStageResult(echo_mask=out.echo_mask[rows, :width], echo_denom=out.echo_denom_rows[rows],
                            advantages=local_adv, rows=rows, stage=out)


def echo_term_scale(num_processes: int, steps_per_generation: int, gradient_accumulation_steps: int) -> float:
    """The factor on one micro-batch's ``echo_loss_term`` that makes the applied gradient the
    mini-batch's ``L_echo`` (docs/trl.md "Normalisation").

    TRL's loss of a micro-batch is already scaled so that the sum over the accumulation window,
    averaged over processes by data-parallel gradient reduction, is the objective. The EchoRL term of
    a micro-batch sums its rows' ``nll_b / D_b``, with ``D_b`` fixed for one mini-batch, so it needs
    ``P`` (undoing the average over processes). When one optimizer step spans ``k`` generation
    batches (``gradient_accumulation_steps = k * steps_per_generation``), each batch's ``D_b`` makes
    its own ``L_echo``: the factor ``1/k`` averages them.
    """
    spg, ga = int(steps_per_generation), int(gradient_accumulation_steps)
    if spg % ga and ga % spg:
        raise ValueError(f"EchoRL on TRL needs steps_per_generation ({spg}) to be a multiple of "
                         f"gradient_accumulation_steps ({ga}) or the reverse, so that an optimizer step holds whole "
                         "mini-batches of one generation batch; change one of them")
    return float(num_processes) * (spg / ga if ga > spg else 1.0)


def minibatches_per_generation(steps_per_generation: int, gradient_accumulation_steps: int) -> int:
    """Optimizer steps per pass over one generation batch (at least 1), for ``D_b``."""
    return max(1, int(steps_per_generation) // int(gradient_accumulation_steps))
