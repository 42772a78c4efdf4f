"""UFT on verl 0.9: the hint opens the response as masked tokens.

The driver samples one hint per training prompt (:func:`echorl.methods.uft.sample_hints`, the cosine
schedule at the current step) and puts it on the prompt as the non-tensor field :data:`HINT_FIELD`
(validation prompts never carry one). :class:`UftAgentLoop` generates from ``prompt + hint`` and
returns ``response = hint + continuation`` with ``response_mask`` 0 on the hint (verl's convention
for tokens the policy did not generate, as tool output in multi-turn responses), so verl's policy
loss, its token counts and EchoRL's selection skip the hint. The reward loop scores the whole
response text (hint + continuation).

Driver side (:func:`hint_mask_of`): the hint tokens of a row are its leading response positions
with ``response_mask`` 0; :class:`echorl.verl.methods.VerlMethod` writes ``hint_mask`` and
``hint_denom`` for :class:`echorl.methods.luffy.MethodLoss`.
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import torch
from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

from echorl.methods.uft import hint_token_ids

HINT_FIELD = "echorl_uft_hint"
AGENT_NAME = "uft_agent"


def hint_mask_of(response_mask: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """``[B, L] bool``: the leading response positions with ``response_mask == 0`` (the hint).

    Args:
        response_mask: ``[B, L]`` (right-padded); attention: ``[B, L]`` 1 on real response tokens.
    """
    gen_seen = torch.cumsum((response_mask != 0).long(), dim=1) > 0  # at or after the first generated token
    return (~gen_seen) & (attention != 0)


class UftAgentLoop(SingleTurnAgentLoop):
    """verl's single-turn agent loop with UFT's hint (module docstring)."""

    async def run(self, sampling_params: dict[str, Any], priority: int = 0, **kwargs) -> AgentLoopOutput:
        hint = kwargs.get(HINT_FIELD) or ""
        if not hint:
            return await super().run(sampling_params, priority=priority, **kwargs)
        prompt_ids = await self.ct_build_initial_tokens(list(kwargs["raw_prompt"]))
        hint_ids = hint_token_ids(hint, self.tokenizer, self.response_length)
        params = dict(sampling_params)
        params["max_tokens"] = self.response_length - len(hint_ids)
        out = await self.server_manager.generate(request_id=uuid4().hex, prompt_ids=prompt_ids + hint_ids,
                                                 sampling_params=params, priority=int(priority))
        gen = list(out.token_ids)[: self.response_length - len(hint_ids)]
        logprobs = None
        if out.log_probs:
            logprobs = [0.0] * len(hint_ids) + list(out.log_probs)[: len(gen)]
        extra = dict(out.extra_fields or {})
        extra.update({"turn_scores": [], "tool_rewards": []})
        return AgentLoopOutput(
            prompt_ids=prompt_ids, response_ids=hint_ids + gen, response_mask=[0] * len(hint_ids) + [1] * len(gen),
            response_logprobs=logprobs, num_turns=2, metrics=AgentLoopMetrics(), extra_fields=extra,
        )
