"""EchoPPOTrainerSync: verl's v1 synchronous trainer with the EchoRL stage (SPEC 2.2-2.5).

The only change to verl's step is in ``_compute_advantage`` (driver side, after rewards, old-policy
log-probs + entropy and the base estimator, before the actor update):

1. the parent computes advantages exactly as verl does;
2. the stage takes ``uid``, ``response_mask``, ``rm_scores`` and ``advantages`` from what the
   parent read and wrote (:mod:`echorl.verl.stage_io`), reads ``responses`` and ``entropy`` from
   TransferQueue (``tq.kv_batch_get``) and the ``is_padding`` tags, and calls
   :func:`echorl.verl.fields.echo_stage_fields` -> :func:`echorl.stage.run_echo_stage`;
3. it writes ``echo_mask`` and ``echo_denom`` (and, in ``mode='advantage'``, ``advantages``) with
   ``tq.kv_batch_put`` and continues with the handle that put returns (an older handle does not
   list the new fields, and the actor workers would not receive them);
4. it logs ``echo/*`` into verl's metrics dict.

With ``echorl.keep_filtered=true`` (DAPO dynamic sampling), :mod:`echorl.verl.keep_filtered` adds
three overrides: ``_build_replay_buffer`` (a buffer that holds the dropped all-success groups),
``_balance_batch`` (DAPO's layout of the RL rows, kept rows dealt over its mini-batches) and
``_update_actor``'s mini-batch size; verl's advantage stage runs on the RL rows alone
(``advantages_without_kept``: every estimator sees DAPO's batch), the stage zeroes the kept rows'
RL masks, and ``_compute_metrics`` leaves them out of verl's metrics.

For LUFFY, ``_compute_old_log_prob`` takes the expert rows out of verl's rollout checks after verl's
old-policy pass (their placeholder ``rollout_log_probs`` become their ``old_log_probs``).

``_update_actor`` moves the loss's ``actor/echo/loss`` (verl prefixes every actor metric) back to
``echo/loss``. Every verl internal these overrides rely on is named, read and checked at start-up in
:mod:`echorl.verl.internals`. The trainer mode stays ``sync``: the class is built by EchoRL's task runner
(:mod:`echorl.main`), not registered under a new mode name, because verl compares
``trainer_mode == "sync"`` literally in several places.
"""

from __future__ import annotations

import logging
import time
import warnings

import transfer_queue as tq
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.config import omega_conf_to_dataclass

from echorl import metric_names as M
from echorl.analysis.dump import DumpConfig
from echorl.core.clips import reset_boundary_warnings
from echorl.core.config import EchoConfig
from echorl.core.steps import EchoBoundaryWarning, check_boundary_ids
from echorl.loss import EchoLoss
from echorl.methods.entropy import method_loss
from echorl.methods.luffy import MethodLoss, off_prob_metrics
from echorl.stage import num_minibatches
from echorl.verl.config_checks import validate_config
from echorl.verl.dump import dump_config_of, write_verl_dump
from echorl.verl.entropy_methods import zvp_sign_of
from echorl.verl.fields import READ_FIELDS, echo_stage_fields
from echorl.verl.internals import actor_dp_size, check_trainer_internals, set_update_mini_batch_size, step_timing
from echorl.verl.keep_filtered import (
    KEPT_TAG,
    KeepFilteredReplayBuffer,
    advantages_without_kept,
    is_kept,
    kept_layout,
    store_kept_tags,
)
from echorl.verl.methods import VerlMethod
from echorl.verl.methods import configure as configure_method
from echorl.verl.stage_io import recording, stage_inputs
from echorl.verl.trace import fields_of as trace_fields_of
from echorl.verl.trace import trace_dir_of, write_trace

logger = logging.getLogger(__name__)
ECHO_TIMING = M.TIMING_ECHO.removeprefix(M.TIMING_PREFIX)  # the timing_raw name verl logs as timing_s/echo


class EchoLossMissingError(RuntimeError):
    """Clips were selected in mode=loss but the actor workers did not report ``echo/loss``."""


def check_echo_loss_reported(metrics: dict, echo_cfg: EchoConfig, step: int) -> None:
    """After an actor update: when the stage selected clips with the EchoRL loss on, the workers'
    loss must have reported ``echo/loss``; otherwise raise :class:`EchoLossMissingError`."""
    if echo_cfg.adds_loss_term and metrics.get(M.CLIPS, 0.0) > 0 and M.LOSS not in metrics:
        raise EchoLossMissingError(
            f"EchoRL: step {step} selected {int(metrics[M.CLIPS])} clips (echorl.mode=loss) but the actor workers "
            f"reported no {M.LOSS}: their loss callable is not EchoRL's (set_loss_fn did not take effect, or the "
            "workers rebuilt verl's ppo_loss), so the EchoRL term was not trained on."
        )


class EchoPPOTrainerSync(PPOTrainerSync):
    """verl's ``PPOTrainerSync`` plus the EchoRL stage. ``config`` is the composed
    ``echorl_trainer`` config (verl's ``ppo_trainer`` + ``echorl:``)."""

    echo_dump: DumpConfig = DumpConfig(freq=0)  # set from `echorl_dump` in __init__

    def __init__(self, config):
        self.echo_cfg: EchoConfig = validate_config(config)  # refuses what EchoRL cannot run with
        check_trainer_internals(keep_filtered=self.echo_cfg.keep_filtered)  # the verl internals overridden below
        self.method = VerlMethod(configure_method(config))  # LUFFY / UFT agent loops (echorl.verl.methods)
        self.echo_dump = dump_config_of(config)  # echorl_dump: periodic echo_clips.json (echorl.verl.dump)
        self._kept_mini_batch_size: int | None = None  # this step's update mini-batch with kept rows
        super().__init__(config)
        self._echo_boundary_resolved = self.echo_cfg.boundary != "auto"

    @property
    def keeps_filtered(self) -> bool:
        """``echorl.keep_filtered`` in effect (EchoRL active; DAPO filtering is checked at start-up)."""
        return self.echo_cfg.keep_filtered and self.echo_cfg.active

    def _build_replay_buffer(self):
        """verl's buffer; with ``keep_filtered`` the same buffer as :class:`KeepFilteredReplayBuffer`."""
        buffer = super()._build_replay_buffer()
        if not self.keeps_filtered:
            return buffer
        if type(buffer) is not ReplayBuffer:
            raise RuntimeError(f"echorl.keep_filtered=true needs verl's sync ReplayBuffer, got {type(buffer).__name__} "
                               "(a custom sampler or another trainer mode): set echorl.keep_filtered=false")
        return KeepFilteredReplayBuffer.from_buffer(buffer, success_threshold=self.echo_cfg.success_threshold,
                                                   max_kept_groups=int(self.config.data.train_batch_size))

    def _balance_batch(self, batch: KVBatchMeta, metrics, logging_prefix="global_seqlen", keep_minibatch=False):
        """verl's balancing; with kept rows, verl's balancing of the RL rows alone (DAPO's layout) and
        the kept rows, padded to fill every (rank, mini-batch) slot, placed by :func:`kept_layout`."""
        self._kept_mini_batch_size = None
        kept = [k for k, tag in zip(batch.keys, batch.tags, strict=True) if is_kept(tag)]
        if not kept:
            return super()._balance_batch(batch, metrics, logging_prefix, keep_minibatch)
        kept_set = set(kept)
        rl = super()._balance_batch(batch.select_keys([k for k in batch.keys if k not in kept_set]), metrics,
                                    logging_prefix, keep_minibatch)
        dp = actor_dp_size(self.actor_rollout_wg)
        mini = int(self.config.actor_rollout_ref.actor.ppo_mini_batch_size) * int(self.config.actor_rollout_ref.rollout.n)
        slots = (len(rl) // mini) * dp
        extra = upsample_batch_to_divisible_size(batch.select_keys(kept), slots, self.tokenizer.eos_token_id)
        extra.tags = [dict(tag, **{KEPT_TAG: True}) for tag in extra.tags]  # its padding rows fill kept slots
        store_kept_tags(extra, range(len(extra)))
        longest_first = sorted(range(len(extra)), key=lambda i: -int(extra.tags[i].get("seq_len", 0)))
        order, self._kept_mini_batch_size = kept_layout(len(rl), [len(rl) + i for i in longest_first], mini, dp)
        merged = KVBatchMeta.concat([rl, extra])
        merged.reorder(order)
        metrics[M.KEPT_PADDING_ROWS] = float(len(extra) - len(kept))
        return merged

    def _setup(self):
        """verl's setup (tokenizer, data, workers, rollout servers), then EchoRL's two installs:
        the boundary ids are checked against the tokenizer, and EchoLoss replaces the actor
        workers' ``partial(ppo_loss, config=actor_config)`` through the public ``set_loss_fn``.
        EchoLoss is installed only when it adds a term (enabled, mode=loss, coef>0) or when
        ``method.name`` is ``rl_zvp`` / ``forking`` (wrapped in their loss, :mod:`echorl.methods.entropy`);
        otherwise the workers keep verl's own loss, so training is verl's, bit for bit."""
        super()._setup()
        reset_boundary_warnings()  # each boundary warning once per run
        if self.echo_cfg.boundary != "auto":  # auto ids come from this tokenizer: nothing to check
            check_boundary_ids(self.echo_cfg.boundary_token_ids, self.tokenizer)
        self._resolve_echo_boundary()
        self.echo_loss = None
        if self.method.active:  # LUFFY / UFT: their loss (+ the EchoRL term), echorl.methods.luffy.MethodLoss
            self.echo_loss = self.install_echo_loss(method=True)
        elif self.echo_cfg.adds_loss_term or self.method.cfg.needs_entropy:  # or RL-ZVP / forking tokens
            self.echo_loss = self.install_echo_loss()

    def install_echo_loss(self, method: bool = False) -> EchoLoss:
        """Build :class:`EchoLoss` (or, for LUFFY / UFT, ``MethodLoss``) from the actor config (as the
        worker builds it) and send it to every actor worker (``set_loss_fn`` is dispatched ONE_TO_ALL)."""
        actor_config = omega_conf_to_dataclass(self.config.actor_rollout_ref.actor)
        loss = MethodLoss(actor_config, self.echo_cfg, self.method.cfg) if method else EchoLoss(actor_config, self.echo_cfg)
        loss = method_loss(loss, actor_config, self.method.cfg, self.echo_cfg)  # RL-ZVP / forking tokens
        self.actor_rollout_wg.set_loss_fn(loss)
        logger.warning("EchoRL: installed %r on the actor workers", loss)
        return loss

    def _resolve_echo_boundary(self) -> None:
        if not self._echo_boundary_resolved:  # boundary='auto': ids from the tokenizer, once
            self.echo_cfg = self.echo_cfg.resolve_boundary(self.tokenizer)
            logger.warning("EchoRL: boundary='auto' resolved %d boundary token ids", len(self.echo_cfg.boundary_token_ids))
            self._echo_boundary_resolved = True

    def _compute_old_log_prob(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        """verl's old-policy pass; then, for LUFFY, the expert rows leave verl's rollout checks
        (:meth:`echorl.verl.methods.VerlMethod.expert_rollout_fields`): their ``rollout_log_probs``
        (a 0.0 placeholder, the trace was not sampled) become their ``old_log_probs``, so rollout
        rejection sampling never drops them and their IS weight is 1, and verl's rollout-vs-actor
        metrics (``training/rollout_*``) are recomputed over the policy's own rows."""
        batch = super()._compute_old_log_prob(batch, metrics)
        if not (self.method.cfg.is_luffy and self.config.actor_rollout_ref.rollout.calculate_log_probs):
            return batch
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=[
            "uid", "responses", "response_mask", "rollout_log_probs", "old_log_probs"])
        is_padding = [bool(tag.get("is_padding", False)) for tag in batch.tags]
        fields, rollout_metrics = self.method.expert_rollout_fields(batch.keys, data, is_padding)
        if fields:
            batch = tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id,
                                    fields=TensorDict(fields, batch_size=[len(batch.keys)]))
            metrics.update(rollout_metrics)
        return batch

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        with recording(PPOTrainerSync._compute_advantage) as verl_io:  # keep what verl's stage reads/writes
            # kept rows (echorl.keep_filtered) stay out of verl's estimator: it sees exactly DAPO's batch
            batch = advantages_without_kept(super()._compute_advantage, batch, metrics)
        echo_t0 = time.perf_counter()  # M.TIMING_ECHO: fetch + select + write-back of the EchoRL stage
        self._resolve_echo_boundary()
        data = stage_inputs(verl_io, tq, batch.keys, batch.partition_id, READ_FIELDS)
        is_padding = [bool(tag.get("is_padding", False)) for tag in batch.tags]
        kept_slots = [is_kept(tag) for tag in batch.tags]  # kept rows and their padding
        echo_only = [k and not p for k, p in zip(kept_slots, is_padding, strict=True)] if any(kept_slots) else None
        actor = self.config.actor_rollout_ref.actor
        n_rl_rows = len(batch) - sum(kept_slots)  # the mini-batch count is the RL rows'
        n_mini = num_minibatches(n_rl_rows, actor.ppo_mini_batch_size, self.config.actor_rollout_ref.rollout.n)
        method_fields, ignored = self.method.stage(batch.keys, data, is_padding, n_mini)  # LUFFY off-policy rows
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EchoBoundaryWarning)
            fields, out = echo_stage_fields(data, ignored, self.echo_cfg, num_minibatches=n_mini, step=self.global_steps,
                                            echo_only=echo_only)
        fields.update(method_fields)
        fields.update(zvp_sign_of(self.method.cfg, data, is_padding))  # RL-ZVP's signs (echorl.verl.entropy_methods)
        for w in caught:  # surface the core's warning in the driver log, not only on stderr (the stage's
            if issubclass(w.category, EchoBoundaryWarning):  # metrics already count it)
                logger.warning("EchoRL: %s (echorl.boundary=%s, %d boundary ids)", w.message, self.echo_cfg.boundary,
                               len(self.echo_cfg.boundary_token_ids))
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        batch = tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=fields)
        timing = step_timing(self)
        if timing is not None:  # verl logs timing_raw[name] as timing_s/<name>
            timing[ECHO_TIMING] = timing.get(ECHO_TIMING, 0.0) + time.perf_counter() - echo_t0
        metrics.update(out.metrics)
        metrics.update(self.method.metrics)
        metrics[M.NUM_MINIBATCHES] = float(n_mini)
        if self.echo_dump.due(self.global_steps):  # EchoClip records for `echorl analyze clips`
            prompts = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["prompts"])["prompts"]
            path = write_verl_dump(data, prompts, is_padding, out.selection, self.tokenizer, self.echo_cfg, self.echo_dump,
                                   self.global_steps)
            logger.warning("EchoRL: step %d EchoClip dump written to %s", self.global_steps, path)
        return batch

    def _submit_batch_to_rollout(self, batch) -> int:
        """verl's dispatch of training prompts, after LUFFY / UFT mark them (train flag, hints)."""
        return super()._submit_batch_to_rollout(self.method.prepare_prompts(batch, self.global_steps - 1))

    def _update_actor(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        if self._kept_mini_batch_size is None:
            batch = super()._update_actor(batch, metrics)
        else:  # kept rows: each mini-batch is DAPO's RL rows plus its share of kept rows (_balance_batch)
            wg, mini = self.actor_rollout_wg, self._kept_mini_batch_size
            update = wg.update_actor

            def update_with_kept_rows(meta):  # global_batch_size (seq-mean denominators) stays the RL rows'
                set_update_mini_batch_size(meta, mini)
                return update(meta)

            wg.update_actor = update_with_kept_rows
            try:
                batch = super()._update_actor(batch, metrics)
            finally:
                wg.update_actor = update
        if M.ACTOR_PREFIX + M.LOSS in metrics:  # verl prefixed the loss's metrics with actor/
            metrics[M.LOSS] = metrics.pop(M.ACTOR_PREFIX + M.LOSS)
        metrics.update(off_prob_metrics(metrics, prefix=M.ACTOR_PREFIX))
        check_echo_loss_reported(metrics, self.echo_cfg, self.global_steps)
        trace_dir = trace_dir_of(self.config)
        if trace_dir is not None:  # echorl_trace.dir: what this update trained on (echorl.verl.trace)
            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=trace_fields_of(self.method.cfg.name))
            write_trace(trace_dir, self.global_steps, data, [bool(t.get("is_padding", False)) for t in batch.tags], metrics,
                        kept=[is_kept(t) for t in batch.tags])
        return batch

    def _compute_metrics(self, batch: KVBatchMeta, metrics, timing_raw, global_steps, epoch):
        """verl's metrics, with kept rows counted as padding (so scores and lengths stay DAPO's)."""
        if any(is_kept(tag) for tag in batch.tags):
            batch = KVBatchMeta(partition_id=batch.partition_id, keys=list(batch.keys), extra_info=batch.extra_info,
                                tags=[dict(t, is_padding=True) if is_kept(t) else t for t in batch.tags])
        return super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
