"""LUFFY: mixed-policy GRPO with off-policy expert traces (Yan et al. 2025, arXiv 2504.14945).

Rules (facts from the authors' public code are listed in docs/method.md, "Base methods"):

* Group: of the ``n`` rows of a prompt, the first ``num_off_policy`` are the prompt's expert trace
  (when the row has one, :func:`expert_text`), the rest are the policy's own rollouts. The trace is
  tokenised without special tokens, cut to ``max_target_length`` tokens, EOS appended, then cut to
  the response length (:func:`expert_trace_ids`). It is scored by the verifier like any rollout.
* Advantages: the base estimator over the whole mixed group (verl's ``grpo`` on the uid), so the
  expert's reward moves the group mean.
* Loss, per token: on-policy rows use verl's ``ppo_loss`` with the policy loss
  :data:`UNCLIPPED` (``-A_t * ratio_t``, ``ratio = exp(logp - old_logp)``, no clip: the authors'
  ``loss_remove_clip=True``), or the base method's own clipped loss with
  ``method.luffy.on_policy_clip=true``; off-policy rows use ``-A_t * f(pi_theta(t))`` with
  ``f(x) = x / (x + gamma)`` (the importance ratio with the behaviour policy taken as 1, shaped),
  never clipped. Both parts are aggregated with verl's ``agg_loss`` and the same global
  normalisers, so together they equal one aggregation over all rows (for every
  ``loss_agg_mode``: off-policy rows are whole rows). The entropy bonus, when on, covers all rows.
* Metrics: every micro-batch of every rank reports the same keys (verl's ``Metric.aggregate_dp``
  refuses ranks with different counts). ``luffy/off_prob_sum`` and ``luffy/off_tokens`` are
  ``SUM`` metrics scaled by ``dp_size``, so after verl's aggregation they are the mini-batch's
  total expert-token probability and expert-token count; their ratio is the mean probability the
  policy gives the expert's tokens (:func:`off_prob_metrics`).

``d/d logp [f(exp(logp))] = gamma * p / (p + gamma)^2`` (p = exp(logp)): the shaping keeps the
gradient of low-probability expert tokens alive (``~ p / gamma`` for ``p << gamma``) and damps
tokens the policy already predicts.

:class:`MethodLoss` is the actor loss callable of both hosts for LUFFY and UFT, with the EchoRL
term added exactly as :class:`echorl.loss.EchoLoss` adds it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tensordict import TensorDict
from verl.trainer.ppo.core_algos import agg_loss, register_policy_loss
from verl.utils.metric import AggregationType, Metric
from verl.workers.utils.losses import ppo_loss
from verl.workers.utils.padding import no_padding_2_padding

from echorl.core.config import EchoConfig
from echorl.core.loss import echo_loss_term
from echorl.loss import ECHO_DENOM, ECHO_LOSS_METRIC, ECHO_MASK, echo_term, padded_response_field
from echorl.methods.config import MethodConfig
from echorl.metric_names import LUFFY_OFF_PG_LOSS, LUFFY_OFF_PROB, LUFFY_OFF_PROB_SUM, LUFFY_OFF_TOKENS, UFT_HINT_NLL

OFF_POLICY = "off_policy"  # [B] bool: the row is an expert trace
HINT_MASK = "hint_mask"  # [B, L] bool: UFT hint tokens (response-aligned, response_mask 0 there)
HINT_DENOM = "hint_denom"  # [B] float: UFT hint-NLL normaliser, fixed before the update
UNCLIPPED = "echorl_luffy_unclipped"  # verl policy loss: LUFFY's on-policy term without the clip

__all__ = ["OFF_POLICY", "HINT_MASK", "HINT_DENOM", "UNCLIPPED", "expert_text", "trace_share", "expert_trace_ids", "shaped_prob",
           "off_policy_loss_mat", "off_policy_rows", "rows_zeroed", "unclipped_policy_loss", "off_prob_metrics",
           "MethodLoss"]


def expert_text(row: Mapping[str, Any]) -> str | None:
    """The expert solution of a dataset row: ``target`` (a string, a message dict with
    ``content`` or a list of them: the first is used, as LUFFY's dataset does), else ``solution``,
    else the same keys inside ``extra_info``. ``None`` when the row has none (the group is then
    all on-policy)."""
    extra = row.get("extra_info") if hasattr(row, "get") else None
    sources = [(row, "target"), (row, "solution")]
    if isinstance(extra, Mapping):
        sources += [(extra, "target"), (extra, "solution")]
    for src, key in sources:
        value = src.get(key) if hasattr(src, "get") else None
        if value is None:
            continue
        if hasattr(value, "tolist") and not isinstance(value, str):
            value = value.tolist()
        if isinstance(value, (list, tuple)):
            if not value:
                continue
            value = value[0]
        if isinstance(value, Mapping):
            value = value.get("content")
        if isinstance(value, str) and value.strip():
            return value
    return None


def trace_share(texts: Sequence[str | None], method: str, source: str = "data.train_files") -> float:
    """The share of a step's prompts that have an expert trace (``texts[i]`` from :func:`expert_text`).

    Raises:
        ValueError: no prompt has one: the method would silently train plain GRPO, so the run stops
            with the data source (``source``) and the fix.
    """
    n = sum(t is not None for t in texts)
    if texts and n == 0:
        raise ValueError(
            f"method.name={method}: none of the {len(texts)} prompts of this training step has an expert trace (a "
            f"'target' or 'solution' field, or one inside 'extra_info'), so {method} would train plain GRPO. The training "
            f"data ({source}) lacks the trace: convert the raw data with scripts/prepare_data.py, which carries it as "
            f"'target' (e.g. --format openr1 for OpenR1-Math-46k), or set method.name=grpo")
    return n / max(len(texts), 1)


def expert_trace_ids(text: str, tokenizer: Any, *, max_target_length: int, eos_id: int,
                     response_length: int) -> list[int]:
    """Token ids of an expert trace as an off-policy response: ``tok(text)[:max_target_length] +
    [eos]``, then cut to ``response_length`` (a cut trace ends without EOS, like an overlong rollout)."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])[:max_target_length]
    return (ids + [int(eos_id)])[:response_length]


def off_policy_rows(group_index: Sequence[int] | torch.Tensor, has_trace: Sequence[bool], n: int,
                    num_off_policy: int) -> torch.Tensor:
    """``[B] bool``: row ``i`` (group ``g = group_index[i]``, rows of a group adjacent, ``n`` each) is
    off-policy when it is among the first ``num_off_policy`` of its group and the group has a trace."""
    g = torch.as_tensor(group_index, dtype=torch.long)
    pos = torch.arange(g.numel()) % int(n)  # position inside the group
    has = torch.as_tensor(list(has_trace), dtype=torch.bool)[g]
    return (pos < int(num_off_policy)) & has


def shaped_prob(log_prob: torch.Tensor, gamma: float) -> torch.Tensor:
    """``f(pi) = pi / (pi + gamma)`` with ``pi = exp(log_prob)``; same shape as ``log_prob``."""
    p = torch.exp(log_prob)
    return p / (p + gamma)


def off_policy_loss_mat(log_prob: torch.Tensor, advantages: torch.Tensor, gamma: float) -> torch.Tensor:
    """``[b, L]`` per-token off-policy loss ``-A * f(pi_theta)`` (no clip, no old-policy ratio)."""
    return -advantages * shaped_prob(log_prob, gamma)


@register_policy_loss(UNCLIPPED)
def unclipped_policy_loss(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                          response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config: Any = None,
                          rollout_is_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """verl policy loss (``[b, L]`` inputs): ``agg(-A * exp(log_prob - old_log_prob))``, no clip and no
    dual clip (LUFFY's ``compute_token_on_off_policy_loss`` with ``loss_remove_clip=True``); verl's
    rollout-correction weights multiply it as in verl's own losses. Same metric keys as ``vanilla``."""
    neg_kl = log_prob - old_log_prob
    pg = -advantages * torch.exp(neg_kl)  # [b, L]
    if rollout_is_weights is not None:
        pg = pg * rollout_is_weights
    loss = agg_loss(loss_mat=pg, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **config.global_batch_info)
    mask = response_mask.to(neg_kl.dtype)
    ppo_kl = (-neg_kl.detach() * mask).sum() / mask.sum().clamp(min=1.0)
    return loss, {"actor/pg_clipfrac": 0.0, "actor/ppo_kl": float(ppo_kl), "actor/pg_clipfrac_lower": 0.0}


def off_prob_metrics(metrics: Mapping[str, float], prefix: str = "") -> dict[str, float]:
    """``<prefix>luffy/off_prob`` (mean policy probability of the expert tokens) from the step's
    aggregated ``<prefix>luffy/off_prob_sum`` and ``<prefix>luffy/off_tokens`` (both hosts call it
    with ``prefix="actor/"`` after the actor update); empty when the step had no expert token."""
    n = float(metrics.get(prefix + LUFFY_OFF_TOKENS, 0.0))
    return {prefix + LUFFY_OFF_PROB: float(metrics[prefix + LUFFY_OFF_PROB_SUM]) / n} if n > 0 else {}


def rows_zeroed(mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``mask`` (``[b, j]`` jagged nested or dense ``[b, L]``) with the rows where ``rows`` is True set to 0."""
    keep = (~rows.bool())
    if mask.is_nested:
        offsets = mask.offsets()
        lens = offsets.diff()
        values = mask.values() * keep.to(mask.dtype).repeat_interleave(lens)
        return torch.nested.nested_tensor_from_jagged(values, offsets=offsets, max_seqlen=int(lens.max()),
                                                      min_seqlen=int(lens.min()))
    return mask * keep.to(mask.dtype)[:, None]


def _padded(data: TensorDict, key: str) -> torch.Tensor:
    value = data[key]
    return data.select(key).to_padded_tensor()[key] if value.is_nested else value


class MethodLoss:
    """Actor loss callable (verl's engine contract ``fn(model_output, data, dp_group=None)``) for LUFFY
    and UFT, plus the EchoRL term.

    Args:
        actor_config: verl's actor config dataclass (as :class:`echorl.loss.EchoLoss`).
        echo_cfg: :class:`EchoConfig` (or mapping); the EchoRL term is added when it is active in
            ``mode='loss'``.
        method_cfg: :class:`MethodConfig` (or mapping).

    Reads from the micro-batch, besides what ``ppo_loss`` reads: ``off_policy`` (``[b]`` bool,
    LUFFY), ``hint_mask`` (response-aligned bool) and ``hint_denom`` (``[b]`` float, UFT),
    ``echo_mask`` / ``echo_denom`` (EchoRL). Picklable.
    """

    def __init__(self, actor_config: Any, echo_cfg: EchoConfig | Mapping[str, Any],
                 method_cfg: MethodConfig | Mapping[str, Any]):
        self.echo_cfg = echo_cfg if isinstance(echo_cfg, EchoConfig) else EchoConfig.from_dict(dict(echo_cfg))
        self.method_cfg = method_cfg if isinstance(method_cfg, MethodConfig) else MethodConfig.from_dict(dict(method_cfg))
        if self.method_cfg.is_luffy and not self.method_cfg.luffy.on_policy_clip:
            mode = actor_config.policy_loss.get("loss_mode", "vanilla")
            if mode != "vanilla":
                raise ValueError(f"method.luffy.on_policy_clip=false replaces the clipped 'vanilla' PPO loss by LUFFY's "
                                 f"unclipped one, but actor_rollout_ref.actor.policy_loss.loss_mode={mode!r}; set "
                                 f"method.luffy.on_policy_clip=true to keep {mode!r}, or loss_mode=vanilla")
            actor_config = dataclasses.replace(
                actor_config, policy_loss=dataclasses.replace(actor_config.policy_loss, loss_mode=UNCLIPPED))
        self.actor_config = actor_config

    def __repr__(self) -> str:
        return f"MethodLoss(method={self.method_cfg.name!r}, echo_active={self.echo_cfg.active})"

    def __call__(self, model_output: dict, data: TensorDict, dp_group=None) -> tuple[torch.Tensor, dict]:
        cfg = self.actor_config
        m = self.method_cfg
        off = None
        if m.is_luffy:
            if OFF_POLICY not in data.keys():
                raise KeyError("MethodLoss (method.name=luffy): the micro-batch lacks 'off_policy'; the trainer's "
                               "LUFFY stage did not write it")
            off = data[OFF_POLICY].bool().reshape(-1)  # [b]
        if off is not None and bool(off.any()):
            on_data = data.copy()
            on_data["response_mask"] = rows_zeroed(data["response_mask"], off)
            loss, metrics = ppo_loss(cfg, model_output, on_data, dp_group)
        else:
            loss, metrics = ppo_loss(cfg, model_output, data, dp_group)
        info = cfg.global_batch_info  # set by ppo_loss for this micro-batch
        log_prob = no_padding_2_padding(model_output["log_probs"], data)  # [b, W]
        width = log_prob.shape[1]
        dp_size = data["dp_size"]
        if m.is_luffy:
            resp = padded_response_field(data, "response_mask", width)  # [b, W] bool
            off_tok = resp & off[:, None]
            adv = _padded(data, "advantages").to(log_prob.dtype)
            adv = torch.nn.functional.pad(adv, (0, width - adv.shape[1])) if adv.shape[1] < width else adv[:, :width]
            off_loss = agg_loss(loss_mat=off_policy_loss_mat(log_prob, adv, m.luffy.gamma), loss_mask=off_tok,
                                loss_agg_mode=cfg.loss_agg_mode, **info)
            loss = loss + off_loss
            metrics[LUFFY_OFF_PG_LOSS] = Metric(value=off_loss.detach(), aggregation=AggregationType.SUM)
            entropy = model_output.get("entropy")
            if entropy is not None and cfg.entropy_coeff and bool(off.any()):
                ent = no_padding_2_padding(entropy, data)
                loss = loss - cfg.entropy_coeff * agg_loss(loss_mat=ent, loss_mask=off_tok,
                                                           loss_agg_mode=cfg.loss_agg_mode, **info)
            # reported on every micro-batch (0 without expert tokens); x dp_size: verl averages over ranks
            p_sum = (torch.exp(log_prob.detach()) * off_tok).sum()
            metrics[LUFFY_OFF_PROB_SUM] = Metric(value=p_sum * dp_size, aggregation=AggregationType.SUM)
            metrics[LUFFY_OFF_TOKENS] = Metric(value=float(off_tok.sum()) * dp_size, aggregation=AggregationType.SUM)
        if m.is_uft and m.uft.coef > 0:
            if HINT_MASK not in data.keys() or HINT_DENOM not in data.keys():
                raise KeyError("MethodLoss (method.name=uft): the micro-batch lacks 'hint_mask'/'hint_denom'; the "
                               "trainer's UFT stage did not write them")
            hint = padded_response_field(data, HINT_MASK, width)
            nll = echo_loss_term(log_prob, hint, data[HINT_DENOM]) * dp_size  # sum -logp / D over hint tokens
            loss = loss + m.uft.coef * nll
            metrics[UFT_HINT_NLL] = Metric(value=nll.detach(), aggregation=AggregationType.SUM)
        if self.echo_cfg.adds_loss_term:
            missing = [k for k in (ECHO_MASK, ECHO_DENOM) if k not in data.keys()]
            if missing:
                raise KeyError(f"MethodLoss: EchoRL is on but the micro-batch lacks {missing}")
            term, scale = echo_term(log_prob, data, self.echo_cfg, cfg)  # as EchoLoss adds it
            loss = loss + self.echo_cfg.coef * scale * term
            metrics[ECHO_LOSS_METRIC] = Metric(value=term.detach(), aggregation=AggregationType.SUM)
        return loss, metrics
