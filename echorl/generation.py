"""Generation with transformers: left-pad the prompts, then ``model.generate``.

The one place every sampler of the package goes through (the engine's ``decode=generate``
rollouts, the evaluation's transformers backend, the entropy analysis, the testbed model's regime
and success checks, verl's CPU rollout server). Layout (verl's): prompts left-padded to the
batch's longest prompt, responses right-padded, ``response_mask`` 1 up to and including the first
EOS and 0 after it; each prompt repeated ``n`` times consecutively (``repeat_interleave``), so the
rows of one group are adjacent. Seeding is the caller's: this module draws from torch's global RNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Generation", "left_pad", "eos_ids_of", "response_mask_from_eos", "sampling_kwargs", "generate_left_padded"]


def left_pad(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``N`` token lists -> ``(ids [N, P] long, mask [N, P] long)``, right-aligned (left padding),
    ``P`` the longest list's length."""
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
    """EOS ids: the tokenizer's plus the model generation config's (deduplicated, sorted)."""
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


def sampling_kwargs(temperature: float, top_p: float = 1.0, top_k: int = 0) -> dict[str, Any]:
    """``generate``'s sampling arguments: greedy (``do_sample=False``) at ``temperature == 0``, else
    sampling at ``temperature`` with nucleus ``top_p`` and ``top_k`` (``<= 0``: off, passed as 0 so
    the model's generation config cannot switch it on)."""
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if temperature == 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k if top_k and top_k > 0 else 0}


@dataclass
class Generation:
    """What :func:`generate_left_padded` returns (``B = N * n`` rows, on the CPU).

    Attributes:
        prompts: ``[B, P] long`` left-padded prompts; prompt_mask: ``[B, P] long``.
        responses: ``[B, L] long`` generated tokens as ``generate`` returned them (``L <=
            max_new_tokens``; after the first EOS, ``generate``'s pad id).
        response_mask: ``[B, L] long``, 1 up to and including the first EOS.
        output: ``generate``'s own return value (its ``scores`` / ``logits`` when asked for).
    """

    prompts: torch.Tensor
    prompt_mask: torch.Tensor
    responses: torch.Tensor
    response_mask: torch.Tensor
    output: Any


@torch.no_grad()
def generate_left_padded(model: Any, prompt_ids: Sequence[Sequence[int]], *, eos_ids: Sequence[int], pad_id: int,
                         max_new_tokens: int, temperature: float, top_p: float = 1.0, top_k: int = 0, n: int = 1,
                         **generate_kwargs: Any) -> Generation:
    """Left-pad ``N`` prompts, repeat each ``n`` times, and ``model.generate`` on the model's device.

    The model runs in eval mode and gets its previous mode back. ``temperature == 0`` decodes
    greedily (:func:`sampling_kwargs`). ``generate_kwargs`` go to ``generate`` as they are (e.g.
    ``output_scores=True, return_dict_in_generate=True``; ``min_new_tokens=0``).

    Args:
        prompt_ids: ``N`` token lists.
        eos_ids: ids that end a response; pad_id: the padding id of prompts and finished rows.
    """
    prompts1, pmask1 = left_pad(prompt_ids, pad_id)  # [N, P]
    prompts, pmask = prompts1.repeat_interleave(n, dim=0), pmask1.repeat_interleave(n, dim=0)  # [B, P]
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = model.generate(input_ids=prompts.to(dev), attention_mask=pmask.to(dev), max_new_tokens=max_new_tokens,
                             eos_token_id=list(eos_ids), pad_token_id=pad_id, use_cache=True, num_beams=1,
                             **sampling_kwargs(temperature, top_p, top_k), **generate_kwargs)
    finally:
        model.train(was_training)
    seqs = out if isinstance(out, torch.Tensor) else out.sequences
    responses = seqs[:, prompts.shape[1]:].cpu()  # [B, L]
    return Generation(prompts=prompts, prompt_mask=pmask, responses=responses,
                      response_mask=response_mask_from_eos(responses, eos_ids), output=out)
