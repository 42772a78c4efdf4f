"""Which rollouts echo, and where their EchoClip ends (SPEC 2.2-2.3, API of SPEC 3).

:func:`select_echo_clips` is the one entry point both hosts call. It works on eligible rows only
(usually a third of the batch), so its cost is a few passes over ``[E, L]`` plus one finiteness
check over the entropy.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from echorl.core.config import EchoConfig
from echorl.core.registry import SELECTORS
from echorl.core.steps import (
    EchoBoundaryWarning,
    EchoSingleStepWarning,
    aggregate_bins,
    boundary_ids_tensor,
    is_boundary_token,
    step_bins_,
    step_ids,
)
from echorl.core.tensorops import count_true

_warned_no_boundary: set[tuple[int, ...]] = set()
_warned_single_step: set[tuple[str, tuple[int, ...]]] = set()
# The single-step warning looks at batches with at least this many eligible responses (a handful of
# one-line successes says nothing about the boundaries).
SINGLE_STEP_WARN_MIN_ROWS = 8


def reset_boundary_warnings() -> None:
    """Forget which boundary warnings were given: each host calls it when a run starts, so each
    warning fires once per run (per boundary setting)."""
    _warned_no_boundary.clear()
    _warned_single_step.clear()


@dataclass
class EchoSelection:
    """What :func:`select_echo_clips` chose.

    Attributes:
        mask: ``[B, L] bool``, True on EchoClip tokens (a subset of the response mask, and a prefix
            of each row's valid positions).
        metrics: ``echo/*`` scalars of SPEC 2.5 (those that need no advantages or loss).
        eligible: ``[B] bool`` rollouts eligible by score and group (before step rules and ``per``).
        clip_end_step: ``[B] long`` index of the step the clip ends at, ``-1`` without a clip.
        num_steps: ``[B] long`` steps of eligible rows (``0`` elsewhere).
        peak_h: ``[B] float`` highest eligible step aggregate of eligible rows (NaN elsewhere).
        lengths: ``[B] long`` valid response tokens per row.
        group_index: ``[B] long`` group codes ``0..G-1`` of the uids.
        clip_len: ``[B] long`` clip tokens per row (0 without a clip).
    """

    mask: torch.Tensor
    metrics: dict[str, float]
    eligible: torch.Tensor
    clip_end_step: torch.Tensor
    num_steps: torch.Tensor
    peak_h: torch.Tensor
    lengths: torch.Tensor = field(repr=False)
    group_index: torch.Tensor = field(repr=False)
    clip_len: torch.Tensor = field(repr=False)


# ---------------------------------------------------------------------------- selectors
@SELECTORS.register("peak")
def _select_peak(h: torch.Tensor, eligible: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Highest-aggregate eligible step; ties go to the earliest (``argmax`` returns the first)."""
    k = h.masked_fill(~eligible, float("-inf")).argmax(dim=1)
    return k.masked_fill_(~eligible.any(dim=1), -1)


@SELECTORS.register("lowest")
def _select_lowest(h: torch.Tensor, eligible: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Lowest-aggregate eligible step; ties go to the earliest."""
    k = h.masked_fill(~eligible, float("inf")).argmin(dim=1)
    return k.masked_fill_(~eligible.any(dim=1), -1)


@SELECTORS.register("full")
def _select_full(h: torch.Tensor, eligible: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The last eligible step (the whole response when the last step is eligible)."""
    idx = torch.arange(h.shape[1], device=h.device)
    return torch.where(eligible, idx, -1).amax(dim=1) if h.shape[1] else h.new_zeros(h.shape[0], dtype=torch.long) - 1


@SELECTORS.register("random_prefix")
def _select_random(h: torch.Tensor, eligible: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """A uniformly random eligible step: the ``floor(u * n)``-th eligible step of the row."""
    n = eligible.sum(dim=1)  # [E]
    j = (u.to(torch.float64) * n).floor().long().clamp_(max=(n - 1).clamp(min=0))  # [E]
    cs = eligible.cumsum(dim=1)  # [E, S]
    k = ((cs > j.unsqueeze(1)) & eligible).int().argmax(dim=1)
    return k.masked_fill_(n == 0, -1)


# ---------------------------------------------------------------------------- inputs
def _group_codes(group_ids: torch.Tensor | Sequence, B: int, device: torch.device) -> torch.Tensor:
    """Map uids (a ``[B]`` integer tensor or any sequence of hashables) to codes ``[B] long``."""
    if torch.is_tensor(group_ids):
        if group_ids.shape != (B,):
            raise ValueError(f"group_ids must have shape [B]=[{B}], got {tuple(group_ids.shape)}")
        if group_ids.dtype.is_floating_point or group_ids.dtype.is_complex or group_ids.dtype == torch.bool:
            raise ValueError(f"group_ids must be an integer tensor or a sequence of hashables, got dtype {group_ids.dtype}")
        return torch.unique(group_ids.to(device), return_inverse=True)[1].long()
    if isinstance(group_ids, (str, bytes)) or len(group_ids) != B:
        n = "a string" if isinstance(group_ids, (str, bytes)) else f"length {len(group_ids)}"
        raise ValueError(f"group_ids must be a sequence of B={B} uids, got {n}")
    # Codes follow the sorted order of the uids (as torch.unique does for tensors); mixed,
    # unorderable uid types fall back to first-seen order. Tuple uids stay one uid each.
    first_seen: dict = {}
    for g in group_ids:
        first_seen.setdefault(g, len(first_seen))
    try:
        order = {g: i for i, g in enumerate(sorted(first_seen))}
    except TypeError:
        order = first_seen
    return torch.tensor([order[g] for g in group_ids], dtype=torch.long, device=device)


def _check_inputs(responses, response_mask, entropy, scores) -> None:
    for name, t in (("responses", responses), ("response_mask", response_mask), ("entropy", entropy), ("scores", scores)):
        if not torch.is_tensor(t):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if responses.dim() != 2:
        raise ValueError(f"responses must have shape [B, L], got {tuple(responses.shape)}")
    if responses.dtype.is_floating_point or responses.dtype.is_complex or responses.dtype == torch.bool:
        raise ValueError(f"responses must hold integer token ids, got dtype {responses.dtype}")
    B, L = responses.shape
    if response_mask.shape != (B, L):
        raise ValueError(f"response_mask must have the shape of responses [B, L]={[B, L]}, got {list(response_mask.shape)}")
    if response_mask.dtype.is_complex:
        raise ValueError(f"response_mask must be bool, integer or float, got dtype {response_mask.dtype}")
    if entropy.shape != (B, L):
        raise ValueError(f"entropy must have the shape of responses [B, L]={[B, L]}, got {list(entropy.shape)}")
    if not entropy.dtype.is_floating_point:
        raise ValueError(f"entropy must be a floating tensor, got dtype {entropy.dtype}")
    if scores.shape != (B,):
        raise ValueError(f"scores must have shape [B]=[{B}] (one outcome reward per rollout), got {list(scores.shape)}")
    if scores.dtype.is_complex or scores.dtype == torch.bool:
        raise ValueError(f"scores must be a real tensor, got dtype {scores.dtype}")
    for name, t in (("response_mask", response_mask), ("entropy", entropy), ("scores", scores)):
        if t.device != responses.device:
            raise ValueError(f"{name} is on {t.device} but responses is on {responses.device}; put them on one device")
    if scores.dtype.is_floating_point and not bool(torch.isfinite(scores).all()):
        bad = (~torch.isfinite(scores)).nonzero().flatten()[:5].tolist()
        raise ValueError(f"scores contain NaN or inf (rows {bad}...); fix the reward function")


def _check_entropy_finite(entropy: torch.Tensor, response_mask: torch.Tensor) -> None:
    """Raise on NaN/inf entropy at valid positions. The common case costs one sum (a NaN or inf
    anywhere makes it non-finite); only then is the ``[B, L]`` check made (masked positions may
    hold anything)."""
    if bool(torch.isfinite(entropy.sum())):
        return
    bad = ~torch.isfinite(entropy) & (response_mask != 0)
    if bool(bad.any()):
        rows = bad.any(dim=1).nonzero().flatten()
        raise ValueError(
            f"entropy has NaN or inf at {int(bad.sum())} valid response positions (rows {rows[:5].tolist()}...); "
            "the old-policy entropy pass is broken"
        )


def default_generator(responses: torch.Tensor, seed: int) -> torch.Generator:
    """The ``random_prefix`` generator when none is given: seeded with ``seed`` and a fingerprint of
    the batch, ``sum_ij (responses[i, j] mod 1000003) * (j + 1) * (i + 1)`` over ``responses [B, L]``
    (padding included), so two steps' batches draw different uniforms while the same batch and seed
    always draw the same. The hosts pass their own generator seeded with ``(cfg.seed, step)``."""
    B, L = responses.shape
    col = torch.arange(1, L + 1, device=responses.device, dtype=torch.long)  # [L]
    fp = torch.zeros((), dtype=torch.long, device=responses.device)
    chunk = max(1, (1 << 19) // max(L, 1))  # rows per pass: int64 temporaries of at most 4 MiB
    for start in range(0, B, chunk):  # int64 sums wrap mod 2**64 alike in any order: same value as one pass
        part = responses[start:start + chunk].long() % 1_000_003  # [c, L]
        part.mul_(col)
        row = torch.arange(start + 1, start + part.shape[0] + 1, device=responses.device, dtype=torch.long)
        fp += (part.sum(dim=1) * row).sum()
    fp = int(fp)
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + fp) % (2**63 - 1))


# ---------------------------------------------------------------------------- main entry
def select_echo_clips(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    entropy: torch.Tensor,
    scores: torch.Tensor,
    group_ids: torch.Tensor | Sequence,
    cfg: EchoConfig,
    generator: torch.Generator | None = None,
) -> EchoSelection:
    """Select the EchoClip of every eligible rollout (SPEC 2.2-2.3).

    Args:
        responses: ``[B, L] long`` response token ids.
        response_mask: ``[B, L]`` 1/True on valid response tokens (bool, integer or float).
        entropy: ``[B, L] float`` token entropy of the old-policy pass (any float dtype).
        scores: ``[B] float`` outcome reward per rollout.
        group_ids: ``[B] long`` tensor or a sequence of ``B`` hashables (verl's uids).
        cfg: the options; ``cfg.enable``, ``mode`` and ``coef`` are read by the hosts, not here.
        generator: CPU generator for ``selector='random_prefix'``; default: :func:`default_generator`
            (``cfg.seed`` and the batch's tokens, so successive steps draw differently, reproducibly).
            ``B`` uniforms are drawn from it (one per row, used by eligible rows).

    Returns:
        :class:`EchoSelection`. Inputs are not modified.
    """
    if not isinstance(cfg, EchoConfig):
        raise ValueError(f"cfg must be an EchoConfig, got {type(cfg).__name__}")
    if not cfg.boundary_token_ids:
        raise ValueError("cfg.boundary_token_ids is empty (boundary='auto' not resolved): use cfg.resolve_boundary(tokenizer)")
    _check_inputs(responses, response_mask, entropy, scores)
    B, L = responses.shape
    device = responses.device
    codes = _group_codes(group_ids, B, device)  # [B]
    valid = response_mask if response_mask.dtype == torch.bool else response_mask != 0  # [B, L] bool, once
    lengths = count_true(valid)  # [B]

    # ---- groups and eligibility (SPEC 2.3); all [B] or [G] sized
    row_ok = lengths > 0  # empty rows (verl padding rows) are never members nor eligible
    s = scores.to(torch.float64)
    G = int(codes.max()) + 1 if B else 0
    gcode = torch.where(row_ok, codes, G)  # dump bin G for empty rows
    gmin = torch.full((G + 1,), float("inf"), dtype=torch.float64, device=device).scatter_reduce_(0, gcode, s, "amin")
    gmax = torch.full((G + 1,), float("-inf"), dtype=torch.float64, device=device).scatter_reduce_(0, gcode, s, "amax")
    gsize = torch.bincount(gcode, minlength=G + 1)
    gmin, gmax, gsize = gmin[:G], gmax[:G], gsize[:G]
    thr = cfg.success_threshold
    g_real = gsize > 0
    g_zero_var = g_real & (gmax - gmin <= cfg.tol)
    g_all_succ = g_real & (gmin >= thr)
    g_all_fail = g_real & (gmax < thr)
    g_deg_succ = g_zero_var & g_all_succ
    if cfg.scope == "degenerate":
        eligible = row_ok & g_deg_succ[codes] if G else row_ok
    else:
        eligible = row_ok & (s >= thr)
    idx = eligible.nonzero().flatten()  # [E]
    E = idx.numel()
    # With every row eligible, a sum or mean step aggregate covers every valid position and is
    # non-finite exactly when one of them is: the check then costs nothing on a clean batch.
    check_in_h = E == B and cfg.step_agg in ("mean", "sum")
    if not check_in_h:
        _check_entropy_finite(entropy, response_mask)

    # ---- steps and clips on eligible rows only (SPEC 2.1-2.2); nothing [B, L] but the output
    clip_end_step = torch.full((B,), -1, dtype=torch.long, device=device)
    num_steps = torch.zeros(B, dtype=torch.long, device=device)
    peak_h = torch.full((B,), float("nan"), dtype=torch.float64, device=device)
    clip_len = torch.zeros(B, dtype=torch.long, device=device)
    # every row eligible: the output is written whole below, no zero fill needed
    mask = (torch.empty if 0 < E == B else torch.zeros)(B, L, dtype=torch.bool, device=device)
    any_boundary = False
    if E:
        every = E == B  # every row eligible (e.g. scope=success on an easy batch): no row gathers

        def rows_of(t: torch.Tensor) -> torch.Tensor:
            return t if every else t.index_select(0, idx)

        v_e = rows_of(valid)  # [E, L] bool
        is_b = rows_of(is_boundary_token(responses, boundary_ids_tensor(cfg.boundary_token_ids, device)))
        step_id, n_e, is_b = step_ids(is_b, v_e)  # [E, L] int32, [E], [E, L]
        S = int(n_e.max())  # >= 1: eligible rows are non-empty
        any_boundary = S > 1 or bool(is_b.any())  # several steps need a boundary
        del is_b
        bins = step_bins_(step_id, S, v_e)  # [E, L] int32, step_id consumed
        del v_e
        h, count = aggregate_bins(bins, rows_of(entropy), S, cfg.step_agg)  # [E, S], [E, S]
        if check_in_h and not bool(torch.isfinite(h).all()):  # NaN/inf at a valid position reaches h
            _check_entropy_finite(entropy, response_mask)
        step_ok = count >= cfg.min_step_tokens  # [E, S]; nonexistent steps have count 0
        gen = generator if generator is not None else default_generator(responses, cfg.seed)
        u = torch.rand(B, generator=gen, dtype=torch.float64)[idx.cpu()].to(device)  # [E]
        k = SELECTORS.get(cfg.selector)(h, step_ok, u)  # [E]
        ph = h.masked_fill(~step_ok, float("-inf")).amax(dim=1)  # [E]
        has_clip = k >= 0
        if cfg.per == "group":
            has_clip &= _best_of_group(codes[idx], idx, ph.to(torch.float64), has_clip, G, B)
            k = k.masked_fill(~has_clip, -1)
        # valid positions of steps <= k: bins <= row * (S + 1) + k (see step_bins_)
        row_off = torch.arange(E, device=device, dtype=torch.long) * (S + 1)
        limit = torch.where(has_clip, row_off + k, -1)  # [E]
        if every:
            torch.le(bins, limit.unsqueeze(1).to(torch.int32), out=mask)  # [B, L]
        else:
            mask[idx] = bins <= limit.unsqueeze(1).to(torch.int32)  # [E, L]
        del bins
        clip_len[idx] = torch.where(has_clip, count.cumsum(dim=1).gather(1, k.clamp(min=0).unsqueeze(1)).squeeze(1), 0)
        clip_end_step[idx] = k
        num_steps[idx] = n_e
        peak_h[idx] = torch.where(torch.isfinite(ph), ph.to(torch.float64), float("nan"))

    if not any_boundary and bool(row_ok.any()):
        _warn_if_no_boundary(responses, response_mask, cfg.boundary_token_ids)
    elif E >= SINGLE_STEP_WARN_MIN_ROWS:
        _warn_if_single_step(int((num_steps[idx] == 1).sum()), E, cfg)

    metrics = _selection_metrics(
        clip_len=clip_len, lengths=lengths, row_ok=row_ok, eligible=eligible, codes=codes, clip_end_step=clip_end_step,
        num_steps=num_steps, peak_h=peak_h, g_real=g_real, g_zero_var=g_zero_var, g_all_succ=g_all_succ,
        g_all_fail=g_all_fail, g_deg_succ=g_deg_succ,
    )
    return EchoSelection(mask=mask, metrics=metrics, eligible=eligible, clip_end_step=clip_end_step, num_steps=num_steps,
                         peak_h=peak_h, lengths=lengths, group_index=codes, clip_len=clip_len)


def _best_of_group(code_e, idx, ph, has_clip, G, B) -> torch.Tensor:
    """``per='group'``: among a group's rows with a clip keep the one with the largest peak h; ties
    go to the first row in batch order. All args ``[E]``; returns ``[E] bool``."""
    neg = torch.full_like(ph, float("-inf"))
    cand_h = torch.where(has_clip, ph, neg)
    best = torch.full((G,), float("-inf"), dtype=ph.dtype, device=ph.device).scatter_reduce_(0, code_e, cand_h, "amax")
    cand = has_clip & (cand_h == best[code_e])
    first = torch.full((G,), B, dtype=torch.long, device=ph.device)
    first.scatter_reduce_(0, code_e, torch.where(cand, idx, B), "amin")
    return cand & (idx == first[code_e])


def _warn_if_no_boundary(responses: torch.Tensor, response_mask: torch.Tensor, ids: tuple[int, ...]) -> None:
    """Warn once per id set when a batch of non-empty responses holds no boundary token at all."""
    if ids in _warned_no_boundary:
        return
    if bool((is_boundary_token(responses, boundary_ids_tensor(ids, responses.device)) & (response_mask != 0)).any()):
        return
    _warned_no_boundary.add(ids)
    warnings.warn(
        f"EchoRL: no response in this batch contains a boundary token {list(ids)}: every response is one step. "
        "The ids probably do not fit this tokenizer; set echorl.boundary='auto' or the right boundary_token_ids.",
        EchoBoundaryWarning,
        stacklevel=3,
    )


def _warn_if_single_step(n_single: int, n_eligible: int, cfg: EchoConfig) -> None:
    """Warn once per run and boundary setting when most eligible (successful) responses of a batch
    are a single step: their EchoClip is then the whole response."""
    key = (cfg.boundary, cfg.boundary_token_ids)
    if 2 * n_single <= n_eligible or key in _warned_single_step:
        return
    _warned_single_step.add(key)
    head = (f"EchoRL: {n_single} of {n_eligible} successful responses of this batch are a single step, so their "
            "EchoClip is the whole response (an NLL on whole successes, not EchoRL's prefix).")
    if cfg.boundary == "fixed":
        tail = (f" With echorl.boundary=fixed the steps end only at {list(cfg.boundary_token_ids)[:8]}; tokenizers that "
                "merge punctuation with the newline (Qwen2.5: '.\\n\\n' is 382) rarely produce them. "
                "Fix: echorl.boundary=auto (every token whose text ends with a newline).")
    else:
        tail = (f" echorl.boundary=auto uses this tokenizer's {len(cfg.boundary_token_ids)} newline-ending tokens, so the "
                "responses hold mostly one line: check that the prompt asks for step-by-step lines.")
    warnings.warn(head + tail, EchoSingleStepWarning, stacklevel=3)


def _selection_metrics(*, clip_len, lengths, row_ok, eligible, codes, clip_end_step, num_steps, peak_h, g_real,
                       g_zero_var, g_all_succ, g_all_fail, g_deg_succ) -> dict[str, float]:
    """``echo/*`` metrics of SPEC 2.5 that the selection alone determines; one device sync."""
    f64 = torch.float64
    clipped = clip_end_step >= 0  # [B]
    n_groups = g_real.sum().clamp(min=1).to(f64)
    n_clips = clipped.sum()
    nc = n_clips.clamp(min=1).to(f64)
    resp_len = lengths.clamp(min=1).to(f64)
    g_mixed = g_real & ~g_all_succ & ~g_all_fail
    n_elig = eligible.sum().clamp(min=1).to(f64)
    vals = torch.stack([
        g_all_succ.sum() / n_groups,
        g_all_fail.sum() / n_groups,
        g_mixed.sum() / n_groups,
        g_zero_var.sum() / n_groups,
        g_deg_succ.sum() / n_groups,
        eligible.sum().to(f64),
        n_clips.to(f64),
        clip_len.sum().to(f64),
        torch.where(clipped, clip_len / resp_len, 0).sum() / nc,
        torch.where(clipped, clip_end_step, 0).sum() / nc,
        torch.where(clipped, num_steps, 0).sum() / nc,
        torch.where(clipped, (clip_end_step + 1).to(f64) / num_steps.clamp(min=1), 0).sum() / nc,
        torch.where(clipped, peak_h, 0).nansum() / nc,
        (clipped & g_all_succ[codes]).sum().to(f64) if g_real.numel() else n_clips.to(f64) * 0,
        (clipped & g_mixed[codes]).sum().to(f64) if g_real.numel() else n_clips.to(f64) * 0,
        torch.where(eligible, num_steps, 0).sum() / n_elig,
        (eligible & (num_steps == 1)).sum() / n_elig,
    ]).tolist()
    keys = [
        "groups_all_success_frac", "groups_all_fail_frac", "groups_mixed_frac", "groups_zero_var_frac",
        "groups_degenerate_success_frac", "eligible_rollouts", "clips", "clip_tokens", "clip_len_frac",
        "clip_end_step", "num_steps", "clip_end_step_rel", "peak_h",
        "clips_from_all_success", "clips_from_mixed", "steps_per_response", "single_step_frac",
    ]
    return {f"echo/{k}": float(v) for k, v in zip(keys, vals)}


def grad_token_fractions(advantages: torch.Tensor, response_mask: torch.Tensor, clip_mask: torch.Tensor) -> dict[str, float]:
    """``echo/grad_token_frac_base`` and ``echo/grad_token_frac_echo`` (SPEC 2.5).

    Args:
        advantages: ``[B, L] float`` advantages of the base estimator.
        response_mask: ``[B, L]`` valid response tokens (bool or 0/1).
        clip_mask: ``[B, L] bool`` EchoClip tokens (:attr:`EchoSelection.mask`).

    Returns:
        ``base``: the fraction of valid response tokens with a non-zero advantage (the tokens that
        carry policy gradient); ``echo``: the fraction that carry gradient once the clip tokens are
        added (a clip token counts once even when its advantage is non-zero).
    """
    valid = response_mask != 0  # [B, L]
    n_valid = max(float(count_true(valid).sum()), 1.0)
    with_grad = (advantages != 0) & valid  # [B, L]; count_true avoids .sum()'s int64 copy
    base = float(count_true(with_grad).sum()) / n_valid
    echo = float(count_true(with_grad.logical_or_(clip_mask & valid)).sum()) / n_valid
    return {"echo/grad_token_frac_base": base, "echo/grad_token_frac_echo": echo}
