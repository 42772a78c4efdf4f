"""A slow, literal implementation of SPEC 2.1-2.4, written from the spec text with plain loops.

It shares no code and no trick with :mod:`echorl.core`: one row at a time, one token at a time,
float64 Python arithmetic. The property tests compare :func:`echorl.select_echo_clips` against
:func:`ref_select_echo_clips` on random batches, and ``benchmarks/bench_select.py`` times it.

Shapes follow the notation of :mod:`echorl.core`: ``B`` rollouts, ``L`` response length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class RefSelection:
    """What the reference chose; fields mirror :class:`echorl.core.clips.EchoSelection`.

    mask: ``[B, L] bool``; eligible: ``[B] bool``; clip_end_step: ``[B] long`` (-1 = no clip);
    num_steps: ``[B] long`` (eligible rows only, else 0); peak_h: list of ``B`` floats (NaN when
    the row is not eligible or has no eligible step).
    """

    mask: torch.Tensor
    eligible: torch.Tensor
    clip_end_step: torch.Tensor
    num_steps: torch.Tensor
    peak_h: list


def ref_steps(tokens: Sequence[int], valid: Sequence[bool], boundary: set) -> list[list[int]]:
    """SPEC 2.1 for one row: the steps as lists of positions, in order.

    Walk the valid positions; position t ends a step when its token is a boundary, the next valid
    token is not a boundary and the step so far holds a non-boundary token, or when t is the last
    valid position.
    """
    vpos = [t for t in range(len(tokens)) if valid[t]]
    steps: list[list[int]] = []
    current: list[int] = []
    has_non_boundary = False
    for j, t in enumerate(vpos):
        current.append(t)
        t_is_b = tokens[t] in boundary
        if not t_is_b:
            has_non_boundary = True
        is_last = j == len(vpos) - 1
        next_is_b = (not is_last) and (tokens[vpos[j + 1]] in boundary)
        if is_last or (t_is_b and not next_is_b and has_non_boundary):
            steps.append(current)
            current = []
            has_non_boundary = False
    return steps


def ref_step_value(values: Sequence[float], step_agg: str) -> float:
    """SPEC 2.2: the aggregate of one step's token entropies, in float64."""
    if step_agg == "mean":
        total = 0.0
        for v in values:
            total += v
        return total / len(values)
    if step_agg == "sum":
        total = 0.0
        for v in values:
            total += v
        return total
    if step_agg == "max":
        best = values[0]
        for v in values[1:]:
            if v > best:
                best = v
        return best
    raise ValueError(f"unknown step_agg {step_agg!r}")


def ref_choose(h: Sequence[float], ok: Sequence[bool], selector: str, u: float) -> int:
    """SPEC 2.2-2.3 selectors for one row: the chosen step index, -1 when no step is eligible."""
    chosen = -1
    if selector == "peak":
        for k in range(len(h)):
            if ok[k] and (chosen == -1 or h[k] > h[chosen]):  # strict: ties keep the earliest
                chosen = k
    elif selector == "lowest":
        for k in range(len(h)):
            if ok[k] and (chosen == -1 or h[k] < h[chosen]):
                chosen = k
    elif selector == "full":
        for k in range(len(h)):
            if ok[k]:
                chosen = k
    elif selector == "random_prefix":
        eligible_steps = [k for k in range(len(h)) if ok[k]]
        if eligible_steps:
            chosen = eligible_steps[int(math.floor(u * len(eligible_steps)))]
    else:
        raise ValueError(f"unknown selector {selector!r}")
    return chosen


def ref_select_echo_clips(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    entropy: torch.Tensor,
    scores: torch.Tensor,
    group_ids: Any,
    cfg: Any,
    generator: torch.Generator | None = None,
    rows: Sequence[int] | None = None,
) -> RefSelection:
    """SPEC 2.1-2.3 for a batch, one row at a time.

    Args mirror :func:`echorl.select_echo_clips`. ``rows`` (optional) restricts the per-row step
    work to those rows (the benchmark uses it to time a subsample); eligibility is always decided
    on the whole batch, and rows outside ``rows`` get no clip.
    """
    B, L = responses.shape
    tokens = responses.tolist()
    valid = [[bool(x != 0) for x in r] for r in response_mask.tolist()]
    ent = entropy.to(torch.float64).tolist()
    s = [float(x) for x in scores.to(torch.float64).tolist()]
    uids = [int(x) for x in group_ids.tolist()] if torch.is_tensor(group_ids) else list(group_ids)
    boundary = set(int(i) for i in cfg.boundary_token_ids)

    # ---- SPEC 2.3: groups of non-empty rows; degenerated-success groups
    non_empty = [any(valid[i]) for i in range(B)]
    members: dict = {}
    for i in range(B):
        if non_empty[i]:
            members.setdefault(uids[i], []).append(i)
    deg_success = {}
    for uid, rows_of_group in members.items():
        all_equal = all(abs(s[a] - s[b]) <= cfg.tol for a in rows_of_group for b in rows_of_group)
        all_success = all(s[a] >= cfg.success_threshold for a in rows_of_group)
        deg_success[uid] = all_equal and all_success
    eligible = []
    for i in range(B):
        if not non_empty[i]:
            eligible.append(False)
        elif cfg.scope == "degenerate":
            eligible.append(deg_success[uids[i]])
        elif cfg.scope == "success":
            eligible.append(s[i] >= cfg.success_threshold)
        else:
            raise ValueError(f"unknown scope {cfg.scope!r}")

    # ---- random_prefix uniforms, drawn exactly as the core documents
    u = None
    if cfg.selector == "random_prefix" and any(eligible):
        if generator is None:  # the core's default: cfg.seed and a literal fingerprint of the batch
            fp = sum((t % 1_000_003) * (j + 1) * (i + 1) for i, r in enumerate(tokens) for j, t in enumerate(r))
            generator = torch.Generator().manual_seed((int(cfg.seed) * 1_000_003 + fp) % (2**63 - 1))
        gen = generator
        u = torch.rand(B, generator=gen, dtype=torch.float64).tolist()

    # ---- SPEC 2.1-2.2 per eligible row
    work = set(range(B)) if rows is None else set(rows)
    clip_end_step = [-1] * B
    num_steps = [0] * B
    peak_h = [float("nan")] * B
    steps_of: dict[int, list[list[int]]] = {}
    for i in range(B):
        if not eligible[i] or i not in work:
            continue
        steps = ref_steps(tokens[i], valid[i], boundary)
        steps_of[i] = steps
        num_steps[i] = len(steps)
        h = [ref_step_value([ent[i][t] for t in st], cfg.step_agg) for st in steps]
        ok = [len(st) >= cfg.min_step_tokens for st in steps]
        clip_end_step[i] = ref_choose(h, ok, cfg.selector, u[i] if u is not None else 0.0)
        eligible_h = [h[k] for k in range(len(h)) if ok[k]]
        if eligible_h:
            peak_h[i] = max(eligible_h)

    # ---- per='group': keep the clip of the row with the largest peak h, ties to the first row
    if cfg.per == "group":
        best_row: dict = {}
        for i in range(B):
            if clip_end_step[i] < 0:
                continue
            g = uids[i]
            if g not in best_row or peak_h[i] > peak_h[best_row[g]]:
                best_row[g] = i
        keep = set(best_row.values())
        for i in range(B):
            if i not in keep:
                clip_end_step[i] = -1
    elif cfg.per != "rollout":
        raise ValueError(f"unknown per {cfg.per!r}")

    # ---- the clip: every valid position from the first valid one to the end of the chosen step
    mask = [[False] * L for _ in range(B)]
    for i in range(B):
        k = clip_end_step[i]
        if k < 0:
            continue
        last_pos = steps_of[i][k][-1]
        for t in range(L):
            if valid[i][t] and t <= last_pos:
                mask[i][t] = True
    return RefSelection(
        mask=torch.tensor(mask, dtype=torch.bool).reshape(B, L),
        eligible=torch.tensor(eligible, dtype=torch.bool),
        clip_end_step=torch.tensor(clip_end_step, dtype=torch.long),
        num_steps=torch.tensor(num_steps, dtype=torch.long),
        peak_h=peak_h,
    )


def ref_pooled_group_mask(
    responses: torch.Tensor, response_mask: torch.Tensor, entropy: torch.Tensor, scores: torch.Tensor,
    group_ids: Any, cfg: Any,
) -> torch.Tensor:
    """The paper's wording of ``per='group'`` with ``selector='peak'`` (SPEC 2.3), literally: pool
    the eligible steps of every candidate rollout of a group, take the step with the highest
    aggregate (the first in batch order, then step order, on ties) and cut its parent rollout up
    to the end of that step. Returns the ``[B, L] bool`` clip mask."""
    B, L = responses.shape
    sel = ref_select_echo_clips(responses, response_mask, entropy, scores, group_ids,
                                _with_per(cfg, "rollout"))  # eligibility only; clips recomputed below
    tokens = responses.tolist()
    valid = [[bool(x != 0) for x in r] for r in response_mask.tolist()]
    ent = entropy.to(torch.float64).tolist()
    uids = [int(x) for x in group_ids.tolist()] if torch.is_tensor(group_ids) else list(group_ids)
    boundary = set(int(i) for i in cfg.boundary_token_ids)
    pool: dict = {}  # uid -> list of (h, row, last position of the step), in batch then step order
    for i in range(B):
        if not bool(sel.eligible[i]):
            continue
        for st in ref_steps(tokens[i], valid[i], boundary):
            if len(st) >= cfg.min_step_tokens:
                pool.setdefault(uids[i], []).append((ref_step_value([ent[i][t] for t in st], cfg.step_agg), i, st[-1]))
    mask = [[False] * L for _ in range(B)]
    for steps in pool.values():
        best = steps[0]
        for cand in steps[1:]:
            if cand[0] > best[0]:  # strict: the first of equal steps wins
                best = cand
        _, row, last = best
        for t in range(L):
            if valid[row][t] and t <= last:
                mask[row][t] = True
    return torch.tensor(mask, dtype=torch.bool).reshape(B, L)


def _with_per(cfg: Any, per: str) -> Any:
    import dataclasses

    return dataclasses.replace(cfg, per=per)
