"""The pure part of the verl stage: stored batch fields -> :func:`echorl.stage.run_echo_stage` ->
fields to write back (SPEC 2.2-2.5).

No TransferQueue, no Ray: :class:`echorl.verl.trainer.EchoPPOTrainerSync` reads the fields with
``tq.kv_batch_get`` and writes the result with ``tq.kv_batch_put``; tests call
:func:`echo_stage_fields` directly on a batch laid out as verl stores it.

verl v1 layout (after ``_compute_old_log_prob`` and the parent ``_compute_advantage``), one row
per rollout, response-aligned fields as jagged nested tensors ``[B, j]`` (row ``i`` holds its
``response_len_i`` positions):

* ``responses``      ``[B, j] long``
* ``response_mask``  ``[B, j] int``   (holes for multi-turn tool output; padding rows: all 0)
* ``entropy``        ``[B, j] float`` old-policy token entropy at the rollout temperature
* ``rm_scores``      ``[B, j] float`` token-level scores (the outcome score on the last token)
* ``advantages``     ``[B, j] float`` from verl's estimator
* ``uid``            ``[B]`` non-tensor strings (one per prompt; the group id)

plus the per-row ``is_padding`` tag that ``_balance_batch`` puts on rows it appends.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict

from echorl.core.config import EchoConfig
from echorl.filtering import rl_response_mask
from echorl.stage import EchoStageOutput, run_echo_stage

READ_FIELDS = ("uid", "responses", "response_mask", "entropy", "rm_scores", "advantages")
ECHO_MASK = "echo_mask"
ECHO_DENOM = "echo_denom"


def _padded(data: TensorDict, key: str) -> torch.Tensor:
    """A response-aligned field as a right-padded ``[B, L]`` tensor (verl's own unpadding)."""
    value = data[key]
    if isinstance(value, torch.Tensor) and value.is_nested:
        return data.select(key).to_padded_tensor()[key]
    return value


def _to_nested(padded: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` -> jagged ``[B, j]`` with the row lengths of ``like`` (verl's response_to_nested)."""
    if not like.is_nested:
        return padded
    offsets = like.offsets()  # [B + 1]
    lens = offsets.diff()  # [B]
    keep = torch.arange(padded.shape[1], device=padded.device) < lens.unsqueeze(1)  # [B, L]
    # row-major boolean indexing yields the jagged values in order; the seqlen bounds make
    # to_padded_tensor pad to the longest row (without them it pads to the total length)
    return torch.nested.nested_tensor_from_jagged(
        padded[keep], offsets=offsets, max_seqlen=int(lens.max()) if lens.numel() else 0,
        min_seqlen=int(lens.min()) if lens.numel() else 0,
    )


def group_ids(value) -> list[str]:
    """The ``uid`` field as a list of strings, whichever container TransferQueue returns (a
    tensordict ``LinkedList``, a ``NonTensorStack`` or a numpy object array)."""
    items = value.tolist() if hasattr(value, "tolist") else list(value)
    return [str(u if isinstance(u, (str, bytes)) else getattr(u, "data", u)) for u in items]


def echo_stage_fields(
    data: TensorDict,
    is_padding: Sequence[bool] | None,
    cfg: EchoConfig,
    *,
    num_minibatches: int = 1,
    step: int = 0,
    echo_only: Sequence[bool] | None = None,
) -> tuple[TensorDict, EchoStageOutput]:
    """Run the EchoRL stage on a batch in verl's layout.

    Args:
        data: ``TensorDict`` of batch size ``B`` with :data:`READ_FIELDS` as listed in the module
            docstring (nested or already padded ``[B, L]``; ``advantages`` may be absent).
        is_padding: ``[B]`` bool, rows appended by verl only to balance the batch (their mask is
            cleared before selection, so they are never eligible and never group members).
        cfg: the EchoRL options (``boundary`` already resolved).
        num_minibatches: for the fixed normaliser (:func:`num_minibatches`).
        step: training step (seeds ``selector='random_prefix'``).
        echo_only: ``[B] bool`` rows kept for the EchoRL term only (``echorl.keep_filtered``,
            :mod:`echorl.verl.keep_filtered`), or None.

    Returns:
        ``(fields, out)``: ``fields`` is a ``TensorDict`` of batch size ``B`` to write back:
        ``echo_mask`` (nested ``[B, j]`` bool, like ``response_mask``; all False unless
        ``cfg.adds_loss_term``), ``echo_denom`` (``[B]`` float32, the per-row
        denominators ``D_b`` of :func:`echorl.core.loss.echo_row_denominators`) and, when
        ``cfg.adds_advantage_bonus``, ``advantages`` (nested, with
        ``adv_coef`` added on clip tokens); with ``echo_only`` rows, ``response_mask`` and
        ``loss_mask`` (nested, zero on those rows: no RL gradient, not in ``batch_num_tokens``).
        ``out`` is the stage output (selection, ``echo/*`` metrics).
    """
    missing = [k for k in READ_FIELDS if k != "advantages" and k not in data.keys()]
    if missing:
        raise KeyError(f"EchoRL stage: batch lacks {missing}; it needs {list(READ_FIELDS)} as verl's v1 trainer stores them")
    resp_mask_nested = data["response_mask"]
    responses = _padded(data, "responses").long()  # [B, L]
    response_mask = _padded(data, "response_mask") != 0  # [B, L] bool
    entropy = _padded(data, "entropy").float()  # [B, L]
    scores = _padded(data, "rm_scores").float().sum(dim=-1)  # [B] outcome reward
    uids = group_ids(data["uid"])  # [B] group ids
    B = response_mask.shape[0]
    if not (responses.shape == response_mask.shape == entropy.shape):
        raise ValueError(
            f"EchoRL stage: responses {list(responses.shape)}, response_mask {list(response_mask.shape)} and "
            f"entropy {list(entropy.shape)} must be response-aligned"
        )
    if is_padding is not None:
        pad = torch.as_tensor(list(is_padding), dtype=torch.bool)
        if pad.shape != (B,):
            raise ValueError(f"is_padding must have {B} entries, got {pad.shape[0]}")
        response_mask = response_mask & ~pad[:, None]  # padding rows: empty mask
    advantages = _padded(data, "advantages").float() if "advantages" in data.keys() else None
    kept = None
    if echo_only is not None:
        kept = torch.as_tensor(list(echo_only), dtype=torch.bool)
        if kept.shape != (B,):
            raise ValueError(f"echo_only must have {B} entries, got {kept.shape[0]}")
    out = run_echo_stage(
        responses, response_mask, entropy, scores, uids, cfg,
        advantages=advantages, num_minibatches=num_minibatches, step=step, echo_only=kept,
    )
    fields = {
        ECHO_MASK: _to_nested(out.echo_mask, resp_mask_nested),
        ECHO_DENOM: out.echo_denom_rows.to(torch.float32),
    }
    if cfg.adds_advantage_bonus:
        adv_dtype = data["advantages"].dtype
        fields["advantages"] = _to_nested(out.advantages.to(adv_dtype), resp_mask_nested)
    if kept is not None and bool(kept.any()):
        stored = _padded(data, "response_mask")  # [B, L] in the stored dtype
        rl_mask = _to_nested(rl_response_mask(stored, kept), resp_mask_nested)
        fields["response_mask"] = rl_mask
        fields["loss_mask"] = rl_mask
    return TensorDict(fields, batch_size=[B]), out
