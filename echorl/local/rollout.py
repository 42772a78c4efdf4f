"""Prompt encoding and rollouts with transformers ``generate`` (issue 4, item 1).

Layout (verl's): prompts left-padded to the batch's longest prompt, responses right-padded;
``response_mask`` is 1 up to and including the first EOS and 0 after it. Each prompt is repeated
``n`` times consecutively (``repeat_interleave``, as verl does), so rows of one group are adjacent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

__all__ = ["RolloutBatch", "format_prompts", "encode_prompts", "generate_rollouts", "response_mask_from_eos",
           "eos_ids_of"]


@dataclass
class RolloutBatch:
    """One step's rollouts.

    Attributes:
        prompts: ``[B, P] long`` left-padded prompt ids.
        responses: ``[B, L] long`` right-padded response ids (pad id after the mask ends).
        input_ids: ``[B, P+L] long`` = ``cat(prompts, responses)``.
        attention_mask: ``[B, P+L] long``.
        response_mask: ``[B, L] long``, 1 up to and including EOS.
        group_index: ``[B] long`` prompt index in the step (the uid of its group).
    """

    prompts: torch.Tensor
    responses: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    group_index: torch.Tensor


def format_prompts(tokenizer: Any, prompts: Sequence[str], chat_template: str | bool) -> list[str]:
    """Apply the chat template (``auto``: when the tokenizer has one; ``true``: required).

    Raises:
        ValueError: ``chat_template`` is true and the tokenizer has none.
    """
    has = bool(getattr(tokenizer, "chat_template", None))
    mode = str(chat_template).lower()
    if mode not in ("auto", "true", "false"):
        raise ValueError(f"data.chat_template must be auto, true or false, got {chat_template!r}")
    if mode == "true" and not has:
        raise ValueError(
            f"data.chat_template=true but the tokenizer ({type(tokenizer).__name__}, "
            f"{getattr(tokenizer, 'name_or_path', '?')!r}) has no chat template; set data.chat_template=false to "
            "feed the raw prompt text, or use a model whose tokenizer defines one")
    if mode == "false" or not has:
        return list(prompts)
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts]


def encode_prompts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt text (no special tokens added beyond what the text holds)."""
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _left_pad(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    P = max(len(x) for x in ids)
    out = torch.full((len(ids), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), P), dtype=torch.long)
    lens = torch.tensor([len(x) for x in ids])
    flat = torch.tensor([t for x in ids for t in x], dtype=torch.long)
    cols = torch.arange(P).expand(len(ids), P)
    keep = cols >= (P - lens).unsqueeze(1)  # [N, P] valid (right-aligned) positions
    out[keep] = flat
    mask[keep] = 1
    return out, mask


def eos_ids_of(tokenizer: Any, model: Any) -> list[int]:
    """EOS ids: the tokenizer's plus the model generation config's (deduplicated)."""
    ids: list[int] = []
    for src in (getattr(tokenizer, "eos_token_id", None), getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if src is None:
            continue
        ids.extend(src if isinstance(src, (list, tuple)) else [src])
    if not ids:
        raise ValueError(f"the tokenizer {type(tokenizer).__name__} and the model define no EOS token; "
                         "responses could never end: set tokenizer.eos_token")
    return sorted(set(int(i) for i in ids))


def response_mask_from_eos(responses: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """``[B, L] long``: 1 up to and including the first EOS of each row, 0 after it."""
    is_eos = torch.isin(responses, torch.tensor(list(eos_ids), device=responses.device))
    eos_before = is_eos.long().cumsum(-1) - is_eos.long()  # EOS strictly before position t
    return (eos_before == 0).long()


@torch.no_grad()
def generate_rollouts(model: Any, tokenizer: Any, prompt_ids: Sequence[Sequence[int]], *, n: int,
                      max_response_length: int, temperature: float, top_p: float, top_k: int,
                      eos_ids: Sequence[int], pad_id: int) -> RolloutBatch:
    """Sample ``n`` responses per prompt with ``model.generate``.

    Args:
        prompt_ids: token ids of each prompt (``N`` prompts); the batch has ``B = N * n`` rows.
        top_k: ``-1`` or ``0`` disables top-k.
    """
    prompts, pmask = _left_pad(prompt_ids, pad_id)  # [N, P]
    prompts = prompts.repeat_interleave(n, dim=0)  # [B, P]
    pmask = pmask.repeat_interleave(n, dim=0)
    was_training = model.training
    model.eval()
    out = model.generate(
        input_ids=prompts, attention_mask=pmask, do_sample=True, temperature=temperature, top_p=top_p,
        top_k=top_k if top_k and top_k > 0 else 0, max_new_tokens=max_response_length, eos_token_id=list(eos_ids),
        pad_token_id=pad_id, use_cache=True, num_beams=1, min_new_tokens=0)
    model.train(was_training)
    P = prompts.shape[1]
    responses = out[:, P:]  # [B, L'] with L' <= max_response_length
    if responses.shape[1] == 0:
        responses = torch.full((prompts.shape[0], 1), pad_id, dtype=torch.long)
    rmask = response_mask_from_eos(responses, eos_ids)
    responses = torch.where(rmask.bool(), responses, torch.full_like(responses, pad_id))
    attention_mask = torch.cat([pmask, rmask], dim=1)
    group_index = torch.arange(len(prompt_ids)).repeat_interleave(n)
    return RolloutBatch(prompts=prompts, responses=responses, input_ids=torch.cat([prompts, responses], dim=1),
                        attention_mask=attention_mask, response_mask=rmask, group_index=group_index)
