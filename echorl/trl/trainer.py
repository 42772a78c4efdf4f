"""EchoGRPOTrainer: TRL's ``GRPOTrainer`` with the EchoRL term (SPEC 2.4, docs/trl.md).

Five TRL methods are extended; TRL's own code runs unchanged in each, and with EchoRL off (or a
zero weight) the trainer computes exactly what ``GRPOTrainer`` computes (bit-identical weights):

* ``_calculate_rewards``: keeps the global ``[B, F]`` rewards (the scores of SPEC 2.3: the weighted
  sum over reward functions, as TRL logs ``reward``).
* ``_get_per_token_logps_and_entropies``: TRL's fused LM head computes token entropy on every
  policy forward (TRL's ``entropy`` metric). When TRL runs its no-grad old-policy pass (``num_iterations
  > 1``, ``steps_per_generation > gradient_accumulation_steps`` or vLLM importance sampling) it
  discards them; this keeps them, so EchoRL costs no forward. In the loss forward it keeps the
  log-probs with grad, so the EchoRL term costs no forward either.
* ``_generate_single_turn``: when TRL makes no old-policy pass (on-policy: ``steps_per_generation <=
  gradient_accumulation_steps`` and ``num_iterations == 1``, TRL's default) and samples with
  transformers ``generate``, a ``LogitsProcessor`` appended to that call records the token entropy
  of every sampled token from the logits ``generate`` computes anyway
  (:class:`echorl.trl.generation.GenerationEntropy`), so EchoRL needs no forward.
* ``_generate_and_score_completions``: after TRL's generation, scoring and advantages, the EchoRL
  stage (:func:`echorl.trl.stage.split_echo_stage` -> :func:`echorl.stage.run_echo_stage`) writes
  ``echo_mask [b, L]`` and ``echo_denom [b]`` into the batch TRL buffers, shuffles and splits. The
  entropies come from TRL's old-policy pass, else from generation, else (vLLM, continuous
  batching, tools, a generation config that changes the logits before sampling) from one no-grad
  pass over the rows that can be eligible (score >= ``success_threshold``: the selection reads no
  other row's entropy; ``timing_s/echo_entropy_pass``), run under a forked RNG so that training stays
  bit-identical. The metrics ``echo/entropy_from_generation`` and ``echo/entropy_pass`` and a one-time
  log line say which.
* ``_compute_loss``: TRL's loss plus ``coef * scale * echo_loss_term(log_probs, echo_mask, echo_denom)``
  (:func:`echorl.core.loss.echo_loss_term`, the loss every host uses; ``scale`` from
  :func:`echorl.trl.stage.echo_term_scale`), and the ``echo/loss`` metric: the mini-batch's ``L_echo``.

Metrics go into TRL's own ``_metrics``, so every logger TRL reports to (TensorBoard, wandb, ...)
shows ``train/echo/*``.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import trl
from packaging.version import Version
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from echorl.core.config import EchoConfig
from echorl.core.loss import echo_loss_term
from echorl.core.steps import check_boundary_ids
from echorl.metric_names import (
    ENTROPY_FROM_GENERATION,
    ENTROPY_PASS,
    LOSS,
    TIMING_ECHO,
    TIMING_ECHO_ENTROPY_PASS,
    TIMING_ECHO_GENERATION_ENTROPY,
)
from echorl.trl.config import EchoGRPOConfig
from echorl.trl.generation import GenerationEntropy, recording_generate
from echorl.trl.stage import echo_term_scale, minibatches_per_generation, split_echo_stage

__all__ = ["ENTROPY_SOURCES", "EchoGRPOTrainer", "EchoStepRecord", "TRL_RANGE"]

logger = logging.getLogger(__name__)

TRL_RANGE = ("1.16", "1.17")  # [low, high): the GRPOTrainer whose methods this class extends
if not Version(TRL_RANGE[0]) <= Version(trl.__version__) < Version(TRL_RANGE[1]):
    raise ImportError(f"echorl.trl extends TRL {TRL_RANGE[0]}.x's GRPOTrainer, but TRL {trl.__version__} is installed; "
                      f"install the pinned range: pip install 'echorl[trl]' (trl>={TRL_RANGE[0]},<{TRL_RANGE[1]})")

# batch keys of TRL's multimodal forward, passed through to the entropy pass as TRL's loss does
_FORWARD_KEYS = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes", "num_tiles",
                 "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")
ECHO_MASK, ECHO_DENOM = "echo_mask", "echo_denom"
# where the selection's token entropies came from (EchoStepRecord.entropy_source), in order of preference
ENTROPY_SOURCES = {"old_policy_pass": "TRL's old-policy pass (no extra forward)",
                   "generation": "recorded while generate sampled the completions (no extra forward)",
                   "forward_pass": "EchoRL's own no-grad forward pass over the rows that can be eligible"}
# TRL loss types whose token weight is not a token mean's (echorl_follow_rl_agg would scale the term);
# the others (grpo, sapo: mean of sequence means; bnpo, dapo, cispo, vespo: token mean) have scale 1.
SUM_AGG_LOSS_TYPES = {"dr_grpo": "N / (G * max_completion_length) times a token mean's",
                      "luspo": "N / G times a token mean's"}


@dataclass
class EchoStepRecord:
    """What the last EchoRL stage of this process saw and chose (for tests and analysis).

    Attributes:
        prompt_ids: ``[b, P]``, prompt_mask ``[b, P]``, completion_ids ``[b, L]``, loss_mask ``[b, L]``:
            this process's rows, in generation order (before TRL shuffles them).
        entropy: ``[b, L] float`` the token entropy the selection read (from generation: 0 outside
            ``loss_mask``; from EchoRL's own pass: at the rows that can be eligible, score >=
            ``success_threshold``, 0 in the other rows).
        advantages: ``[b]`` TRL's advantages of these rows (before a ``mode='advantage'`` bonus).
        scores: ``[B] float`` the outcome reward of every global row.
        echo_mask: ``[b, L] bool``; echo_denom: ``[b] float32``: the stage's output for these rows.
        rows: this process's slice of the global batch.
        entropy_source: a key of :data:`ENTROPY_SOURCES`; entropy_pass: ``entropy_source ==
            "forward_pass"`` (EchoRL ran its own no-grad forward).
        metrics: the stage's ``echo/*`` metrics (global).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    loss_mask: torch.Tensor
    entropy: torch.Tensor
    advantages: torch.Tensor
    scores: torch.Tensor
    echo_mask: torch.Tensor
    echo_denom: torch.Tensor
    rows: slice
    entropy_source: str
    metrics: dict[str, float]

    @property
    def entropy_pass(self) -> bool:
        return self.entropy_source == "forward_pass"


def _rng_fork(device: torch.device):
    """Restore the global RNG state afterwards (the entropy pass must not shift TRL's sampling)."""
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[device.index or 0], device_type=device.type)


class EchoGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` + EchoRL; arguments as ``GRPOTrainer``, with ``args`` an :class:`EchoGRPOConfig`.

    ``generation_entropy`` (class attribute, default ``True``): record the token entropies during
    transformers ``generate`` when TRL makes no old-policy pass; ``False`` always uses EchoRL's own
    forward pass there (same values to float rounding, one more forward per generation batch).

    Raises:
        TypeError: ``args`` is not an ``EchoGRPOConfig``.
        ValueError: ``steps_per_generation`` and ``gradient_accumulation_steps`` do not divide one
            another; ``echorl_follow_rl_agg`` with a loss type that sums tokens (``dr_grpo``, ``luspo``);
            ``echorl_boundary_token_ids`` lie outside the tokenizer's vocabulary.
    """

    generation_entropy: bool = True

    def __init__(self, model: Any, reward_funcs: Any = None, args: EchoGRPOConfig | None = None, *rest: Any,
                 **kwargs: Any):
        if args is None:
            args = EchoGRPOConfig()
        if not isinstance(args, EchoGRPOConfig):
            raise TypeError(f"EchoGRPOTrainer needs args=EchoGRPOConfig(...) (TRL's GRPOConfig plus the echorl_* "
                            f"fields), got {type(args).__name__}; build it with the same keyword arguments")
        echo_term_scale(1, args.steps_per_generation, args.gradient_accumulation_steps)  # refuse a misaligned split
        if args.echo_config().follow_rl_agg and args.loss_type in SUM_AGG_LOSS_TYPES:
            raise ValueError(
                f"echorl_follow_rl_agg=True with loss_type={args.loss_type!r}: TRL's {args.loss_type} weighs a token "
                f"{SUM_AGG_LOSS_TYPES[args.loss_type]}, which this trainer does not follow; set "
                "echorl_follow_rl_agg=False (the paper's term) or use a token-mean loss_type (bnpo, dapo, grpo)")
        self._echo_grab: str | None = None  # "old_entropy" | "loss_logps" while a TRL call is watched
        self._echo_grabbed: torch.Tensor | None = None
        self._echo_rewards: torch.Tensor | None = None
        self.echo_last: EchoStepRecord | None = None
        self._echo_logged: set[str] = set()
        super().__init__(model, reward_funcs, args, *rest, **kwargs)
        self._echo_recorder = GenerationEntropy(self.temperature)
        self._echo_recording = False  # True while a generation batch is recorded
        tok = getattr(self.processing_class, "tokenizer", self.processing_class)
        self.echo_cfg: EchoConfig = args.echo_config().resolve_boundary(tok)
        check_boundary_ids(self.echo_cfg.boundary_token_ids, tok)

    # ------------------------------------------------------------------ what TRL computes anyway
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._echo_rewards = rewards  # [B, F] global (TRL gathers them for the group advantages)
        return rewards

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, **kwargs):
        grab = self._echo_grab
        if grab == "old_entropy" and model is self.model and not torch.is_grad_enabled():
            # TRL's old-policy pass: the fused head computes the entropies anyway; keep them
            self._echo_grab = None
            logps, ent, aux = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size, compute_entropy=True, **kwargs)
            self._echo_grabbed = ent
            return logps, (ent if compute_entropy else None), aux
        out = super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size, compute_entropy=compute_entropy,
            **kwargs)
        if grab == "loss_logps":
            self._echo_grab = None
            self._echo_grabbed = out[0]
        return out

    @contextmanager
    def _watch(self, what: str):
        self._echo_grab, self._echo_grabbed = what, None
        try:
            yield
        finally:
            self._echo_grab = None

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if not self._echo_recording:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images=has_tool_images)
        # the model whose generate TRL calls: what unwrap_model_for_generation yields
        with recording_generate(self.accelerator.unwrap_model(self.model_wrapped), self._echo_recorder):
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images=has_tool_images)

    def _trl_makes_old_policy_pass(self) -> bool:
        """TRL's condition for its no-grad old-policy pass (``GRPOTrainer._generate_and_score_completions``)."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return bool(self.args.gradient_accumulation_steps % generate_every
                    or (self.use_vllm and self.vllm_importance_sampling_correction))

    def _generation_entropy_blocker(self) -> str | None:
        """Why the entropies cannot be recorded during generation (``None``: they can)."""
        if not self.generation_entropy:
            return "EchoGRPOTrainer.generation_entropy is False"
        if self.use_vllm:
            return "vLLM generates the completions (use_vllm=True)"
        if self.use_transformers_continuous_batching:
            return "transformers continuous batching (generate_batch) generates the completions"
        if self.rollout_func is not None:
            return "a rollout_func generates the completions"
        if self.tools or self.environment_factories:
            return "tool calls extend the completions over several generate calls"
        return None

    def _log_entropy_source(self, source: str, why: str | None, failed: bool) -> None:
        """One log line per source and reason over the run (a warning when a recording was tried and
        failed: the run then pays a forward it was meant to save)."""
        key = f"{source}: {why}"
        if key in self._echo_logged or not self.accelerator.is_main_process:
            return
        self._echo_logged.add(key)
        logger.log(logging.WARNING if failed else logging.INFO, "EchoRL token entropies: %s%s",
                   ENTROPY_SOURCES[source], f" (not recorded during generation: {why})" if why else "")

    # ------------------------------------------------------------------ the stage
    def _generate_and_score_completions(self, inputs):
        if not self.model.training:  # evaluation: no update, no EchoRL
            return super()._generate_and_score_completions(inputs)
        self._echo_rewards = None
        blocker = "TRL makes its old-policy pass" if self._trl_makes_old_policy_pass() else \
            self._generation_entropy_blocker()
        self._echo_recording = blocker is None
        self._echo_recorder.begin()
        try:
            with self._watch("old_entropy"):
                out = super()._generate_and_score_completions(inputs)
        finally:
            self._echo_recording = False
        entropy = self._echo_grabbed if "old_per_token_logps" in out else None  # else: a reference pass, not ours
        self._echo_grabbed = None
        metrics = self._metrics["train"]
        loss_mask = out["completion_mask"] if "tool_mask" not in out else out["completion_mask"] * out["tool_mask"]
        rewards = self._echo_rewards  # [B, F]
        scores = (rewards * self.reward_weights.to(rewards.device).unsqueeze(0)).nansum(dim=1)  # [B]
        source, why = "old_policy_pass", None
        if entropy is None and blocker is None:
            recorded = self._echo_recorder.result(*loss_mask.shape)  # [b, L] or None
            if recorded is not None:
                source, entropy = "generation", recorded.to(loss_mask.device).masked_fill(loss_mask == 0, 0.0)
            why = self._echo_recorder.refused
            metrics[TIMING_ECHO_GENERATION_ENTROPY].append(self._echo_recorder.seconds)
        t0 = time.perf_counter()
        if entropy is None:
            source, why = "forward_pass", why or blocker
            b = loss_mask.shape[0]
            local = scores[self.accelerator.process_index * b:(self.accelerator.process_index + 1) * b]
            # only successes can be eligible (both scopes); the selection reads no other row's entropy
            entropy = self._echo_entropy_pass(out, (local >= self.echo_cfg.success_threshold) & loss_mask.bool().any(1))
        t1 = time.perf_counter()
        res = split_echo_stage(
            out["completion_ids"], loss_mask, entropy, out["advantages"], scores, self.num_generations, self.echo_cfg,
            self.accelerator,
            num_minibatches=minibatches_per_generation(self.args.steps_per_generation,
                                                       self.args.gradient_accumulation_steps),
            step=self.state.global_step)
        trl_advantages = out["advantages"]
        out[ECHO_MASK] = res.echo_mask
        out[ECHO_DENOM] = res.echo_denom
        if res.advantages is not None:  # mode='advantage': TRL's loss takes [b, L] advantages
            out["advantages"] = res.advantages
        for k, v in res.stage.metrics.items():
            metrics[k].append(v)
        metrics[ENTROPY_PASS].append(float(source == "forward_pass"))
        metrics[ENTROPY_FROM_GENERATION].append(float(source == "generation"))
        self._log_entropy_source(source, why if source == "forward_pass" else None,
                                 failed=source == "forward_pass" and blocker is None)
        metrics[TIMING_ECHO_ENTROPY_PASS].append(t1 - t0)
        metrics[TIMING_ECHO].append(time.perf_counter() - t1)
        self.echo_last = EchoStepRecord(
            prompt_ids=out["prompt_ids"], prompt_mask=out["prompt_mask"], completion_ids=out["completion_ids"],
            loss_mask=loss_mask, entropy=entropy, advantages=trl_advantages, scores=scores,
            echo_mask=res.echo_mask, echo_denom=res.echo_denom, rows=res.rows, entropy_source=source,
            metrics=dict(res.stage.metrics))
        return out

    def _echo_entropy_pass(self, batch: dict, rows: torch.Tensor) -> torch.Tensor:
        """``[b, L]`` token entropy of the current policy at ``rows`` (``[b] bool``), 0 elsewhere: one
        no-grad forward of those rows, as TRL's old-policy pass, used when TRL made none. Multimodal
        batches (per-image tensors) run whole."""
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        width = batch["completion_ids"].size(1)
        extra = {k: batch[k] for k in _FORWARD_KEYS if k in batch}
        if extra:
            rows = torch.ones_like(rows)
        ent = torch.zeros(ids.shape[0], width, dtype=torch.float32, device=ids.device)  # [b, L]
        if not bool(rows.any()):
            return ent
        idx = rows.nonzero().flatten()
        sub = (ids, attn) if extra else (ids[idx], attn[idx])
        with (torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
              _rng_fork(ids.device)):
            _, part, _ = super()._get_per_token_logps_and_entropies(
                self.model, *sub, width, batch_size=self.args.per_device_train_batch_size, compute_entropy=True,
                **extra)
        ent[idx] = part.float() if not extra else part.float()[idx]
        return ent

    # ------------------------------------------------------------------ the loss
    def _compute_loss(self, model, inputs):
        if not (self.echo_cfg.adds_loss_term and self.model.training):
            return super()._compute_loss(model, inputs)
        with self._watch("loss_logps"):
            loss = super()._compute_loss(model, inputs)
        logps, self._echo_grabbed = self._echo_grabbed, None  # [b, L] with grad, from TRL's own forward
        scale = echo_term_scale(self.accelerator.num_processes, self.args.steps_per_generation,
                                self.args.gradient_accumulation_steps)
        term = echo_loss_term(logps, inputs[ECHO_MASK], inputs[ECHO_DENOM])  # sum_b nll_b / D_b of these rows
        # echo/loss: L_echo of the mini-batch. TRL averages a metric over the window's micro-batches;
        # each micro-batch reports its global rows' share times the micro-batches of the window.
        share = self.accelerator.reduce(term.detach().reshape(1), reduction="sum")
        window = self.current_gradient_accumulation_steps * scale / self.accelerator.num_processes
        self._metrics["train"][LOSS].append(float(share) * window)
        return loss + self.echo_cfg.coef * scale * term
