"""Grouped-query attention without copying the keys and values (the engine's forwards).

transformers' ``sdpa`` attention repeats a GQA model's key/value heads (``repeat_kv``: a copy of
``[b, kv_heads * groups, T, d]``) whenever an attention mask is given, which is always the case
with padded batches; in a decode step that copy of the whole KV cache costs more than the
attention itself. ``torch.nn.functional.scaled_dot_product_attention(..., enable_gqa=True)``
reads the shared heads in place and gives bit-identical outputs on CPU
(``tests/local/test_attention.py``).

:func:`gqa_attention` switches a model using ``sdpa`` to this function for the duration of a
``with`` block (rollouts, old-policy pass, update) and back afterwards, so the model object is
unchanged for anyone else. Any other attention implementation is left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["GQA_SDPA", "gqa_sdpa_forward", "gqa_attention"]

GQA_SDPA = "echorl_sdpa_gqa"


def gqa_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa_attention_forward`` with ``enable_gqa=True`` instead of ``repeat_kv``.

    Args:
        query: ``[b, heads, q, d]``; key, value: ``[b, kv_heads, k, d]``; attention_mask: the
            ``sdpa`` mask (``[b, 1, q, k]`` bool) or ``None``.

    Returns:
        ``([b, q, heads, d], None)``.
    """
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = query.shape[2] > 1 and attention_mask is None and is_causal
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                           dropout_p=dropout, scale=scaling, is_causal=is_causal,
                                                           enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(GQA_SDPA, gqa_sdpa_forward)
    AttentionMaskInterface.register(GQA_SDPA, sdpa_mask)


@contextlib.contextmanager
def gqa_attention(model: Any) -> Iterator[Any]:
    """Run ``model`` with :func:`gqa_sdpa_forward` inside the block when it uses ``sdpa``."""
    cfg = getattr(model, "config", None)
    before = getattr(cfg, "_attn_implementation", None)
    if before != "sdpa":
        yield model
        return
    _register()
    cfg._attn_implementation = GQA_SDPA
    try:
        yield model
    finally:
        cfg._attn_implementation = before
