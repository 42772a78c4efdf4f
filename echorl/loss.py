"""EchoLoss: verl's actor loss plus the EchoRL term (SPEC 2.4, ``mode='loss'``).

verl's engine workers call one loss callable per micro-batch with the contract

    loss_fn(model_output: dict, data: TensorDict, dp_group=None) -> (loss, metrics)

(``verl/workers/engine_workers.py`` builds ``partial(ppo_loss, config=actor_config)``; the driver
may replace it through the public ``set_loss_fn`` RPC). :class:`EchoLoss` is such a callable: it
calls verl's own :func:`verl.workers.utils.losses.ppo_loss` unchanged and adds

    coef * dp_size * echo_loss_term(log_probs, echo_mask, echo_denom)

The same callable serves FSDP (``model_engine=dp``) and Megatron (``model_engine=megatron``): it
does no collectives and nothing engine-specific. The embedded engine uses it too.

Normalisation (why the ``dp_size`` factor, and why the gradient does not depend on the split)
--------------------------------------------------------------------------------------------
verl's ``agg_loss`` (``token-mean``) returns, for one micro-batch ``m`` on dp rank ``r``,

    l_{r,m} = sum_{t in (r,m)} x_t / N * dp_size,

with ``N = data["batch_num_tokens"]`` the valid-token count of the whole mini-batch summed over
dp ranks (all-reduced by the engine *before* the loop). The FSDP engine backprops every
``l_{r,m}`` unscaled and data-parallel gradient reduction averages over ranks, so the applied
gradient is ``(1/dp_size) sum_r sum_m grad l_{r,m} = grad( sum_{t in mini-batch} x_t / N )``:
the global token mean, whatever the split. (Megatron multiplies each micro-batch loss by the
micro-batch count because its pipeline schedule divides by it; the net effect is identical.)

The EchoRL term follows the same convention with denominators fixed before the update:
``D_b = data["echo_denom"][b]`` is written per row by the trainer stage
(:func:`echorl.stage.run_echo_stage`, :func:`echorl.core.loss.echo_row_denominators`): with the
paper's ``loss_agg='clip_mean'`` ``D_b = |c_b| * C / M`` (clip length times the step's clips per
mini-batch), with ``clip_token_mean`` the step's clip tokens per mini-batch on every row. Each
micro-batch adds

    e_{r,m} = coef * dp_size * sum_{b in (r,m)} sum_{t in b, clip} -log pi_theta(t) / D_b,

so the applied gradient is ``grad( coef * sum_{b in mini-batch} sum_{t in b, clip} -log pi_theta(t) / D_b )``:
the same for 1, 2 or 4 micro-batches and for any number of dp ranks (up to float summation
order). No per-micro-batch count and no collective enter the term.

RL aggregations other than ``token-mean`` (``echorl.follow_rl_agg``): under
``seq-mean-token-sum-norm`` verl weighs a token ``1 / (global_batch_size * loss_scale_factor)``
instead of ``1 / batch_num_tokens``; with ``follow_rl_agg`` the term above is multiplied by the
ratio of the two (:func:`echorl.core.loss.rl_agg_scale`, applied by :func:`echo_term`), which is
fixed per mini-batch and so keeps the split invariance. Off by default (the paper's term).

Metrics: ppo_loss's metrics unchanged, plus ``echo/loss`` = ``dp_size * L_echo`` of the
micro-batch with SUM aggregation, so verl's reduction (mean over dp ranks, sum over micro-batches)
reports ``L_echo`` of the mini-batch. The v1 trainer prefixes actor metrics with ``actor/``;
:class:`echorl.verl.trainer.EchoPPOTrainerSync` moves it back to ``echo/loss``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from verl.utils.metric import AggregationType, Metric
from verl.workers.utils.losses import ppo_loss
from verl.workers.utils.padding import no_padding_2_padding

from echorl.core.config import EchoConfig
from echorl.core.loss import echo_loss_term, rl_agg_scale
from echorl.metric_names import LOSS

ECHO_MASK = "echo_mask"
ECHO_DENOM = "echo_denom"
ECHO_LOSS_METRIC = LOSS  # echo/loss (echorl.metric_names)


class EchoLoss:
    """verl actor loss callable: ``ppo_loss`` + ``coef * L_echo`` (see the module docstring).

    Args:
        actor_config: verl's ``ActorConfig`` dataclass (``omega_conf_to_dataclass(
            cfg.actor_rollout_ref.actor)``), passed to ``ppo_loss`` as verl does.
        echo_cfg: an :class:`EchoConfig` or a mapping of its fields (a Hydra ``echorl:`` node).

    Picklable (plain attributes, no closures), so it can be shipped to Ray workers through
    ``set_loss_fn``.
    """

    def __init__(self, actor_config: Any, echo_cfg: EchoConfig | Mapping[str, Any]):
        if not isinstance(echo_cfg, EchoConfig):
            echo_cfg = EchoConfig.from_dict(dict(echo_cfg))
        self.actor_config = actor_config
        self.echo_cfg = echo_cfg

    @property
    def adds_term(self) -> bool:
        """True when the EchoRL term is added (enabled, ``mode='loss'``, ``coef > 0``)."""
        return self.echo_cfg.adds_loss_term

    def __call__(self, model_output: dict, data: TensorDict, dp_group=None) -> tuple[torch.Tensor, dict]:
        """One micro-batch.

        Args:
            model_output: the engine's output; ``model_output["log_probs"]`` is the packed
                current-policy log-prob, a jagged nested tensor ``[b, prompt_len + response_len]``
                (or its ``[total_nnz]`` values), with grad.
            data: the micro-batch as verl hands it to the loss: every stored field of its rows
                (``prompts``, ``responses``, ``response_mask``, ``old_log_probs``, ``advantages``,
                ... nested ``[b, j]``), the EchoRL fields ``echo_mask`` (nested ``[b, j]`` bool,
                response-aligned) and ``echo_denom`` (``[b]`` float, the per-row ``D_b``), and the
                non-tensor ``dp_size``, ``batch_num_tokens``, ``global_batch_size``.
            dp_group: unused (no collectives), kept for the contract.

        Returns:
            ``(loss, metrics)``: exactly ``ppo_loss``'s when the term is off; otherwise its loss
            plus ``coef * scale * dp_size * L_echo`` (``scale`` is 1 unless ``echorl.follow_rl_agg``,
            :func:`echo_term`) and its metrics plus ``echo/loss``.
        """
        loss, metrics = ppo_loss(self.actor_config, model_output, data, dp_group)
        if not self.adds_term:
            return loss, metrics
        missing = [k for k in (ECHO_MASK, ECHO_DENOM) if k not in data.keys()]
        if missing:
            raise KeyError(
                f"EchoLoss: EchoRL is on (echorl.enable=true, mode=loss, coef={self.echo_cfg.coef}) but the "
                f"micro-batch lacks {missing}; the trainer stage did not write them. Launch through "
                "`python -m echorl.main` (EchoPPOTrainerSync), or set echorl.enable=false."
            )
        # Unpad exactly as ppo_loss does: log-probs through no_padding_2_padding, batch fields
        # through TensorDict.to_padded_tensor (both right-padded response-aligned [b, W]).
        log_prob = no_padding_2_padding(model_output["log_probs"], data)  # [b, W]
        term, scale = echo_term(log_prob, data, self.echo_cfg, self.actor_config)
        loss = loss + self.echo_cfg.coef * scale * term
        metrics[ECHO_LOSS_METRIC] = Metric(value=term.detach(), aggregation=AggregationType.SUM)
        return loss, metrics

    def __repr__(self) -> str:
        return f"EchoLoss(coef={self.echo_cfg.coef}, mode={self.echo_cfg.mode!r}, enable={self.echo_cfg.enable})"


def echo_term(log_prob: torch.Tensor, data: TensorDict, echo_cfg: EchoConfig, actor_config: Any
              ) -> tuple[torch.Tensor, float]:
    """The EchoRL term of one micro-batch, for every actor loss that adds it (EchoLoss, MethodLoss).

    Args:
        log_prob: ``[b, W] float`` current-policy response log-probs (``no_padding_2_padding``).
        data: the micro-batch (``echo_mask``, ``echo_denom``, ``dp_size``, ``batch_num_tokens``,
            ``global_batch_size``, ``response_mask``).
        echo_cfg: the options (``follow_rl_agg``).
        actor_config: verl's actor config (``loss_agg_mode``, ``loss_scale_factor``).

    Returns:
        ``(term, scale)``: ``term = dp_size * L_echo`` (scalar with grad; ``echo/loss`` reports it)
        and ``scale``, 1 unless ``echo_cfg.follow_rl_agg``
        (:func:`echorl.core.loss.rl_agg_scale` of the RL aggregation). The loss adds
        ``coef * scale * term``.
    """
    echo_mask = padded_response_field(data, ECHO_MASK, log_prob.shape[1])  # [b, W] bool
    term = echo_loss_term(log_prob, echo_mask, data[ECHO_DENOM]) * data["dp_size"]
    if not echo_cfg.follow_rl_agg:
        return term, 1.0
    rm = data["response_mask"]  # agg_loss's fallback factor is the padded width of this mask
    width = int(rm.offsets().diff().max()) if rm.is_nested else int(rm.shape[-1])
    scale = rl_agg_scale(actor_config.loss_agg_mode, data["batch_num_tokens"], data["global_batch_size"],
                         actor_config.loss_scale_factor, width)
    return term, scale


def padded_response_field(data: TensorDict, key: str, width: int) -> torch.Tensor:
    """A response-aligned field of a micro-batch as a right-padded ``[b, width]`` bool tensor.

    Nested (jagged) fields are padded the way ``ppo_loss`` pads ``response_mask``
    (``data.select(key).to_padded_tensor()``); dense ``[b, L]`` fields are taken as they are. The
    result is then right-padded with False or cut to ``width`` (the log-prob width), cutting only
    padding: a True beyond ``width`` is an error.
    """
    value = data[key]
    if value.is_nested:
        value = data.select(key).to_padded_tensor()[key]
    mask = value if value.dtype == torch.bool else value != 0
    if mask.dim() != 2:
        raise ValueError(f"{key} must be [b, L] response-aligned, got shape {list(mask.shape)}")
    cur = mask.shape[1]
    if cur < width:
        mask = F.pad(mask, (0, width - cur), value=False)
    elif cur > width:
        if mask[:, width:].any():
            raise ValueError(
                f"{key} marks tokens beyond the response length {width} of the log-probs; "
                "it is not aligned with response_mask"
            )
        mask = mask[:, :width]
    return mask
