"""Advantages and the actor update, through verl's own estimators and loss.

* :func:`token_level_rewards`: verl's layout, the outcome score on the last valid response token.
* :func:`compute_advantages`: ``verl.trainer.ppo.core_algos.get_adv_estimator_fn(name)`` called
  with the keyword arguments verl's ``compute_advantage`` passes.
* :func:`actor_update`: mini-batches x PPO epochs x micro-batches; each micro-batch is a
  ``TensorDict`` in the layout verl's workers hand to the loss (``prompts``, ``responses``,
  ``attention_mask``, ``response_mask``, ``old_log_probs``, ``advantages``, the EchoRL fields, and
  ``dp_size``, ``batch_num_tokens`` (valid tokens of the mini-batch), ``global_batch_size`` (rows
  of the mini-batch), ``temperature``), and ``model_output["log_probs"]`` is packed as verl's
  engines pack it. The loss callable is :class:`echorl.loss.EchoLoss` (verl's ``ppo_loss``
  plus the EchoRL term): the same object the verl workers run. Each micro-batch loss is
  back-propagated unscaled (as verl's FSDP engine does); then grad-norm clip, AdamW step, and one
  scheduler step per training step (verl steps the scheduler after the last mini-batch).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict

from echorl.filtering import split_minibatches
from echorl.logprobs import bucketed_logprobs, model_device, pack_for_verl
from echorl.metric_names import actor_metric_name
from echorl.models.attention import gqa_attention

__all__ = ["token_level_rewards", "compute_advantages", "actor_update", "build_micro_batch"]


def token_level_rewards(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """``[B, L] float32``: ``scores[i]`` at the last valid position of row ``i``, 0 elsewhere.

    Args:
        scores: ``[B] float`` outcome rewards; response_mask: ``[B, L]`` (every row has >= 1 valid token).
    """
    B, L = response_mask.shape
    last = (response_mask.long().sum(-1) - 1).clamp(min=0)  # [B]
    out = torch.zeros(B, L, dtype=torch.float32)
    out[torch.arange(B), last] = scores.float() * (response_mask.sum(-1) > 0).float()
    return out


def compute_advantages(name: str, rewards: torch.Tensor, response_mask: torch.Tensor, uids: np.ndarray,
                       algo_cfg: Any) -> torch.Tensor:
    """Advantages ``[B, L]`` from verl's registered estimator ``name`` (``algorithm.adv_estimator``).

    Passes what verl's ``ray_trainer.compute_advantage`` passes: ``token_level_rewards``,
    ``response_mask``, ``index`` (uids), ``config``, and ``norm_adv_by_std_in_grpo`` to estimators
    that take it.
    """
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    fn = get_adv_estimator_fn(name)
    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = {"token_level_rewards": rewards, "response_mask": response_mask.float()}
    if "index" in params:
        kwargs["index"] = uids
    if "config" in params:
        kwargs["config"] = algo_cfg
    if "norm_adv_by_std_in_grpo" in params:
        kwargs["norm_adv_by_std_in_grpo"] = algo_cfg.norm_adv_by_std_in_grpo
    if "gamma" in params and "config" not in params:
        kwargs["gamma"] = algo_cfg.gamma
    advantages, _returns = fn(**kwargs)
    return advantages.float()


def build_micro_batch(rows: torch.Tensor, batch: dict[str, torch.Tensor], *, batch_num_tokens: int,
                      global_batch_size: int, temperature: float) -> TensorDict:
    """The ``data`` TensorDict verl's loss contract receives for micro-batch ``rows`` ([b] indices)."""
    from verl.utils import tensordict_utils as tu

    td = TensorDict({k: v[rows] for k, v in batch.items()}, batch_size=[len(rows)])
    tu.assign_non_tensor(td, dp_size=1, batch_num_tokens=int(batch_num_tokens),
                         global_batch_size=int(global_batch_size), temperature=float(temperature))
    return td


def _mean_metrics(per_mini: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for m in per_mini for k in m})
    return {k: float(np.mean([m[k] for m in per_mini if k in m])) for k in keys}


def actor_update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, loss_fn: Callable,
                 batch: dict[str, torch.Tensor], actor_cfg: Any, *, n: int, temperature: float,
                 generator: torch.Generator | None = None, with_entropy: bool = False) -> dict[str, float]:
    """One training step's actor update over the whole batch.

    Args:
        batch: CPU tensors (each micro-batch moves to the model's device): ``prompts [B, P]``,
            ``responses [B, L]``, ``input_ids [B, P+L]``, ``attention_mask [B, P+L]``,
            ``response_mask [B, L]``, ``old_log_probs [B, L]``, ``advantages [B, L]``, ``echo_mask
            [B, L] bool``, ``echo_denom [B] float32``, optionally ``echo_only [B] bool`` (rows kept
            for the EchoRL term only, with a zero ``response_mask``: the mini-batches are cut over
            the other rows and these are dealt over them, :func:`echorl.filtering.split_minibatches`).
        actor_cfg: verl's ``FSDPActorConfig`` (``ppo_mini_batch_size`` in prompts, as in verl).
        n: rollouts per prompt (mini-batch rows = ``ppo_mini_batch_size * n``).
        generator: shuffles the rows of each epoch when ``actor.shuffle`` is true.
        with_entropy: the loss reads the update forward's token entropy (``MethodConfig.needs_entropy``:
            RL-ZVP, forking tokens), as verl's ``calculate_entropy``; it is also computed for a
            nonzero ``entropy_coeff``.

    Returns:
        ``actor/*`` metrics averaged over mini-batches (``actor/pg_loss`` and the EchoRL loss summed
        over the micro-batches of a mini-batch, since they are globally normalised), plus
        ``actor/grad_norm`` and ``actor/lr``.
    """
    from verl.utils.metric import AggregationType, Metric

    batch = dict(batch)
    echo_only = batch.pop("echo_only", None)  # [B] bool rows for the EchoRL term only (echorl.filtering)
    B = batch["responses"].shape[0]
    P = batch["prompts"].shape[1]
    mini = actor_cfg.ppo_mini_batch_size * n
    micro = actor_cfg.ppo_micro_batch_size_per_gpu
    clip = actor_cfg.optim.clip_grad
    want_entropy = bool(actor_cfg.entropy_coeff) or with_entropy
    dev = model_device(model)  # the batch stays on the CPU; each micro-batch goes to the model
    model.train()
    per_mini: list[dict[str, float]] = []
    for _epoch in range(actor_cfg.ppo_epochs):
        order = torch.randperm(B, generator=generator) if actor_cfg.shuffle else torch.arange(B)
        for mrows in split_minibatches(order, echo_only, mini):
            n_tokens = int(batch["response_mask"][mrows].sum())  # kept rows have a zero RL mask
            n_rl = len(mrows) - (int(echo_only[mrows].sum()) if echo_only is not None else 0)
            acc: dict[str, list] = {}
            for u0 in range(0, len(mrows), micro):
                rows = mrows[u0:u0 + micro]
                data = build_micro_batch(rows, batch, batch_num_tokens=n_tokens, global_batch_size=n_rl,
                                         temperature=temperature).to(dev)
                am = batch["attention_mask"][rows].to(dev)
                # length buckets on their own columns: the same packed values as one full-width forward
                with gqa_attention(model):
                    log_prob, entropy = bucketed_logprobs(model, batch["input_ids"][rows], am, batch["responses"][rows],
                                                          temperature, with_entropy=want_entropy)
                output = {"log_probs": pack_for_verl(log_prob, am, P)}
                if entropy is not None:
                    output["entropy"] = pack_for_verl(entropy, am, P)
                loss, metrics = loss_fn(output, data)
                loss.backward()
                for k, v in metrics.items():
                    acc.setdefault(k, []).append(v)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=clip)
            finite = bool(torch.isfinite(grad_norm))
            if finite:
                optimizer.step()
            else:  # as verl's engines do: skip the update, but say so and count it
                warnings.warn(f"actor update skipped: gradient norm is {float(grad_norm)}", RuntimeWarning, stacklevel=2)
            optimizer.zero_grad(set_to_none=True)
            out: dict[str, float] = {"actor/grad_norm": float(grad_norm), "actor/skipped_updates": float(not finite)}
            for k, vals in acc.items():
                if isinstance(vals[0], Metric):
                    agg = vals[0].aggregation
                    flat = [x for v in vals for x in v.values]
                    out[actor_metric_name(k)] = float(np.sum(flat) if agg == AggregationType.SUM else np.mean(flat))
                elif isinstance(vals[0], (int, float)) or torch.is_tensor(vals[0]):
                    out[actor_metric_name(k)] = float(np.mean([float(v) for v in vals]))
            per_mini.append(out)
    scheduler.step()
    res = _mean_metrics(per_mini)
    res["actor/skipped_updates"] = float(sum(m["actor/skipped_updates"] for m in per_mini))  # a count, not a mean
    res["actor/lr"] = float(optimizer.param_groups[0]["lr"])
    return res
