"""Policy gradient on the forking tokens only (Wang et al. 2025, "Beyond the 80/20 Rule", arXiv 2506.01939).

The method keeps the policy-gradient term of the top-``rho`` fraction of response tokens by
entropy and drops the rest (paper, Sec. 5.1, Eq. 6)::

    J = sum_i sum_t I[H_i,t >= tau] * min(r A, clip(r) A) / sum_i sum_t I[H_i,t >= tau]

``tau`` is the entropy threshold of the batch such that the kept tokens are the top ``rho`` of
its valid response tokens; ``H`` is the entropy of the policy being trained (Sec. 2.1, Eq. 1); the
normaliser counts the kept tokens only (Eq. 6, difference (ii)). ``rho = 0.2`` (Sec. 5.2).

The authors' code (github.com/Shenzhi-Wang/Beyond-the-80-20-Rule-RLVR at ``6f5dda6``,
``verl/trainer/ppo/core_algos.py`` lines 53-85) keeps exactly ``k = max(1, int(N * rho + 0.9999))``
of the ``N`` valid tokens with ``torch.topk``; :func:`forking_token_mask` keeps the same ``k`` and
breaks ties deterministically: among equal entropies the earlier token (row-major order) wins,
so the result never depends on the sort kernel. The paper's ``H >= tau`` would keep every tied
token at the threshold; with float entropies ties are rare and the two agree otherwise.

:func:`forking_pg_loss` is the aggregation of Eq. 6: the sum of the kept tokens' policy-gradient
losses over the kept-token count (a token mean over kept tokens), or over a count the host fixes
before the update. Facts, sources and the differences from the authors' code: ``docs/methods.md``,
"Forking tokens". Shapes follow :mod:`echorl.core`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from echorl.core.rl_zvp import _from_dict

__all__ = ["ForkingConfig", "forking_pg_loss", "forking_token_mask", "num_forking_tokens"]


@dataclass(frozen=True)
class ForkingConfig:
    """Options of the forking-token rule; the default is the paper's (``docs/methods.md``, "Forking tokens")."""

    rho: float = field(
        default=0.2,
        metadata={"help": "Fraction of the batch's valid response tokens, highest entropy first, whose policy "
                          "gradient is kept (paper Eq. 6; 0.2 its main setting; 1.0 keeps every token)."},
    )

    def __post_init__(self) -> None:
        v = self.rho
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v <= 1:
            raise ValueError(f"ForkingConfig.rho must be a number in (0, 1], got {v!r} "
                             "(0.2 keeps the top 20% highest-entropy tokens; 1.0 keeps all)")
        object.__setattr__(self, "rho", float(v))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, prefix: str = "forking") -> ForkingConfig:
        """Build from a plain mapping; unknown keys and bad values name the dotted key ``prefix.<key>``."""
        return _from_dict(cls, d, prefix)


def num_forking_tokens(num_valid: int, rho: float) -> int:
    """How many of ``num_valid`` tokens the rule keeps: ``max(1, int(num_valid * rho + 0.9999))`` (the
    authors' rounded-up count), 0 when there is no valid token."""
    if num_valid <= 0:
        return 0
    return min(num_valid, max(1, int(num_valid * rho + 0.9999)))


def forking_token_mask(entropy: torch.Tensor, response_mask: torch.Tensor, rho: float) -> torch.Tensor:
    """The forking tokens of a batch: ``[B, L] bool``, True on the kept tokens.

    entropy: ``[B, L] float`` token entropies of the policy (only valid positions are read);
    response_mask: ``[B, L]``; rho: fraction in (0, 1]. Keeps the ``num_forking_tokens(N, rho)``
    highest-entropy tokens among the ``N`` valid ones of the whole tensor; equal entropies are
    ranked by position (row-major), earlier first.
    """
    if entropy.dim() != 2 or response_mask.shape != entropy.shape:
        raise ValueError(f"entropy and response_mask must share one [B, L] shape, got "
                         f"{tuple(entropy.shape)} and {tuple(response_mask.shape)}")
    if not (isinstance(rho, (int, float)) and 0 < rho <= 1):
        raise ValueError(f"rho must be in (0, 1], got {rho!r}")
    m = response_mask.bool().flatten()
    pos = m.nonzero().flatten()  # [N] flat positions of the valid tokens, ascending
    vals = entropy.detach().flatten()[pos]
    if not torch.isfinite(vals).all():
        raise ValueError("entropy has NaN or inf at valid response positions; the forking rule needs finite entropies")
    k = num_forking_tokens(pos.numel(), rho)
    # a stable descending sort keeps equal entropies in ascending position order
    order = torch.sort(vals.to(torch.float64), descending=True, stable=True).indices[:k]
    out = torch.zeros_like(m)
    out[pos[order]] = True
    return out.view_as(response_mask)


def forking_pg_loss(pg_losses: torch.Tensor, keep: torch.Tensor, denominator: float | None = None) -> torch.Tensor:
    """Eq. 6's aggregation: ``sum(pg_losses * keep) / denominator`` (a scalar).

    pg_losses: ``[B, L] float`` per-token policy-gradient losses (already ``-min(r A, clip(r) A)``);
    keep: ``[B, L] bool`` from :func:`forking_token_mask` (valid tokens only). ``denominator``: None
    divides by this call's kept-token count (the authors' token mean over the kept tokens of the
    batch the loss sees); a host that splits a mini-batch into micro-batches passes the mini-batch's
    kept-token count, fixed before the update, so the sum over micro-batches is the same. A batch
    with no kept token gives 0 with a gradient path.
    """
    if pg_losses.shape != keep.shape or pg_losses.dim() != 2:
        raise ValueError(f"pg_losses and keep must share one [B, L] shape, got {tuple(pg_losses.shape)} and "
                         f"{tuple(keep.shape)}")
    k = keep.to(pg_losses.dtype)
    if denominator is None:
        denominator = float(keep.sum())
    elif not (isinstance(denominator, (int, float)) and denominator > 0):
        raise ValueError(f"denominator must be a positive count of kept tokens, got {denominator!r}")
    return (pg_losses * k).sum() / max(float(denominator), 1.0)
