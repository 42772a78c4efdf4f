"""DAPO dynamic sampling with EchoRL: which rows enter the RL term and which only the EchoRL term
(SPEC 2.7). Host-independent (torch only); the embedded engine's loop is
:mod:`echorl.local.dynamic_sampling`, verl's is its V1 ``ReplayBuffer``.

Dynamic sampling (``algorithm.filter_groups``, verl's keys) drops every group whose filter metric
has zero variance (verl: ``np.std(values) == 0`` over a group of more than one rollout) and
generates more until ``train_batch_size`` groups remain. With EchoRL:

* ``scope=success``: clips come from the mixed groups that survive; nothing else changes.
* ``scope=degenerate``: every group that could give a clip (all-success, zero variance) is
  dropped, so EchoRL would select nothing: refused (:func:`check_filter_groups`), unless
  ``keep_filtered`` keeps those groups for the EchoRL term.
* ``echorl.keep_filtered=true``: the dropped groups whose rollouts all succeed stay in the batch
  for the EchoRL term only (``echo_only`` rows). They cost an old-policy log-prob pass and their
  clip tokens in the update. They carry no RL gradient and do not enter the RL denominators: the
  host zeroes their RL response mask (:func:`rl_response_mask`) and cuts mini-batches over the RL
  rows only, spreading the kept rows over them (:func:`split_minibatches`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from echorl.core.config import EchoConfig

# filter metric -> what it is per rollout in the engine (its only per-rollout signal is the score)
FILTER_METRICS = ("acc", "score", "reward", "seq_reward", "seq_final_reward")


@dataclass(frozen=True)
class FilterConfig:
    """``algorithm.filter_groups`` (verl's keys): ``enable``, ``metric``, ``max_num_gen_batches``
    (0: no cap on generation batches per step)."""

    enable: bool = False
    metric: str = "acc"
    max_num_gen_batches: int = 0

    @classmethod
    def from_node(cls, node: Any) -> FilterConfig:
        """From an ``algorithm.filter_groups`` mapping or ``None`` (off)."""
        if node is None:
            return cls()
        get = node.get if hasattr(node, "get") else (lambda k, d=None: getattr(node, k, d))
        enable, metric, cap = get("enable", False), get("metric", None), get("max_num_gen_batches", 0)
        if not isinstance(enable, bool):
            raise ValueError(f"algorithm.filter_groups.enable must be a bool, got {enable!r}")
        if enable and metric not in FILTER_METRICS:
            raise ValueError(f"algorithm.filter_groups.metric must be one of {list(FILTER_METRICS)} here "
                             f"(acc: success indicator, the others: the outcome score), got {metric!r}")
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise ValueError(f"algorithm.filter_groups.max_num_gen_batches must be an int >= 0 (0: no cap), got {cap!r}")
        return cls(enable=enable, metric=str(metric or "acc"), max_num_gen_batches=cap)


def check_filter_groups(filter_enable: bool, echo: EchoConfig, host: str = "") -> None:
    """Refuse the combinations that cannot work (``ValueError`` naming the keys and the fix)."""
    if filter_enable and echo.enable and echo.scope == "degenerate" and not echo.keep_filtered:
        raise ValueError(
            "algorithm.filter_groups.enable=true with echorl.scope=degenerate would select nothing: DAPO dynamic "
            "sampling drops every zero-variance group, and the all-success zero-variance groups are the only ones "
            "scope=degenerate takes clips from. Fix: echorl.scope=success (the paper's rule, preset=paper: clips "
            "from the mixed groups that survive), echorl.keep_filtered=true where the host supports it, or "
            "algorithm.filter_groups.enable=false.")
    if echo.keep_filtered and echo.enable and echo.mode != "loss":
        raise ValueError(
            f"echorl.keep_filtered=true with echorl.mode={echo.mode!r}: the kept rows carry no RL gradient, so an "
            "advantage bonus on their clips would train nothing. Fix: echorl.mode=loss or echorl.keep_filtered=false.")
    if echo.keep_filtered and not filter_enable:
        raise ValueError(
            "echorl.keep_filtered=true keeps the groups DAPO dynamic sampling drops, but "
            f"algorithm.filter_groups.enable=false{host}. Fix: enable filter_groups or set echorl.keep_filtered=false.")


def filter_values(scores: torch.Tensor, metric: str, success_threshold: float) -> torch.Tensor:
    """``[B] float64`` per-rollout value of the filter metric: ``acc`` is the success indicator
    (``score >= success_threshold``), every other metric the outcome score."""
    s = scores.to(torch.float64)
    return (s >= success_threshold).to(torch.float64) if metric == "acc" else s


def zero_variance_rows(values: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """``[B] bool``: rows of groups with more than one row whose values are all equal (verl's
    ``np.std(values) == 0``, exact). ``values`` ``[B] float``, ``group_index`` ``[B] long``."""
    if values.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    g = torch.unique(group_index, return_inverse=True)[1]
    G = int(g.max()) + 1
    v = values.to(torch.float64)
    gmin = torch.full((G,), float("inf"), dtype=torch.float64).scatter_reduce(0, g, v, "amin")
    gmax = torch.full((G,), float("-inf"), dtype=torch.float64).scatter_reduce(0, g, v, "amax")
    size = torch.bincount(g, minlength=G)
    return ((gmax == gmin) & (size > 1))[g]


@dataclass
class RowPlan:
    """Where each row of a generation batch goes.

    Attributes:
        rl: ``[B] bool`` rows of surviving groups (RL term and EchoRL selection).
        echo_only: ``[B] bool`` rows of dropped all-success groups kept for the EchoRL term
            (``keep_filtered``); disjoint from ``rl``.
    """

    rl: torch.Tensor
    echo_only: torch.Tensor

    @property
    def dropped(self) -> torch.Tensor:
        """``[B] bool`` rows that leave the step."""
        return ~(self.rl | self.echo_only)


def plan_rows(scores: torch.Tensor, group_index: torch.Tensor, filt: FilterConfig, echo: EchoConfig) -> RowPlan:
    """Classify the rows of one generation batch (``scores`` ``[B]``, ``group_index`` ``[B] long``).

    Filter off: every row is an RL row. Filter on: zero-variance groups leave the RL term; with
    ``echo.keep_filtered`` (and EchoRL on) those whose rows all succeed stay as ``echo_only``.
    """
    B = scores.shape[0]
    if not filt.enable:
        return RowPlan(rl=torch.ones(B, dtype=torch.bool), echo_only=torch.zeros(B, dtype=torch.bool))
    zero_var = zero_variance_rows(filter_values(scores, filt.metric, echo.success_threshold), group_index)
    echo_only = torch.zeros(B, dtype=torch.bool)
    if echo.keep_filtered and echo.active:
        succ = (scores.to(torch.float64) >= echo.success_threshold).to(torch.float64)
        all_succ = zero_variance_rows(succ, group_index) & (succ > 0)
        echo_only = zero_var & all_succ
    return RowPlan(rl=~zero_var, echo_only=echo_only)


def rl_response_mask(response_mask: torch.Tensor, echo_only: torch.Tensor | None) -> torch.Tensor:
    """The response mask the RL loss sees: ``[B, L]``, zero on ``echo_only`` rows (so they add
    nothing to the RL sums nor to ``batch_num_tokens``); the input object when there are none."""
    if echo_only is None or not bool(echo_only.any()):
        return response_mask
    return response_mask * (~echo_only).to(response_mask.dtype).unsqueeze(1)


def split_minibatches(order: torch.Tensor, echo_only: torch.Tensor | None, mini: int) -> list[torch.Tensor]:
    """Row indices of each mini-batch.

    Args:
        order: ``[B] long`` the epoch's row order (shuffled or not).
        echo_only: ``[B] bool`` rows kept for the EchoRL term only, or ``None``.
        mini: RL rows per mini-batch (``ppo_mini_batch_size * n``).

    The RL rows of ``order`` are cut into chunks of ``mini`` exactly as without kept rows; the kept
    rows (in ``order``) are dealt round-robin over those chunks, so they never form an optimizer
    step of their own and the RL mini-batches are DAPO's.
    """
    if echo_only is None or not bool(echo_only.any()):
        return [order[i:i + mini] for i in range(0, order.numel(), mini)]
    kept = echo_only[order]
    rl_rows, echo_rows = order[~kept], order[kept]
    chunks = [rl_rows[i:i + mini] for i in range(0, rl_rows.numel(), mini)] or [rl_rows]
    M = len(chunks)
    return [torch.cat([chunks[j], echo_rows[j::M]]) for j in range(M)]
