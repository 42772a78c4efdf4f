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

``_update_actor`` moves the loss's ``actor/echo/loss`` (verl prefixes every actor metric) back to
``echo/loss``. The trainer mode stays ``sync``: the class is built by EchoRL's task runner
(:mod:`echorl.main`), not registered under a new mode name, because verl compares
``trainer_mode == "sync"`` literally in several places.
"""

from __future__ import annotations

import logging
import time
import warnings

import transfer_queue as tq
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from echorl.analysis.dump import DumpConfig
from echorl.core.config import EchoConfig
from echorl.core.steps import EchoBoundaryWarning, check_boundary_ids
from echorl.stage import num_minibatches
from echorl.verl.dump import dump_config_of, write_verl_dump
from echorl.verl.fields import READ_FIELDS, echo_stage_fields
from echorl.verl.loss import EchoLoss
from echorl.verl.methods import VerlMethod
from echorl.verl.methods import configure as configure_method
from echorl.verl.stage_io import recording, stage_inputs
from echorl.verl.trace import FIELDS as TRACE_FIELDS
from echorl.verl.trace import trace_dir_of, write_trace
from echorl.verl.validate import validate_config

logger = logging.getLogger(__name__)


class EchoLossMissingError(RuntimeError):
    """Clips were selected in mode=loss but the actor workers did not report ``echo/loss``."""


def check_echo_loss_reported(metrics: dict, echo_cfg: EchoConfig, step: int) -> None:
    """After an actor update: when the stage selected clips with the EchoRL loss on, the workers'
    loss must have reported ``echo/loss``; otherwise raise :class:`EchoLossMissingError`."""
    if echo_cfg.adds_loss_term and metrics.get("echo/clips", 0.0) > 0 and "echo/loss" not in metrics:
        raise EchoLossMissingError(
            f"EchoRL: step {step} selected {int(metrics['echo/clips'])} clips (echorl.mode=loss) but the actor workers "
            "reported no echo/loss: their loss callable is not EchoRL's (set_loss_fn did not take effect, or the "
            "workers rebuilt verl's ppo_loss), so the EchoRL term was not trained on."
        )


class EchoPPOTrainerSync(PPOTrainerSync):
    """verl's ``PPOTrainerSync`` plus the EchoRL stage. ``config`` is the composed
    ``echorl_trainer`` config (verl's ``ppo_trainer`` + ``echorl:``)."""

    echo_dump: DumpConfig = DumpConfig(freq=0)  # set from `echorl_dump` in __init__

    def __init__(self, config):
        self.echo_cfg: EchoConfig = validate_config(config)  # refuses what EchoRL cannot run with
        self.method = VerlMethod(configure_method(config))  # LUFFY / UFT agent loops (echorl.verl.methods)
        self.echo_dump = dump_config_of(config)  # echorl_dump: periodic echo_clips.json (echorl.verl.dump)
        super().__init__(config)
        self._echo_boundary_resolved = self.echo_cfg.boundary != "auto"

    def _setup(self):
        """verl's setup (tokenizer, data, workers, rollout servers), then EchoRL's two installs:
        the boundary ids are checked against the tokenizer, and EchoLoss replaces the actor
        workers' ``partial(ppo_loss, config=actor_config)`` through the public ``set_loss_fn``.
        EchoLoss is installed only when it adds a term (enabled, mode=loss, coef>0); otherwise the
        workers keep verl's own loss, so training is verl's, bit for bit."""
        super()._setup()
        if self.echo_cfg.boundary != "auto":  # auto ids come from this tokenizer: nothing to check
            check_boundary_ids(self.echo_cfg.boundary_token_ids, self.tokenizer)
        self._resolve_echo_boundary()
        self.echo_loss = None
        if self.method.active:  # LUFFY / UFT: their loss (+ the EchoRL term), echorl.methods.luffy.MethodLoss
            self.echo_loss = self.install_echo_loss(method=True)
        elif self.echo_cfg.adds_loss_term:
            self.echo_loss = self.install_echo_loss()

    def install_echo_loss(self, method: bool = False) -> EchoLoss:
        """Build :class:`EchoLoss` (or, for LUFFY / UFT, ``MethodLoss``) from the actor config (as the
        worker builds it) and send it to every actor worker (``set_loss_fn`` is dispatched ONE_TO_ALL)."""
        from verl.utils.config import omega_conf_to_dataclass

        from echorl.methods.luffy import MethodLoss

        actor_config = omega_conf_to_dataclass(self.config.actor_rollout_ref.actor)
        loss = MethodLoss(actor_config, self.echo_cfg, self.method.cfg) if method else EchoLoss(actor_config, self.echo_cfg)
        self.actor_rollout_wg.set_loss_fn(loss)
        logger.warning("EchoRL: installed %r on the actor workers", loss)
        return loss

    def _resolve_echo_boundary(self) -> None:
        if not self._echo_boundary_resolved:  # boundary='auto': ids from the tokenizer, once
            self.echo_cfg = self.echo_cfg.resolve_boundary(self.tokenizer)
            logger.warning("EchoRL: boundary='auto' resolved %d boundary token ids", len(self.echo_cfg.boundary_token_ids))
            self._echo_boundary_resolved = True

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        with recording(PPOTrainerSync._compute_advantage) as verl_io:  # keep what verl's stage reads/writes
            batch = super()._compute_advantage(batch, metrics)
        echo_t0 = time.perf_counter()  # timing_s/echo: fetch + select + write-back of the EchoRL stage
        self._resolve_echo_boundary()
        data = stage_inputs(verl_io, tq, batch.keys, batch.partition_id, READ_FIELDS)
        is_padding = [bool(tag.get("is_padding", False)) for tag in batch.tags]
        actor = self.config.actor_rollout_ref.actor
        n_mini = num_minibatches(len(batch), actor.ppo_mini_batch_size, self.config.actor_rollout_ref.rollout.n)
        method_fields, ignored = self.method.stage(batch.keys, data, is_padding, n_mini)  # LUFFY off-policy rows
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EchoBoundaryWarning)
            fields, out = echo_stage_fields(data, ignored, self.echo_cfg, num_minibatches=n_mini, step=self.global_steps)
        fields.update(method_fields)
        for w in caught:  # surface the core's warning in the driver log, not only on stderr
            if issubclass(w.category, EchoBoundaryWarning):
                logger.warning("EchoRL: %s (echorl.boundary_token_ids=%s)", w.message, list(self.echo_cfg.boundary_token_ids))
                metrics["echo/no_boundary_warning"] = 1.0
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        batch = tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=fields)
        timing = getattr(self, "timing_raw", None)
        if timing is not None:  # verl turns timing_raw[name] into timing_s/<name>
            timing["echo"] = timing.get("echo", 0.0) + time.perf_counter() - echo_t0
        metrics.update(out.metrics)
        metrics.update(self.method.metrics)
        metrics["echo/num_minibatches"] = float(n_mini)
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
        batch = super()._update_actor(batch, metrics)
        if "actor/echo/loss" in metrics:
            metrics["echo/loss"] = metrics.pop("actor/echo/loss")
        check_echo_loss_reported(metrics, self.echo_cfg, self.global_steps)
        trace_dir = trace_dir_of(self.config)
        if trace_dir is not None:  # echorl_trace.dir: what this update trained on (echorl.verl.trace)
            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=list(TRACE_FIELDS))
            write_trace(trace_dir, self.global_steps, data, [bool(t.get("is_padding", False)) for t in batch.tags], metrics)
        return batch
