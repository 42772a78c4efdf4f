"""``echorl.keep_filtered=true`` on verl: DAPO's dropped all-success groups give their clip to the
EchoRL term while the RL term stays DAPO's (SPEC 2.7; host-independent rules in
:mod:`echorl.filtering`).

Three parts, each where verl decides the matter:

1. **Sampling** (:class:`KeepFilteredReplayBuffer`, a subclass of verl's V1 sync ``ReplayBuffer``).
   verl's buffer evicts every finished group whose filter metric has zero variance and refills the
   batch (``refill_credit += 2 * evicted``). This subclass lets the eviction happen as verl counts
   it (metrics, refill credit), but leaves the groups whose rollouts all succeed
   (``sum(rm_scores) >= echorl.success_threshold`` on every row) in TransferQueue, up to
   ``max_kept_groups`` per step (the rest are evicted as usual and counted in
   ``training/filter_groups/kept_surplus_groups``). The buffer re-reads TransferQueue on every
   poll, so a held group reappears as a finished zero-variance group each time: it is taken out
   of the eviction set (not counted twice) and of the sampleable set (never an RL group). When
   the batch is selected, the held groups' rows are appended with the tag ``echo_kept=True``,
   stored in TransferQueue (:func:`store_kept_tags`).

2. **Layout** (:func:`kept_layout`). verl's worker cuts each data-parallel rank's rows into
   mini-batches positionally, after ``_balance_batch`` has reordered and padded the batch. The
   trainer balances the RL rows alone (verl's own ``_balance_batch``: DAPO's layout), pads the
   kept rows to ``M * dp * s`` with verl's padding rows (``M`` RL mini-batches, ``s`` kept rows
   per rank and mini-batch) and places ``s`` of them after the RL rows of every (rank, mini-batch)
   slot. The update's ``mini_batch_size`` becomes ``mini + dp * s``; ``global_batch_size`` (the
   sequence-mean denominators) stays the RL rows'. Each optimizer step sees exactly DAPO's RL rows.

3. **Advantages** (:func:`advantages_without_kept`). verl's advantage stage runs on the RL rows
   alone, in their order: every estimator sees exactly DAPO's batch, so batch-level statistics
   (``reinforce_plus_plus``'s and ``reinforce_plus_plus_baseline``'s whitening over the batch,
   ``gpg``'s count of non-zero scores) are DAPO's. Zeroing the kept rows' masks first would not be
   enough: ``gpg`` counts scores, not masked tokens. The fields that stage wrote for the RL rows
   (``advantages``, ``returns``, ...) are written as zeros for the kept rows, whose RL masks are
   zeroed next, so the update reads the same fields on every row.

4. **Masks** (trainer stage). After selection the kept rows' ``response_mask`` and ``loss_mask``
   are zeroed (:func:`echorl.filtering.rl_response_mask`): they add nothing to the RL sums, to
   ``batch_num_tokens``, or to the entropy / KL terms; the EchoRL term reads ``echo_mask``.

Cost: the kept rows' old-policy (and reference) log-prob pass, and their forward/backward in the
update (for the clip tokens), logged as ``echo/kept_rows``, ``echo/kept_clip_tokens`` and
``echo/clips_from_kept``. verl's own metrics (``critic/score``, response lengths) are computed
with the kept rows excluded, so they stay DAPO's.

The private ``ReplayBuffer`` methods this overrides are listed and checked at start-up in
:mod:`echorl.verl.internals`.
"""

from __future__ import annotations

import inspect
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

import torch
import transfer_queue as tq
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

from echorl.verl.internals import dapo_drop_reasons, metrics_prefix

KEPT_TAG = "echo_kept"


def is_kept(tag: dict) -> bool:
    """True for a row kept for the EchoRL term only (set by :class:`KeepFilteredReplayBuffer`)."""
    return bool(tag.get(KEPT_TAG, False))


def _uid(key: str) -> str:
    return key.split("_")[0]  # verl's trajectory keys are f"{uid}_{session_id}_{i}"


class KeepFilteredReplayBuffer(ReplayBuffer):
    """verl's V1 sync ``ReplayBuffer`` that holds DAPO-dropped all-success groups for the EchoRL
    term (module docstring, part 1).

    Args:
        *args, **kwargs: verl's ``ReplayBuffer`` arguments (``filter_groups_metric`` must be set).
        success_threshold: a rollout succeeds when its outcome score (``rm_scores`` summed over
            its tokens) is at least this (``echorl.success_threshold``).
        max_kept_groups: at most this many held groups per step (``data.train_batch_size``).
    """

    def __init__(self, *args, success_threshold: float, max_kept_groups: int, **kwargs):
        super().__init__(*args, **kwargs)
        if self.filter_groups_metric is None:
            raise ValueError("KeepFilteredReplayBuffer needs DAPO filtering (algorithm.filter_groups.enable=true)")
        if max_kept_groups < 0:
            raise ValueError(f"max_kept_groups must be >= 0, got {max_kept_groups}")
        self.success_threshold = float(success_threshold)
        self.max_kept_groups = int(max_kept_groups)
        self._kept: dict[str, set[str]] = defaultdict(set)  # partition -> uids held for this step
        self._hold: set[str] = set()  # uids _clear_groups must leave in TransferQueue (this poll)

    @classmethod
    def from_buffer(cls, buffer: ReplayBuffer, *, success_threshold: float, max_kept_groups: int):
        """The same buffer as verl built it (every constructor argument is an attribute of the same
        name), as this class."""
        names = [p for p in inspect.signature(ReplayBuffer.__init__).parameters if p != "self"]
        missing = [p for p in names if not hasattr(buffer, p)]
        if missing:
            raise RuntimeError(f"verl's ReplayBuffer no longer keeps its arguments {missing} as attributes: "
                               "echorl.keep_filtered cannot rebuild it; set echorl.keep_filtered=false")
        return cls(**{p: getattr(buffer, p) for p in names}, success_threshold=success_threshold,
                   max_kept_groups=max_kept_groups)

    def _all_success(self, partition_id: str, uids: set[str]) -> set[str]:
        """Of ``uids`` (finished zero-variance groups), those whose every rollout succeeds."""
        if not uids:
            return set()
        keys = sorted(k for k in self.partitions[partition_id] if _uid(k) in uids)
        if not keys:
            return set()
        scores = tq.kv_batch_get(keys=keys, partition_id=partition_id, select_fields=["rm_scores"])["rm_scores"]
        ok: dict[str, bool] = {}
        for key, row in zip(keys, scores.unbind() if hasattr(scores, "unbind") else scores, strict=True):
            u = _uid(key)
            ok[u] = ok.get(u, True) and float(row.sum()) >= self.success_threshold
        return {u for u, good in ok.items() if good}

    def _terminal_eviction_reasons(self, global_steps: int, partition_id: str):
        stale, dapo, failed, counts = super()._terminal_eviction_reasons(global_steps, partition_id)
        held = self._kept[partition_id] & dapo
        if held:  # re-read from TransferQueue on this poll: already counted when first dropped
            dapo = dapo - held
            cache = dapo_drop_reasons(self, partition_id)
            counts = Counter(cache[u] for u in dapo)
        return stale, dapo, failed, counts

    def _sampleable_terminal_keys(self, partition_id: str, eviction_reasons) -> set[str]:
        return super()._sampleable_terminal_keys(partition_id, eviction_reasons) - self._kept[partition_id]

    def _evict_terminal_groups(self, global_steps: int, partition_id: str, eviction_reasons):
        stale, dapo, failed, _counts = eviction_reasons
        candidates = sorted(self._all_success(partition_id, dapo - stale - failed))
        room = max(0, self.max_kept_groups - len(self._kept[partition_id]))
        hold, surplus = set(candidates[:room]), len(candidates) - min(room, len(candidates))
        self._kept[partition_id] |= hold
        self._hold = hold
        try:
            evicted, n_stale, n_dapo, metrics = super()._evict_terminal_groups(global_steps, partition_id,
                                                                               eviction_reasons)
        finally:
            self._hold = set()
        prefix = metrics_prefix(self, partition_id)
        if hold:
            metrics[f"{prefix}/filter_groups/kept_groups"] = len(hold)
        if surplus:
            metrics[f"{prefix}/filter_groups/kept_surplus_groups"] = surplus
        return evicted, n_stale, n_dapo, metrics

    def _clear_groups(self, partition_id: str, uids: set[str]) -> None:
        super()._clear_groups(partition_id, set(uids) - self._hold)

    def _materialize_batch(self, partition_id: str, selected_prompt_uids: list[str], partition_snapshot: dict):
        kept = sorted(self._kept.pop(partition_id, set()))
        if not kept:
            return super()._materialize_batch(partition_id, selected_prompt_uids, partition_snapshot)
        batch = super()._materialize_batch(partition_id, [*selected_prompt_uids, *kept], partition_snapshot)
        kept_set = set(kept)
        batch.tags = [dict(tag, **{KEPT_TAG: True}) if _uid(key) in kept_set else tag
                      for key, tag in zip(batch.keys, batch.tags, strict=True)]
        store_kept_tags(batch, [i for i, key in enumerate(batch.keys) if _uid(key) in kept_set])
        return batch


def store_kept_tags(batch, rows: Sequence[int]) -> None:
    """Write ``echo_kept=True`` into the TransferQueue tags of these rows of ``batch`` (their whole tag,
    as held in ``batch.tags``): verl's stages continue with the handle ``kv_batch_put`` returns,
    whose tags are the stored ones, so a tag set only on the local handle would be lost."""
    if rows:
        tq.kv_batch_put(keys=[batch.keys[i] for i in rows], partition_id=batch.partition_id,
                        tags=[dict(batch.tags[i], **{KEPT_TAG: True}) for i in rows])


def kept_layout(num_rl: int, kept: Sequence[int], mini: int, dp: int) -> tuple[list[int], int]:
    """Row order of the actor update and its ``mini_batch_size`` with kept rows (module docstring, part 2).

    Args:
        num_rl: RL rows, already in verl's balanced order at positions ``0..num_rl-1``; a multiple
            of ``mini`` (verl pads it so).
        kept: positions of the kept rows (padding included), ``len(kept) = M * dp * s`` with
            ``M = num_rl / mini``; dealt round-robin over the ``M * dp`` (rank, mini-batch) slots
            in the given order (pass them longest first to spread the work).
        mini: RL rows per mini-batch (``ppo_mini_batch_size * rollout.n``), a multiple of ``dp``.
        dp: data-parallel ranks of the actor.

    Returns:
        ``(order, mini_batch_size)``: rank ``r`` receives ``order[r * P:(r + 1) * P]``
        (``P = len(order) / dp``, verl's dispatch) and cuts it into chunks of
        ``mini_batch_size / dp`` rows; chunk ``j`` of rank ``r`` holds the RL rows that chunk holds
        without kept rows, then ``s`` kept rows.
    """
    if mini <= 0 or dp <= 0 or mini % dp:
        raise ValueError(f"mini={mini} must be a positive multiple of dp={dp}")
    if num_rl <= 0 or num_rl % mini:
        raise ValueError(f"num_rl={num_rl} must be a positive multiple of mini={mini}")
    M = num_rl // mini
    slots = M * dp
    if len(kept) % slots:
        raise ValueError(f"{len(kept)} kept rows do not fill {M} mini-batches x {dp} ranks evenly; pad them first")
    s = len(kept) // slots
    per_rank_rl, per_chunk_rl = num_rl // dp, mini // dp
    order: list[int] = []
    for r in range(dp):
        for j in range(M):
            start = r * per_rank_rl + j * per_chunk_rl
            order.extend(range(start, start + per_chunk_rl))
            order.extend(kept[r * M + j::slots])
    return order, mini + dp * s


def advantages_without_kept(compute: Callable[[KVBatchMeta, dict], KVBatchMeta], batch: KVBatchMeta,
                            metrics: dict) -> KVBatchMeta:
    """verl's advantage stage ``compute(batch, metrics)`` (``PPOTrainerSync._compute_advantage``) on
    the RL rows of ``batch`` alone (module docstring, part 3).

    Rows tagged :data:`KEPT_TAG` (kept rows and their padding) are left out of ``compute``; every
    field ``compute`` stored for the RL rows that the kept rows lack is written for them as zeros,
    response-aligned (``[len_i]`` per row, like verl's nested fields). Returns the handle of the
    whole batch, in ``batch``'s order, listing the fields every row now holds.
    """
    kept_idx = [i for i, tag in enumerate(batch.tags) if is_kept(tag)]
    if not kept_idx:
        return compute(batch, metrics)
    kept_set = set(kept_idx)
    rl = compute(batch.select_keys([k for i, k in enumerate(batch.keys) if i not in kept_set]), metrics)
    kept_keys = [batch.keys[i] for i in kept_idx]
    kept = tq.kv_batch_put(keys=kept_keys, partition_id=batch.partition_id, tags=[batch.tags[i] for i in kept_idx])
    missing = [f for f in (rl.fields or []) if f not in set(kept.fields or [])]
    if missing:
        mask = tq.kv_batch_get(keys=kept_keys, partition_id=batch.partition_id,
                               select_fields=["response_mask"])["response_mask"]  # [K, j] nested
        zeros = torch.nested.nested_tensor_from_jagged(torch.zeros(mask.values().shape, dtype=torch.float32),
                                                       offsets=mask.offsets())
        kept = tq.kv_batch_put(keys=kept_keys, partition_id=batch.partition_id,
                               fields=TensorDict({f: zeros for f in missing}, batch_size=[len(kept_keys)]))
    if set(kept.fields or []) != set(rl.fields or []):
        raise RuntimeError(f"echorl.keep_filtered: the kept rows hold fields {sorted(kept.fields or [])}, the RL rows "
                           f"{sorted(rl.fields or [])} after verl's advantage stage; set echorl.keep_filtered=false")
    tags = dict(zip(rl.keys, rl.tags, strict=True)) | dict(zip(kept.keys, kept.tags, strict=True))
    return KVBatchMeta(keys=list(batch.keys), tags=[tags[k] for k in batch.keys], partition_id=batch.partition_id,
                       fields=list(rl.fields or []), extra_info=rl.extra_info)
