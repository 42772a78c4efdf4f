"""The engine's rollouts: :func:`compact_decode` (the default) or transformers ``generate``.

Layout (verl's, as :mod:`echorl.generation`): prompts left-padded to the batch's longest prompt,
responses right-padded; ``response_mask`` is 1 up to and including the first EOS and 0 after it.
Each prompt is repeated ``n`` times consecutively (``repeat_interleave``, as verl does), so rows of
one group are adjacent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from echorl.generation import generate_left_padded, left_pad, response_mask_from_eos
from echorl.models.attention import gqa_attention

__all__ = ["RolloutBatch", "generate_rollouts", "compact_decode", "compact_decode_supported"]


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


# Generation-config fields that add a logits processor the compact decode loop does not apply; a
# model whose generation_config sets one of them is sampled with ``model.generate`` instead.
_UNSUPPORTED_GEN_FIELDS = {
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "min_length": 0, "min_new_tokens": None,
    "min_p": None, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "top_h": None,
    "guidance_scale": None, "sequence_bias": None, "suppress_tokens": None, "begin_suppress_tokens": None,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "exponential_decay_length_penalty": None,
    "renormalize_logits": False, "watermarking_config": None, "remove_invalid_values": False,
}


def compact_decode_supported(model: Any) -> str | None:
    """``None`` when :func:`compact_decode` samples exactly as ``model.generate`` would; else the reason."""
    if getattr(model.config, "is_encoder_decoder", False):
        return "encoder-decoder model"
    gc = getattr(model, "generation_config", None)
    for key, default in _UNSUPPORTED_GEN_FIELDS.items():
        value = getattr(gc, key, default)
        if value is not None and value != default and not (key == "min_length" and value == 0):
            return f"generation_config.{key}={value!r}"
    return None


def _warp(scores: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The sampling warpers ``generate`` applies, in its order (temperature, top-k, top-p)."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    if temperature != 1.0:
        scores = scores / temperature
    if top_k and top_k > 0:
        scores = TopKLogitsWarper(top_k=top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p=top_p)(None, scores)
    return scores


@torch.no_grad()
def compact_decode(model: Any, prompts: torch.Tensor, pmask: torch.Tensor, *, n: int, max_new_tokens: int,
                   temperature: float, top_p: float, top_k: int, eos_ids: Sequence[int], pad_id: int) -> torch.Tensor:
    """Sample like ``model.generate(do_sample=True)``, computing only unfinished rows.

    ``generate`` runs every row through the model until the last one ends. Here the prompt is
    prefilled once per distinct prompt and its KV cache repeated ``n`` times, and rows that emitted
    an EOS are dropped from the cache, so each decode step costs the unfinished rows only. Sampling
    is unchanged: the logits of every row, finished or not, go through the same warpers and one
    ``torch.multinomial`` over the full ``[B, V]`` batch (finished rows keep their last logits and
    their draw is replaced by the pad id, as ``generate`` does), so the random stream and the tokens
    equal ``generate``'s at the same seed (up to float differences of batch-size-dependent kernels).

    Args:
        prompts: ``[N, P] long`` left-padded distinct prompts; pmask: ``[N, P]``.
        n: rows per prompt (the batch is ``B = N * n``, rows of a prompt adjacent).

    Returns:
        ``[B, P + T] long``: prompts then ``T <= max_new_tokens`` generated tokens (pad after EOS).
    """
    from transformers import DynamicCache

    N, P = prompts.shape
    if max_new_tokens < 1:
        raise ValueError(f"data.max_response_length must be >= 1, got {max_new_tokens}")
    B = N * n
    dev = prompts.device
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=dev)
    pos = (pmask.long().cumsum(-1) - 1).masked_fill(pmask == 0, 0)  # generate's position ids
    cache = DynamicCache(config=model.config)
    out = model(input_ids=prompts, attention_mask=pmask, position_ids=pos, past_key_values=cache, use_cache=True,
                logits_to_keep=1)
    cache = out.past_key_values
    if n > 1:
        cache.batch_repeat_interleave(n)
    scores = out.logits[:, -1, :].float().repeat_interleave(n, dim=0)  # [B, V]
    attn = pmask.repeat_interleave(n, dim=0)  # [B, P + t]
    last_pos = pos[:, -1].repeat_interleave(n, dim=0)  # [B]
    tokens: list[torch.Tensor] = []
    unfinished = torch.ones(B, dtype=torch.bool, device=dev)
    live = torch.arange(B, device=dev)  # rows held in the cache, in cache order
    for t in range(max_new_tokens):
        probs = torch.softmax(_warp(scores, temperature, top_k, top_p), dim=-1)
        nxt = torch.multinomial(probs, num_samples=1).squeeze(1)  # [B]
        nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad_id))
        tokens.append(nxt)
        unfinished &= ~torch.isin(nxt, eos)
        if not bool(unfinished.any()) or t == max_new_tokens - 1:
            break
        attn = torch.cat([attn, torch.ones(B, 1, dtype=attn.dtype, device=dev)], dim=1)
        last_pos = last_pos + 1
        keep = unfinished[live]
        if not bool(keep.all()):  # drop finished rows from the cache
            live = live[keep]
            cache.batch_select_indices(keep.nonzero().squeeze(1))
        out = model(input_ids=nxt[live, None], attention_mask=attn[live], position_ids=last_pos[live, None],
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        scores[live] = out.logits[:, -1, :].float()
    return torch.cat([prompts.repeat_interleave(n, dim=0), torch.stack(tokens, dim=1)], dim=1)


@torch.no_grad()
def generate_rollouts(model: Any, tokenizer: Any, prompt_ids: Sequence[Sequence[int]], *, n: int,
                      max_response_length: int, temperature: float, top_p: float, top_k: int,
                      eos_ids: Sequence[int], pad_id: int, decode: str = "compact") -> RolloutBatch:
    """Sample ``n`` responses per prompt.

    Args:
        prompt_ids: token ids of each prompt (``N`` prompts); the batch has ``B = N * n`` rows.
        top_k: ``-1`` or ``0`` disables top-k.
        decode: ``compact`` (:func:`compact_decode`; falls back to ``generate`` for a model whose
            generation config adds other logits processors) or ``generate``
            (:func:`echorl.generation.generate_left_padded`).
    """
    if decode not in ("compact", "generate"):
        raise ValueError(f"generate_rollouts: decode must be 'compact' or 'generate', got {decode!r}")
    top_k = top_k if top_k and top_k > 0 else 0
    if decode == "compact" and compact_decode_supported(model) is None:
        prompts1, pmask1 = left_pad(prompt_ids, pad_id)  # [N, P]
        prompts, pmask = prompts1.repeat_interleave(n, dim=0), pmask1.repeat_interleave(n, dim=0)  # [B, P]
        was_training = model.training
        model.eval()
        dev = next(model.parameters()).device  # sampling runs there; the batch comes back to the CPU
        with gqa_attention(model):  # no copy of the KV cache per step for GQA models
            out = compact_decode(model, prompts1.to(dev), pmask1.to(dev), n=n, max_new_tokens=max_response_length,
                                 temperature=temperature, top_p=top_p, top_k=top_k, eos_ids=eos_ids, pad_id=pad_id)
        model.train(was_training)
        responses = out.cpu()[:, prompts.shape[1]:]  # [B, L'] with L' <= max_response_length
    else:
        gen = generate_left_padded(model, prompt_ids, eos_ids=eos_ids, pad_id=pad_id, max_new_tokens=max_response_length,
                                   temperature=temperature, top_p=top_p, top_k=top_k, n=n, min_new_tokens=0)
        prompts, pmask, responses = gen.prompts, gen.prompt_mask, gen.responses
    if responses.shape[1] == 0:
        responses = torch.full((prompts.shape[0], 1), pad_id, dtype=torch.long)
    rmask = response_mask_from_eos(responses, eos_ids)
    responses = torch.where(rmask.bool(), responses, torch.full_like(responses, pad_id))
    attention_mask = torch.cat([pmask, rmask], dim=1)
    group_index = torch.arange(len(prompt_ids)).repeat_interleave(n)
    return RolloutBatch(prompts=prompts, responses=responses, input_ids=torch.cat([prompts, responses], dim=1),
                        attention_mask=attention_mask, response_mask=rmask, group_index=group_index)
