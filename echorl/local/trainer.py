"""LocalTrainer: GRPO-family training + EchoRL in one process.

How it differs from verl's trainer: nothing in the algorithm. Same estimators
(``core_algos.get_adv_estimator_fn``), same actor config dataclass, same loss callable
(:class:`echorl.loss.EchoLoss` = verl's ``ppo_loss`` + the EchoRL term), same EchoRL stage
(:func:`echorl.stage.run_echo_stage`), same verifier pool. What it replaces is the machinery:
``transformers.generate`` instead of vLLM, one process instead of Ray workers, a plain
forward/backward loop instead of FSDP/Megatron.

One step (``LocalTrainer.step``)::

    prompts -> generate n rollouts each -> verifier scores (worker processes, timeout)
      -> old-policy log-probs + token entropy (chunked, no grad)
      -> advantages (verl estimator) -> run_echo_stage (echo_mask, echo_denom, echo/* metrics)
      -> actor update (mini-batches x epochs x micro-batches, EchoLoss, clip, AdamW, scheduler)
      -> metrics.jsonl / tensorboard / wandb, checkpoint

Run: ``echorl train <overrides>`` or ``python -m echorl.local <overrides>``; docs/engine.md.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from echorl import checkpoints as ckpt
from echorl import metric_names as M
from echorl.core.clips import reset_boundary_warnings
from echorl.core.steps import check_boundary_ids
from echorl.filtering import rl_response_mask
from echorl.generation import eos_ids_of
from echorl.local.config import build_actor_config, build_algo_config, build_echo_config, build_method_config, validate
from echorl.local.dynamic_sampling import dynamic_sample, filter_config, generate_and_score
from echorl.local.heldout import make_validator
from echorl.local.logger import RunLogger
from echorl.local.methods import LocalMethod
from echorl.local.report import write_report
from echorl.local.resume import check_resume_config, set_previous_run_aside
from echorl.local.train_prompts import PromptSampler, prepare_prompts
from echorl.local.update import actor_update, compute_advantages, token_level_rewards
from echorl.logprobs import old_policy_pass
from echorl.loss import EchoLoss
from echorl.methods.entropy import check_combination, method_loss, zvp_sign
from echorl.methods.luffy import MethodLoss, off_prob_metrics
from echorl.metric_names import timing_name
from echorl.models.loading import load_model
from echorl.rewards.inprocess import make_verifier
from echorl.stage import num_minibatches, run_echo_stage
from echorl.tasks import compute_score

__all__ = ["LocalTrainer", "import_score_fn", "resolve_device"]


def import_score_fn(spec: str) -> Callable[..., float]:
    """``reward.score_fn="package.module:function"`` -> the function (module level, so picklable)."""
    import importlib

    mod, sep, fn = spec.partition(":")
    if not sep or not mod or not fn:
        raise ValueError(f"reward.score_fn must look like 'package.module:function', got {spec!r}")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"reward.score_fn={spec!r} cannot be imported: {e}") from None


def resolve_device(name: str) -> torch.device:
    """``trainer.device`` -> a ``torch.device`` that exists here (``cpu``, ``cuda``, ``cuda:<i>``).

    Raises:
        ValueError: not a device name, not cpu/cuda, or CUDA asked for where there is none.
    """
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"trainer.device={name!r} is not a device; use cpu, cuda or cuda:<index>") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"trainer.device={name!r}: the engine runs on cpu or cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"trainer.device={name!r} but torch.cuda.is_available() is False (torch {torch.__version__}: "
                             "a CPU build, or no GPU visible); set trainer.device=cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"trainer.device={name!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return dev


class LocalTrainer:
    """The embedded single-process trainer.

    Args:
        cfg: the composed ``local.yaml`` (see :func:`echorl.local.config.load_config`).
        model, tokenizer: use these instead of loading ``model.name``.
        rows: training rows instead of loading ``data.task``.
        score_fn: picklable module-level verifier ``score_fn(data_source, solution_str, answer,
            extra_info) -> float`` (default :func:`echorl.tasks.compute_score`).
        loss_fn: the actor loss callable (default ``EchoLoss(actor_cfg, echo_cfg)``).
    """

    def __init__(self, cfg: DictConfig, *, model: Any = None, tokenizer: Any = None,
                 rows: list[dict[str, Any]] | None = None, score_fn: Callable[..., float] | None = None,
                 loss_fn: Callable | None = None):
        self.cfg = cfg
        self.device = resolve_device(str(cfg.trainer.device))
        if int(cfg.trainer.num_threads) > 0:
            torch.set_num_threads(int(cfg.trainer.num_threads))
        if cfg.trainer.deterministic:
            if self.device.type == "cuda":  # cuBLAS is deterministic only with this workspace setting
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        self._seed(int(cfg.seed))
        self.actor_cfg = build_actor_config(cfg)
        self.algo_cfg = build_algo_config(cfg)
        validate(cfg, self.actor_cfg)
        echo_cfg = build_echo_config(cfg)
        if model is None:
            model, tokenizer = load_model(str(cfg.model.name), str(cfg.model.dtype))
        elif tokenizer is None:
            raise ValueError("LocalTrainer: a model was given without its tokenizer")
        self.model, self.tok = model.to(self.device), tokenizer
        self.eos_ids = eos_ids_of(tokenizer, model)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.prompts = prepare_prompts(cfg.data, tokenizer, rows,
                                       custom_verifier=score_fn is not None or bool(cfg.reward.get("score_fn")))
        reset_boundary_warnings()  # each boundary warning once per run
        self.echo_cfg = echo_cfg.resolve_boundary(tokenizer)
        check_boundary_ids(self.echo_cfg.boundary_token_ids, tokenizer, [r.get("solution") for r in self.prompts.rows])
        self.sampler = PromptSampler(len(self.prompts.rows), int(cfg.data.train_batch_size), bool(cfg.data.shuffle),
                                     int(cfg.data.seed))
        from verl.workers.config.optimizer import build_optimizer

        self.optimizer = build_optimizer(self.model.parameters(), self.actor_cfg.optim)
        self.scheduler = self._build_scheduler()

        method_cfg = build_method_config(cfg)
        self.method = LocalMethod(method_cfg, tokenizer, eos_id=self.eos_ids[0], pad_id=self.pad_id,
                                  n=int(cfg.actor_rollout_ref.rollout.n),
                                  max_response_length=int(cfg.data.max_response_length))
        self.filter_cfg = filter_config(cfg, self.echo_cfg, self.method.active)  # algorithm.filter_groups (DAPO)
        if loss_fn is None and self.method.active:  # LUFFY / UFT: their loss + the EchoRL term

            loss_fn = MethodLoss(self.actor_cfg, self.echo_cfg, method_cfg)
        if loss_fn is None:
            loss_fn = EchoLoss(self.actor_cfg, self.echo_cfg)
        check_combination(method_cfg, self.echo_cfg, filter_groups=self.filter_cfg.enable, entropy_in_update=True,
                          actor=self.actor_cfg)
        self.loss_fn = method_loss(loss_fn, self.actor_cfg, method_cfg, self.echo_cfg)  # RL-ZVP / forking tokens

        if score_fn is None and cfg.reward.get("score_fn"):
            score_fn = import_score_fn(str(cfg.reward.score_fn))
        self.pool = make_verifier(score_fn or compute_score, in_process=cfg.reward.get("in_process", False),
                                  num_workers=int(cfg.reward.num_workers), timeout_s=float(cfg.reward.timeout_s))
        self.out = Path(str(cfg.output_dir))
        self.ckpt_dir = self.out / "checkpoints"

        self.validator = make_validator(cfg, self.tok, self.out)  # held-out data.val_files (None: no validation)
        self.global_step = 0
        self.last = None  # tensors of the last step, for the EchoClip page
        self.update_gen = torch.Generator().manual_seed(int(self.actor_cfg.data_loader_seed))
        if cfg.resume == "auto":
            self._maybe_resume()
        else:  # resume=disable: a previous run in this folder is moved aside, never mixed with this one

            set_previous_run_aside(self.out)

    # ------------------------------------------------------------------ setup helpers
    @staticmethod
    def _seed(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _build_scheduler(self):
        """verl's warmup schedulers, configured as verl's FSDP engine does (``_build_lr_scheduler``)."""
        from verl.utils.torch_functional import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

        oc = self.actor_cfg.optim
        total = int(self.cfg.trainer.total_training_steps)
        warm = oc.lr_warmup_steps if oc.lr_warmup_steps and oc.lr_warmup_steps > 0 else int(oc.lr_warmup_steps_ratio * total)
        if oc.lr_scheduler_type == "constant":
            return get_constant_schedule_with_warmup(self.optimizer, num_warmup_steps=warm)
        if oc.lr_scheduler_type == "cosine":
            return get_cosine_schedule_with_warmup(self.optimizer, num_warmup_steps=warm, num_training_steps=total,
                                                   min_lr_ratio=oc.min_lr_ratio, num_cycles=oc.num_cycles,
                                                   zero_indexed_step=oc.zero_indexed_step)
        raise ValueError(f"actor_rollout_ref.actor.optim.lr_scheduler_type must be constant or cosine, "
                         f"got {oc.lr_scheduler_type!r}")

    def _maybe_resume(self) -> None:
        path = ckpt.latest_checkpoint(self.ckpt_dir)
        if path is None:
            return
        st = ckpt.load_checkpoint(path)

        check_resume_config(st.get("config"), OmegaConf.to_container(self.cfg, resolve=True), path)
        self.model.load_state_dict(st["model"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.sampler.load_state_dict(st["sampler"])
        self.update_gen.set_state(st["update_gen"])
        self.global_step = int(st["step"])
        ckpt.set_rng_state(st["rng"])
        self.resumed_from = str(path)

    def save(self) -> Path:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "sampler": self.sampler.state_dict(),
                 "update_gen": self.update_gen.get_state(), "config": OmegaConf.to_container(self.cfg, resolve=True)}
        return ckpt.save_checkpoint(self.ckpt_dir, self.global_step, state, int(self.cfg.trainer.max_ckpt_to_keep))

    # ------------------------------------------------------------------ one step
    def step(self) -> dict[str, float]:
        """Run one training step and return its metrics (``global_step`` is incremented)."""
        cfg, ro = self.cfg, self.cfg.actor_rollout_ref.rollout
        n, temp = int(ro.n), float(ro.temperature)
        t: dict[str, float] = {}
        t0 = time.perf_counter()
        gen = generate_and_score(self, self.sampler.next_batch(), t)  # echorl.local.dynamic_sampling
        echo_only, filter_metrics = None, {}
        if self.filter_cfg.enable:  # DAPO dynamic sampling: drop zero-variance groups, refill
            gen, echo_only, filter_metrics = dynamic_sample(
                gen, lambda: generate_and_score(self, self.sampler.next_batch(), t), self.filter_cfg, self.echo_cfg,
                int(cfg.data.train_batch_size), self.pad_id)
        rows, rb, scores, stats = gen.rows, gen.rb, gen.scores, gen.stats  # scores [B]
        lens = rb.attention_mask[:, rb.prompts.shape[1]:].sum(-1)  # [B] response tokens (UFT hints included)

        t2 = time.perf_counter()
        old_lp, entropy = old_policy_pass(self.model, rb.input_ids, rb.attention_mask, rb.responses, temp,
                                          int(ro.log_prob_micro_batch_size_per_gpu))
        t[timing_name("old_log_prob")] = time.perf_counter() - t2

        t3 = time.perf_counter()
        rl_mask = rl_response_mask(rb.response_mask, echo_only)  # kept rows: no RL gradient (echorl.filtering)
        rewards = token_level_rewards(scores, rl_mask)
        adv = compute_advantages(str(cfg.algorithm.adv_estimator), rewards, rl_mask,
                                 rb.group_index.numpy(), self.algo_cfg)  # group ids of this batch
        t[timing_name("adv")] = time.perf_counter() - t3

        t4 = time.perf_counter()
        n_rl = rb.responses.shape[0] - (int(echo_only.sum()) if echo_only is not None else 0)
        n_mini = num_minibatches(n_rl, int(self.actor_cfg.ppo_mini_batch_size), n)
        echo = run_echo_stage(rb.responses, self.method.echo_response_mask(rb), entropy, scores, rb.group_index,
                              self.echo_cfg,
                              advantages=adv, num_minibatches=n_mini, step=self.global_step, echo_only=echo_only)
        t[M.TIMING_ECHO] = time.perf_counter() - t4

        t5 = time.perf_counter()
        batch = {"prompts": rb.prompts, "responses": rb.responses, "input_ids": rb.input_ids,
                 "attention_mask": rb.attention_mask, "response_mask": rl_mask,
                 "old_log_probs": old_lp, "advantages": echo.advantages, "echo_mask": echo.echo_mask,
                 "echo_denom": echo.echo_denom_rows}
        if echo_only is not None and bool(echo_only.any()):
            batch["echo_only"] = echo_only  # actor_update spreads them over the RL mini-batches
        batch.update(self.method.batch_fields(rb, n_mini))
        batch.update(zvp_sign(self.method.cfg, scores, rb.group_index, rl_mask))  # RL-ZVP's signs
        self.last_batch = batch
        actor = actor_update(self.model, self.optimizer, self.scheduler, self.loss_fn, batch, self.actor_cfg,
                             n=n, temperature=temp, generator=self.update_gen,
                             with_entropy=self.method.cfg.needs_entropy)
        t[timing_name("update_actor")] = time.perf_counter() - t5
        t[timing_name("step")] = time.perf_counter() - t0
        self.global_step += 1

        valid = rb.response_mask.bool()
        metrics: dict[str, float] = {
            "reward/mean": float(scores.mean()),
            "reward/accuracy": float((scores >= self.echo_cfg.success_threshold).float().mean()),
            "reward/timeouts": float(stats.get("timeouts", 0)),
            "reward/crashes": float(stats.get("crashes", 0)),
            "reward/errors": float(stats.get("errors", 0)),
            "response_length/mean": float(lens.float().mean()),
            "response_length/clip_ratio": float((~torch.isin(rb.responses.gather(1, (lens - 1).clamp(min=0)[:, None]),
                                                             torch.tensor(self.eos_ids))).float().mean()),
            "actor/entropy": float(entropy[valid].mean()),
            "perf/tokens_per_s": float(rb.attention_mask.sum()) / t[timing_name("step")],
            "data/epoch": float(self.sampler.epoch),
            "data/prompts_too_long": float(self.prompts.skipped_too_long),
        }
        metrics.update(echo.metrics)
        metrics[M.NUM_MINIBATCHES] = float(n_mini)
        metrics.update(filter_metrics)
        metrics.update(self.method.metrics)
        metrics.update(actor)
        metrics.update(off_prob_metrics(actor, prefix=M.ACTOR_PREFIX))
        metrics.update(t)
        if self.last is None or bool(echo.selection.mask.any()):  # keep the latest step that had clips
            self.last = {"responses": rb.responses, "response_mask": rb.response_mask, "entropy": entropy,
                         "scores": scores, "selection": echo.selection, "group_index": rb.group_index, "rows": rows,
                         "boundary_ids": self.echo_cfg.boundary_token_ids}
        return metrics

    # ------------------------------------------------------------------ the loop
    def train(self, until_step: int | None = None) -> dict[str, Any]:
        """Train to ``trainer.total_training_steps``; returns a summary (first/last metrics, paths).

        ``until_step`` stops after that step instead, with a checkpoint there: the first part of the
        same run (validation and checkpoints fall where the full run has them), which a later
        ``train()`` resumes."""
        cfg = self.cfg
        total = int(cfg.trainer.total_training_steps)
        stop = total if until_step is None else int(until_step)
        if not 0 < stop <= total:
            raise ValueError(f"train(until_step={until_step}): give a step in 1..trainer.total_training_steps ({total})")
        save_freq = int(cfg.trainer.save_freq)
        log = RunLogger(self.out, list(cfg.trainer.logger), total, self.global_step,
                        OmegaConf.to_container(cfg, resolve=True), str(cfg.trainer.project_name),
                        str(cfg.trainer.experiment_name))
        if getattr(self, "resumed_from", None):
            log.write(f"resumed from {self.resumed_from} (step {self.global_step})")
        limit_s = cfg.trainer.get("time_limit_min")
        deadline = time.monotonic() + 60 * float(limit_s) if limit_s else None
        try:
            if self.validator is not None and self.validator.before_train and self.global_step == 0:
                log.log(0, self.validator.run(self.model, 0))  # verl logs validation before training at step 0
                if log.bar is not None:
                    log.bar.update(-1)  # step 0 is not a training step
            while self.global_step < stop:
                metrics = self.step()
                if self.validator is not None and self.validator.due(self.global_step, total):
                    metrics.update(self.validator.run(self.model, self.global_step))
                log.log(self.global_step, metrics)
                out_of_time = deadline is not None and time.monotonic() > deadline
                if (save_freq > 0 and self.global_step % save_freq == 0) or self.global_step in (stop, total) or out_of_time:
                    self.save()
                if out_of_time:
                    log.write(f"trainer.time_limit_min={limit_s} reached at step {self.global_step}; "
                              "stopping (resume=auto continues from here)")
                    break
        finally:
            log.close()
            self.pool.close()
            if self.validator is not None:
                self.validator.close()
        summary: dict[str, Any] = {"output_dir": str(self.out), "metrics": str(log.path), "steps": self.global_step}
        if cfg.trainer.make_report:
            summary.update(self.report())
        return summary

    def report(self) -> dict[str, str]:
        """The PNG figure of the run and the HTML page of sample EchoClips (echorl.analysis)."""
        return write_report(self.out, self.tok, self.last, int(self.cfg.trainer.report_clips))
