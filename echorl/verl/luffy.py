"""LUFFY on verl 0.9: the expert trace enters the group as one of its ``n`` sessions.

verl's agent-loop worker runs one agent loop per session ``i = 0..n-1`` of a prompt and passes the
dataset row's fields (``target`` included) and ``session_id`` to ``run``. :class:`LuffyAgentLoop`
is verl's single-turn loop, except that in training (the driver marks training prompts with
:data:`TRAIN_FLAG`, validation prompts never carry it) sessions ``i < method.luffy.num_off_policy``
of a row with an expert solution return the tokenised trace instead of generating
(:func:`echorl.methods.luffy.expert_trace_ids`). The trace goes through verl's reward loop like any
rollout, and verl's estimator sees it in its uid group.

Driver side (:func:`off_policy_rows_of`): a row is off-policy when its session (from its
TransferQueue key ``{uid}_{session}_{index}``) is below ``num_off_policy`` and its prompt had a
trace when it was submitted; :class:`echorl.verl.methods.VerlMethod` writes the ``off_policy``
field that :class:`echorl.methods.luffy.MethodLoss` reads, and empties those rows for EchoRL.

Behaviour log-probs: no rollout engine sampled a trace, so the agent loop can only give expert
tokens placeholder ``rollout_log_probs`` (0.0). :func:`align_expert_rollout` is the driver step that
keeps verl's rollout checks off them once the actor's old-policy pass has run: the expert rows'
``rollout_log_probs`` become their ``old_log_probs`` (rollout/actor ratio exactly 1: verl's rollout
rejection sampling never drops an expert token and its IS weight is 1), and verl's rollout-vs-actor
metrics (``training/rollout_*``) are recomputed over the policy's own rows
(:meth:`echorl.verl.methods.VerlMethod.expert_rollout_fields`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from verl import DataProto
from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop
from verl.utils.debug.metrics import calculate_debug_metrics

from echorl.methods.config import MethodConfig
from echorl.methods.luffy import expert_text, expert_trace_ids

TRAIN_FLAG = "echorl_train"  # non-tensor field on training prompts (absent in validation)
AGENT_NAME = "luffy_agent"


def session_of(key: str) -> int:
    """The session id of a TransferQueue row key ``{uid}_{session}_{index}``."""
    parts = str(key).rsplit("_", 2)
    if len(parts) != 3:
        raise ValueError(f"unexpected TransferQueue row key {key!r}; verl's agent loop writes '{{uid}}_{{session}}_{{index}}'")
    return int(parts[1])


def off_policy_rows_of(keys: Sequence[str], uids: Sequence[str], has_trace: dict[str, bool],
                       num_off_policy: int, is_padding: Sequence[bool] | None = None) -> torch.Tensor:
    """``[B] bool``: the rows :class:`LuffyAgentLoop` filled with an expert trace (never a padding row)."""
    pad = list(is_padding) if is_padding is not None else [False] * len(keys)
    return torch.tensor([not p and bool(has_trace.get(str(u), False)) and session_of(k) < num_off_policy
                         for k, u, p in zip(keys, uids, pad)], dtype=torch.bool)


def align_expert_rollout(rollout_log_probs: torch.Tensor, old_log_probs: torch.Tensor, response_mask: torch.Tensor,
                         responses: torch.Tensor, off: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Expert rows out of verl's rollout checks (module docstring).

    Args:
        rollout_log_probs, old_log_probs, response_mask, responses: ``[B, L]`` padded.
        off: ``[B] bool`` expert rows.

    Returns:
        ``rollout_log_probs`` with the expert rows' values replaced by ``old_log_probs`` (``[B, L]``),
        and verl's ``calculate_debug_metrics`` over the rows that are not expert rows (empty when
        there are none).
    """
    aligned = torch.where(off[:, None], old_log_probs, rollout_log_probs)
    own = response_mask * (~off)[:, None].to(response_mask.dtype)
    if not bool(own.any()):
        return aligned, {}
    data = DataProto.from_dict({"rollout_log_probs": rollout_log_probs, "old_log_probs": old_log_probs,
                                "response_mask": own, "responses": responses})
    return aligned, {k: float(v) for k, v in calculate_debug_metrics(data).items()}


class LuffyAgentLoop(SingleTurnAgentLoop):
    """verl's single-turn agent loop with LUFFY's off-policy sessions (module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.method_cfg = MethodConfig.from_dict(_plain(self.config.get("method")))

    async def run(self, sampling_params: dict[str, Any], priority: int = 0, **kwargs) -> AgentLoopOutput:
        text = expert_text(kwargs)
        session = int(kwargs.get("session_id", 0))
        if not (kwargs.get(TRAIN_FLAG) and text and session < self.method_cfg.luffy.num_off_policy):
            return await super().run(sampling_params, priority=priority, **kwargs)
        prompt_ids = await self.ct_build_initial_tokens(list(kwargs["raw_prompt"]))
        ids = expert_trace_ids(text, self.tokenizer, max_target_length=self.method_cfg.luffy.max_target_length,
                               eos_id=self.tokenizer.eos_token_id, response_length=self.response_length)
        # no policy version produced the trace: tag it with the prompt's step (staleness 0), as
        # verl's server manager tags generated rows with their weight versions
        step = kwargs.get("global_steps")
        extra = {"turn_scores": [], "tool_rewards": [], "global_steps": step, "min_global_steps": step,
                 "max_global_steps": step}
        return AgentLoopOutput(
            prompt_ids=prompt_ids, response_ids=ids, response_mask=[1] * len(ids),
            response_logprobs=[0.0] * len(ids) if sampling_params.get("logprobs") else None,
            num_turns=2, metrics=AgentLoopMetrics(), extra_fields=extra,
        )


def _plain(node: Any) -> dict | None:
    if node is None:
        return None
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
