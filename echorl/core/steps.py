"""Reasoning steps: boundary tokens, step segmentation and step entropy (SPEC 2.1-2.2).

A response is cut into steps at boundary tokens (newlines). On the sequence of *valid* positions
(``response_mask == 1``; masked positions neither belong to a step nor break one), position ``t``
ends a step when

* its token is a boundary, the next valid token is not, and the step so far holds a non-boundary
  token; or
* ``t`` is the last valid position.

So a run of boundary tokens is one delimiter and belongs to the step it closes, and a leading run
belongs to the first step. Everything here is vectorised over rows and tokens.

Derivation used by :func:`segment_steps`. Call a valid non-boundary token a *step start* when its
previous *valid* token is a boundary and it is not the row's first non-boundary token. Such a
boundary closes a step that holds a non-boundary token (the earlier one), and its next valid
token is not a boundary: it ends a step, and every step end but the last is followed by a step
start. So the step index of every valid token is the number of step starts at positions
``<= t`` (one cumulative sum): a boundary run belongs to the step it closes, and a leading run,
with no step start before it, to step 0. A masked position carries the count of its previous
valid token, so a row's last count is its last step's index. Step starts are found from the
boundary side: a boundary whose neighbour ``t + 1`` is valid marks ``t + 1`` when that is a
non-boundary (one shifted test); the rare boundary followed by a masked position looks up its
next valid token (:func:`next_valid`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from echorl.core.registry import STEP_AGGS


class EchoBoundaryWarning(UserWarning):
    """Boundary ids that likely do not fit the tokenizer: steps would never end."""


class EchoSingleStepWarning(EchoBoundaryWarning):
    """Most successful responses of a batch are a single step: their EchoClip is the whole response."""


def boundary_ids_tensor(ids: Sequence[int] | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Boundary ids as a ``[K] long`` tensor on ``device``."""
    return torch.as_tensor(list(ids) if not torch.is_tensor(ids) else ids, dtype=torch.long, device=device)


def is_boundary_token(tokens: torch.Tensor, boundary_ids: torch.Tensor) -> torch.Tensor:
    """``[E, L] bool``: which tokens are boundaries. For a few ids (the usual 1-4 newline ids) an
    OR of equality tests, ~7x faster than ``torch.isin`` on CPU; ``isin`` beyond that."""
    ids = boundary_ids.tolist()
    if len(ids) > 8 or not ids:
        return torch.isin(tokens, boundary_ids)
    out = tokens == ids[0]
    for i in ids[1:]:  # loop over the few ids, not over tokens
        out.logical_or_(tokens == i)
    return out


def segment_steps(
    responses: torch.Tensor, valid: torch.Tensor, boundary_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Assign every valid response token to its step.

    Args:
        responses: ``[E, L] long`` token ids.
        valid: ``[E, L] bool`` valid positions (the response mask).
        boundary_ids: ``[K] long`` boundary token ids.

    Returns:
        step_id: ``[E, L] long``, the 0-based step of each valid token, ``-1`` at masked positions.
        num_steps: ``[E] long``, steps per row (0 for a row without valid tokens).
        has_boundary: ``[E] bool``, whether the row holds a valid boundary token.
    """
    step_id, num_steps, has_boundary = segment_boundaries(is_boundary_token(responses, boundary_ids), valid)
    return step_id.long(), num_steps, has_boundary


def segment_boundaries(is_boundary: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`segment_steps` from a boundary flag instead of token ids.

    Args:
        is_boundary: ``[E, L] bool``, True where the token is a boundary (masked positions ignored).
        valid: ``[E, L] bool``.

    Returns:
        step_id ``[E, L] int32`` (``-1`` masked), num_steps ``[E] long``, has_boundary ``[E] bool``.
    """
    step_id, num_steps, is_b = step_ids(is_boundary, valid)
    step_id.masked_fill_(~valid, -1)
    return step_id, num_steps, is_b.any(dim=1)


def step_ids(is_boundary: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step index of every position (the module docstring's derivation).

    Args:
        is_boundary: ``[E, L] bool``; valid: ``[E, L] bool``.

    Returns:
        step_id ``[E, L] int32``: the step of each valid token; a masked position holds the step of
        the previous valid token (0 before the first). num_steps ``[E] long`` (0 for a row without
        valid tokens). is_b ``[E, L] bool``: valid boundary tokens.
    """
    E, L = valid.shape
    is_b = is_boundary & valid  # [E, L]
    nonb = valid ^ is_b  # [E, L] valid non-boundary tokens
    start = torch.empty(E, L, dtype=torch.int32, device=valid.device)
    if L:
        start[:, 0] = 0
    if L > 1:
        # A boundary at t - 1 followed by a non-boundary at t: one shifted test, written as int32.
        torch.logical_and(nonb[:, 1:], is_b[:, :-1], out=start[:, 1:])
        # A boundary followed by a masked position marks its next valid token, if a non-boundary;
        # the row's trailing padding (after its last valid token) has none.
        rows, cols = (is_b[:, :-1] > valid[:, 1:]).nonzero(as_tuple=True)  # [F] each, usually few
        if rows.numel():
            last = L - 1 - valid.flip(1).view(torch.uint8).argmax(dim=1)  # [E] last valid position
            inner = cols < last[rows]
            rows, cols = rows[inner], cols[inner]
            nxt = next_valid(valid, rows, cols + 1)  # [F], -1: none
            hit = nxt >= 0
            rows, nxt = rows[hit], nxt[hit]
            start[rows, nxt] = nonb[rows, nxt].to(torch.int32)
        # The row's first non-boundary token never starts a step (a leading run is in step 0).
        first = nonb.view(torch.uint8).argmax(dim=1)  # [E]; 0 when the row has none (start is 0 there)
        start[torch.arange(E, device=valid.device), first] = 0
    del nonb
    step_id = start.cumsum_(dim=1)  # [E, L] int32, in place
    if L == 0:
        return step_id, torch.zeros(E, dtype=torch.long, device=valid.device), is_b
    num_steps = torch.where(valid.any(dim=1), step_id[:, -1].long() + 1, 0)  # the count at the row's end
    return step_id, num_steps, is_b


def next_valid(valid: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, windows: Sequence[int] = (8, 64, 512)
               ) -> torch.Tensor:
    """``[F] long``: the first valid position ``>= cols`` in row ``rows`` (``[F]`` each), -1 when
    there is none.

    Windows of growing width are read on the ``F`` queries alone (one ``[F, w]`` gather each), which
    resolves gaps up to ``sum(windows)`` positions; longer gaps (long multi-turn tool output) use
    the valid-token count ``cv[r, p]`` (valid positions ``<= p``): offset by ``r * (L + 1)`` it is
    sorted over the flattened ``[E * L]``, so one ``searchsorted`` finds the first ``p`` with
    ``cv[r, p] > cv[r, cols - 1]``.
    """
    E, L = valid.shape
    pos = torch.full_like(cols, -1)
    cand = cols.clone()
    todo = torch.arange(cols.numel(), device=cols.device)
    for w in windows:
        if todo.numel() == 0:
            return pos
        c = cand[todo]  # [T]
        offs = c.unsqueeze(1) + torch.arange(w, device=cols.device)  # [T, w]
        v = valid[rows[todo].unsqueeze(1), offs.clamp(max=L - 1)] & (offs < L)  # [T, w]
        found = v.any(dim=1)
        pos[todo[found]] = (c + v.view(torch.uint8).argmax(dim=1))[found]
        cand[todo] = c + w
        todo = todo[~found & (c + w < L)]
    if todo.numel():
        if E * (L + 1) >= 2**31:
            raise ValueError(f"{E} rows x {L + 1} positions overflow int32 offsets; select on fewer rows at a time")
        r, c = rows[todo], cand[todo]  # c in [0, L)
        cv = valid.cumsum(dim=1, dtype=torch.int32)  # [E, L]
        k = torch.where(c > 0, cv[r, (c - 1).clamp(min=0)], 0) + 1  # the rank of the wanted token
        exists = k <= cv[r, L - 1]
        off = torch.arange(E, device=valid.device, dtype=torch.int32).unsqueeze(1) * (L + 1)
        cv += off
        p = torch.searchsorted(cv.view(-1), k + off.squeeze(1)[r]) - r * L
        pos[todo] = torch.where(exists, p, -1)
    return pos


def step_aggregates(
    step_id: torch.Tensor, entropy: torch.Tensor, num_steps_max: int, step_agg: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Aggregate token entropy per step.

    Args:
        step_id: ``[E, L]`` integer step ids from :func:`segment_steps` (``-1`` = masked).
        entropy: ``[E, L] float`` token entropy (any float dtype; values at masked positions unused).
        num_steps_max: ``S``, at least the largest step count of the rows.
        step_agg: a name in ``STEP_AGGS`` (``mean``, ``sum``, ``max``).

    Returns:
        h: ``[E, S]`` step aggregates, float64 for float64 input else float32; 0 where a step does
        not exist.
        count: ``[E, S] long`` valid tokens per step (0 where a step does not exist).
    """
    flat = step_bins_(step_id.to(torch.int32, copy=True), num_steps_max)
    return aggregate_bins(flat, entropy, num_steps_max, step_agg)


def step_bins_(step_id: torch.Tensor, num_steps_max: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Turn ``step_id`` ``[E, L] int32`` IN PLACE into flat bin ids ``row * (S + 1) + step``; masked
    positions (``step_id < 0``, or ``~valid`` when ``valid`` ``[E, L] bool`` is given) go to each
    row's dump bin ``row * (S + 1) + S``. Returns the same tensor.

    A valid position of row ``r`` lies in step ``<= k`` iff its bin is ``<= r * (S + 1) + k``, and a
    masked one never does (``S > k``): the clip mask is one comparison on the bins.
    """
    E = step_id.shape[0]
    S = int(num_steps_max)
    if E * (S + 1) >= 2**31:
        raise ValueError(f"{E} rows x {S + 1} step bins overflow int32 bin ids; select on fewer rows at a time")
    step_id.masked_fill_(step_id < 0 if valid is None else ~valid, S)
    step_id += torch.arange(E, device=step_id.device, dtype=torch.int32).unsqueeze(1) * (S + 1)
    return step_id


def aggregate_bins(
    flat: torch.Tensor, entropy: torch.Tensor, num_steps_max: int, step_agg: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step aggregates from flat bins of :func:`step_bins_` (``[E, L] int32``); see
    :func:`step_aggregates` for the returns ``h [E, S]`` and ``count [E, S]``."""
    fn = STEP_AGGS.get(step_agg)
    E = flat.shape[0]
    S = int(num_steps_max)
    values = entropy.reshape(-1)
    if values.dtype not in (torch.float32, torch.float64):
        values = values.float()
    flat = flat.reshape(-1)  # [E * L]
    count = torch.bincount(flat, minlength=E * (S + 1))  # [E * (S + 1)]
    h = fn(flat, values, count)  # [E * (S + 1)]
    return h.view(E, S + 1)[:, :S], count.view(E, S + 1)[:, :S]


@STEP_AGGS.register("sum")
def _agg_sum(flat: torch.Tensor, values: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Sum per bin. ``bincount`` accumulates in the dtype of ``values``: float32 (bf16/fp16/fp32
    entropy is cast to float32 first) or float64; SPEC 2.2 asks for float32 or wider."""
    return torch.bincount(flat, weights=values, minlength=count.numel())


@STEP_AGGS.register("mean")
def _agg_mean(flat: torch.Tensor, values: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Mean per bin (0 for an empty bin)."""
    return _agg_sum(flat, values, count) / count.clamp(min=1)


@STEP_AGGS.register("max")
def _agg_max(flat: torch.Tensor, values: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Max per bin (0 for an empty bin)."""
    out = torch.full((count.numel(),), float("-inf"), dtype=values.dtype, device=values.device)
    out.scatter_reduce_(0, flat.long(), values, reduce="amax", include_self=True)
    return out.masked_fill_(count == 0, 0.0)


def auto_boundary_token_ids(tokenizer: Any) -> tuple[int, ...]:
    """Every vocabulary token whose decoded text ends with a newline (SPEC 2.1, ``boundary='auto'``).

    Catches merged tokens such as Qwen's ``".\\n\\n"`` that fixed ids miss. Special tokens are
    skipped. Raises ``ValueError`` when the tokenizer has no such token.
    """
    vocab = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = sorted(i for i in set(vocab.values()) if i not in special)
    texts = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    found = tuple(i for i, t in zip(ids, texts) if t.endswith("\n"))
    if not found:
        raise ValueError(
            f"boundary='auto': no token of {type(tokenizer).__name__} decodes to text ending in a newline; "
            "set echorl.boundary='fixed' and echorl.boundary_token_ids explicitly"
        )
    return found


def check_boundary_ids(ids: Sequence[int], tokenizer: Any, solutions: Sequence[str] = ()) -> None:
    """Check step boundary ids against the tokenizer a run uses; both hosts call it at start-up.

    Args:
        ids: ``echorl.boundary_token_ids`` (after ``cfg.resolve_boundary(tokenizer)``).
        tokenizer: needs ``len()`` and ``decode([id])``; with ``solutions`` also
            ``tokenizer(texts, add_special_tokens=False)["input_ids"]``.
        solutions: reference solutions of the dataset (the first 64 are tokenized), or none.

    Raises:
        ValueError: an id is outside the vocabulary (``>= len(tokenizer)``), e.g. Qwen's 198/271
            with another tokenizer.

    Warns :class:`EchoBoundaryWarning` when an id's text holds no newline, or when no id occurs in
    the tokenized ``solutions`` (no response would be split into steps).
    """
    ids = [int(i) for i in ids]
    vocab = len(tokenizer)
    bad = [i for i in ids if i >= vocab]
    if bad:
        raise ValueError(
            f"echorl.boundary_token_ids {ids}: {bad} are outside the vocabulary of {type(tokenizer).__name__} "
            f"(size {vocab}). Fix: set echorl.boundary=auto to derive the newline ids from the tokenizer, or "
            "give this tokenizer's ids."
        )
    texts = {i: tokenizer.decode([i]) for i in ids}
    no_newline = [i for i, t in texts.items() if "\n" not in t]
    if no_newline:
        warnings.warn(EchoBoundaryWarning(
            f"echorl.boundary_token_ids {no_newline} decode to {[texts[i] for i in no_newline]!r}, not newlines: "
            "steps may never end. Set this tokenizer's newline ids or echorl.boundary=auto."), stacklevel=2)
    sols = [str(s) for s in list(solutions)[:64] if s]
    if sols:
        toks = tokenizer(sols, add_special_tokens=False)["input_ids"]
        wanted = set(ids)
        if not any(t in wanted for seq in toks for t in seq):
            warnings.warn(EchoBoundaryWarning(
                f"echorl.boundary_token_ids {ids} (text {list(texts.values())!r}) never occur in {len(sols)} tokenized "
                "reference solutions of this dataset, so no response would be split into steps and every EchoClip "
                "would be the whole response; set echorl.boundary=auto or this tokenizer's newline ids"), stacklevel=2)
