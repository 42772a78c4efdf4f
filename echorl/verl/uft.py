"""UFT on verl 0.9: the hint opens the response as masked tokens.

The driver samples one hint per training prompt (:func:`echorl.methods.uft.sample_hints`, the cosine
schedule at the current step) and puts it on the prompt as the non-tensor field :data:`HINT_FIELD`
(validation prompts never carry one). :class:`UftAgentLoop` generates from ``prompt + hint`` and
returns ``response = hint + continuation`` with ``response_mask`` 0 on the hint (verl's convention
for tokens the policy did not generate, as tool output in multi-turn responses), so verl's policy
loss, its token counts and EchoRL's selection skip the hint. The reward loop scores the
continuation only (UFT's hints never hold the answer its verifier reads): the agent loop stores the
decoded continuation in the row's ``extra_fields`` (:data:`CONTINUATION_FIELD`; verl's ``naive`` and
``limited`` reward managers pass them to the reward function in ``extra_info``) and
:func:`echorl.verl.methods.configure` wraps the configured reward function in
:func:`continuation_score`, which scores that text. ``method.uft.score_hint=true`` scores the whole
response (hint + continuation).

Driver side (:func:`hint_mask_of`): the hint tokens of a row are its leading response positions
with ``response_mask`` 0; :class:`echorl.verl.methods.VerlMethod` writes ``hint_mask`` and
``hint_denom`` for :class:`echorl.methods.luffy.MethodLoss`.
"""

from __future__ import annotations

import functools
from typing import Any
from uuid import uuid4

import torch
from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop
from verl.utils.import_utils import load_extern_object
from verl.utils.reward_score import default_compute_score

from echorl.methods.uft import hint_token_ids

HINT_FIELD = "echorl_uft_hint"
AGENT_NAME = "uft_agent"
CONTINUATION_FIELD = "echorl_uft_continuation"  # extra field: the decoded text the policy generated
INNER_PATH, INNER_NAME = "echorl_inner_path", "echorl_inner_name"  # reward_kwargs naming the wrapped function
WRAPPER = ("pkg://echorl.verl.uft", "continuation_score")  # reward.custom_reward_function.path / name


@functools.lru_cache(maxsize=8)
def _inner_score_fn(path: str | None, name: str | None):
    if not path:
        return default_compute_score
    return load_extern_object(module_path=path, object_name=name)


def continuation_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                       **kwargs) -> Any:
    """verl reward function: the wrapped function (``reward_kwargs`` :data:`INNER_PATH` /
    :data:`INNER_NAME`; verl's default scorer when unset) on the row's generated continuation
    (``extra_info[CONTINUATION_FIELD]``, present on hinted rows) instead of ``solution_str``."""
    inner = _inner_score_fn(kwargs.pop(INNER_PATH, None), kwargs.pop(INNER_NAME, None))
    text = (extra_info or {}).get(CONTINUATION_FIELD)
    return inner(data_source=data_source, solution_str=solution_str if text is None else text,
                 ground_truth=ground_truth, extra_info=extra_info, **kwargs)


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
        extra.update({"turn_scores": [], "tool_rewards": [],
                      CONTINUATION_FIELD: self.tokenizer.decode(gen, skip_special_tokens=True)})
        return AgentLoopOutput(
            prompt_ids=prompt_ids, response_ids=hint_ids + gen, response_mask=[0] * len(hint_ids) + [1] * len(gen),
            response_logprobs=logprobs, num_turns=2, metrics=AgentLoopMetrics(), extra_fields=extra,
        )
