"""Shared pieces of the LUFFY/UFT tests (imported by name: ``from methods_support import ...``):
verl's real actor config and micro-batches in the layout the embedded engine hands to the loss
(dense ``[b, L]`` fields, packed log-probs)."""

from __future__ import annotations

import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
LOCAL_TESTS = os.path.join(os.path.dirname(HERE), "local")
if LOCAL_TESTS not in sys.path:  # make_model / base_overrides of the engine tests
    sys.path.insert(0, LOCAL_TESTS)
from engine_support import base_overrides, make_model  # noqa: E402,F401  (the engine tests' tiny model and config)


def actor_config(*overrides: str):
    """verl's FSDPActorConfig from local.yaml (+ overrides), as the engine builds it."""
    from echorl.local.config import build_actor_config, load_config

    return build_actor_config(load_config(list(overrides)))


def micro_batch(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                response_mask: torch.Tensor, prompt_len: int = 2, **fields: torch.Tensor):
    """``(model_output, data)`` for one micro-batch of ``b`` rows: the packed log-probs are a function
    of the leaf ``log_prob [b, L]``; ``batch_num_tokens`` = valid tokens of the micro-batch."""
    from echorl.local.update import build_micro_batch
    from echorl.logprobs import pack_for_verl

    b, L = log_prob.shape
    prompts = torch.ones(b, prompt_len, dtype=torch.long)
    responses = torch.full((b, L), 2, dtype=torch.long)
    attn = torch.cat([torch.ones(b, prompt_len, dtype=torch.long), torch.ones(b, L, dtype=torch.long)], dim=1)
    batch = {"prompts": prompts, "responses": responses, "input_ids": torch.cat([prompts, responses], 1),
             "attention_mask": attn, "response_mask": response_mask.long(), "old_log_probs": old_log_prob,
             "advantages": advantages, **fields}
    data = build_micro_batch(torch.arange(b), batch, batch_num_tokens=int(response_mask.sum()),
                             global_batch_size=b, temperature=1.0)
    return {"log_probs": pack_for_verl(log_prob, attn, prompt_len)}, data
