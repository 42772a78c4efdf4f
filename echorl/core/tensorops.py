"""Small tensor helpers of the core that avoid hidden full-size copies."""

from __future__ import annotations

import torch


def count_true(m: torch.Tensor) -> torch.Tensor:
    """Row counts of a ``[B, L] bool`` tensor as ``[B] long``, without the ``[B, L]`` int64 copy that
    ``bool.sum(dim=1)`` makes: blocks of 128 are summed in uint8 (no overflow), then the blocks."""
    u8 = m.view(torch.uint8)
    L = u8.shape[1]
    main = (L // 128) * 128
    out = u8[:, :main].unflatten(1, (-1, 128)).sum(dim=2, dtype=torch.uint8).sum(dim=1)  # [B]
    return out + u8[:, main:].sum(dim=1) if main < L else out
