"""RL-ZVP: entropy-guided advantages for zero-variance prompts (Le et al. 2025, arXiv 2509.21880).

GRPO gives every rollout of a group whose rewards are all equal (a zero-variance prompt) the
advantage 0, so those rollouts give no gradient. RL-ZVP keeps GRPO's advantage on every other
group and gives the tokens of a zero-variance group (paper, Sec. 3.2, Eq. 5)::

    A(o_i,t) = alpha * H_i,t                          all rewards equal and R_i > 0 (positive prompt)
    A(o_i,t) = -alpha * (max_k H_i,k - H_i,t)         all rewards equal and R_i <= 0 (negative prompt)

``H_i,t`` is the entropy of the policy's next-token distribution at token ``t`` of response ``i``,
detached (footnote 3: a scalar factor, no gradient through it); ``max_k`` runs over the valid
tokens of the same response. The result is a per-token advantage that the base method's clipped
policy loss uses unchanged (Eq. 6). Defaults: ``alpha = 0.1`` (Sec. 4.3, Table 3).

The rule is split in two so that each host can call it where its data lives:

* :func:`zero_variance_signs` needs the whole group (the advantage stage): +1 for the rows of a
  positive prompt, -1 for a negative prompt, 0 otherwise;
* :func:`rl_zvp_shape` needs one row at a time (the entropy of the policy being trained exists in
  the loss): it replaces the advantages of the signed rows. It is row-local, so any split into
  micro-batches gives the same advantages.

:func:`rl_zvp_advantages` composes both for a host that has everything in one place. Facts,
sources and the differences from the authors' setting: ``docs/methods.md``, "RL-ZVP".
Shapes follow :mod:`echorl.core`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from echorl.core.clips import _group_codes

ZVP_SIGN = "zvp_sign"  # the batch field the hosts write (advantage stage) and the loss reads: [B] in {-1, 0, +1}

__all__ = ["ZVP_SIGN", "RlZvpConfig", "rl_zvp_advantages", "rl_zvp_shape", "zero_variance_signs"]


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True)
class RlZvpConfig:
    """Options of RL-ZVP; every default is the paper's (``docs/methods.md``, "RL-ZVP")."""

    alpha: float = _help(
        "Scale of the entropy-guided advantage on zero-variance prompts (paper Eq. 5; 0.1 is its setting, "
        "Table 3: 0.1 and 0.2 best, 0.05 and 0.3 worse).",
        default=0.1,
    )
    positive_above: float = _help(
        "A zero-variance group is positive when its common reward is > this (paper: R_i > 0), negative otherwise.",
        default=0.0,
    )
    tol: float = _help(
        "Rewards of a group within this of each other count as equal (zero variance), as echorl.tol.",
        default=1e-6,
    )

    def __post_init__(self) -> None:
        for name in ("alpha", "positive_above", "tol"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"RlZvpConfig.{name} must be a finite number, got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.alpha <= 0:
            raise ValueError(f"RlZvpConfig.alpha must be > 0 (it scales the shaped advantage; 0 is plain GRPO), "
                             f"got {self.alpha}")
        if self.tol < 0:
            raise ValueError(f"RlZvpConfig.tol must be >= 0, got {self.tol}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, prefix: str = "rl_zvp") -> RlZvpConfig:
        """Build from a plain mapping; unknown keys and bad values name the dotted key ``prefix.<key>``."""
        return _from_dict(cls, d, prefix)


def _from_dict(cls, d: Mapping[str, Any] | None, prefix: str):
    d = dict(d or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown key(s) {[f'{prefix}.{k}' for k in unknown]}; valid keys: {sorted(names)}")
    try:
        return cls(**d)
    except ValueError as e:
        raise ValueError(str(e).replace(f"{cls.__name__}.", f"{prefix}.")) from None


def zero_variance_signs(
    scores: torch.Tensor,
    group_ids: torch.Tensor | Sequence,
    response_mask: torch.Tensor,
    *,
    positive_above: float = 0.0,
    tol: float = 1e-6,
) -> torch.Tensor:
    """The zero-variance sign of every row: ``[B] long`` in {+1, -1, 0}.

    scores: ``[B] float`` outcome reward per rollout; group_ids: ``[B]`` integer tensor or a
    sequence of ``B`` hashable uids (the prompt of each rollout); response_mask: ``[B, L]`` (rows
    with no valid token are not members of their group and get 0). A group whose members' rewards
    lie within ``tol`` of each other is zero-variance; its rows get +1 when their reward is
    ``> positive_above`` and -1 otherwise. Every other row gets 0 (it keeps the base advantage).
    A group with one member has no variance to speak of and keeps its base advantage (sign 0; verl's
    GRPO gives such a row its raw reward).
    """
    if not torch.is_tensor(scores) or scores.dim() != 1:
        raise ValueError(f"scores must be a [B] tensor, got {getattr(scores, 'shape', type(scores).__name__)}")
    B = scores.shape[0]
    if not torch.is_tensor(response_mask) or response_mask.dim() != 2 or response_mask.shape[0] != B:
        raise ValueError(f"response_mask must be a [B={B}, L] tensor, got {getattr(response_mask, 'shape', None)}")
    if not torch.isfinite(scores).all():
        raise ValueError("scores has NaN or inf; every rollout needs a finite reward")
    device = scores.device
    if B == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    codes = _group_codes(group_ids, B, device)
    member = response_mask.bool().any(dim=1)  # [B]
    s = scores.to(torch.float64)
    G = int(codes.max()) + 1
    gcode = torch.where(member, codes, G)  # rows without tokens go to a dump bin
    gmin = torch.full((G + 1,), math.inf, dtype=torch.float64, device=device).scatter_reduce_(0, gcode, s, "amin")
    gmax = torch.full((G + 1,), -math.inf, dtype=torch.float64, device=device).scatter_reduce_(0, gcode, s, "amax")
    gsize = torch.bincount(gcode, minlength=G + 1)
    zero_var = ((gmax - gmin <= tol) & (gsize > 1))[codes] & member  # [B]
    sign = torch.where(s > positive_above, 1, -1)
    return torch.where(zero_var, sign, 0).long()


def rl_zvp_shape(
    advantages: torch.Tensor,
    signs: torch.Tensor,
    entropy: torch.Tensor,
    response_mask: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """Advantages with RL-ZVP's Eq. 5 on the signed rows: ``[B, L]``, same dtype as ``advantages``.

    advantages: ``[B, L] float`` the base method's (kept on rows with sign 0); signs: ``[B]`` from
    :func:`zero_variance_signs`; entropy: ``[B, L] float`` token entropies of the policy (detached
    here); response_mask: ``[B, L]``. On a row with sign +1 token ``t`` gets ``alpha * H_t``; with
    sign -1 it gets ``-alpha * (max_k H_k - H_t)``, the max over the row's valid tokens. Positions
    outside the mask get 0 on signed rows.
    """
    if advantages.dim() != 2 or entropy.shape != advantages.shape or response_mask.shape != advantages.shape:
        raise ValueError(f"advantages, entropy and response_mask must share one [B, L] shape, got "
                         f"{tuple(advantages.shape)}, {tuple(entropy.shape)}, {tuple(response_mask.shape)}")
    if signs.shape != advantages.shape[:1]:
        raise ValueError(f"signs must have shape [B]={list(advantages.shape[:1])}, got {list(signs.shape)}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    m = response_mask.bool()
    h = entropy.detach().to(torch.float64)
    if not torch.isfinite(h[m]).all():
        raise ValueError("entropy has NaN or inf at valid response positions; RL-ZVP needs finite token entropies")
    h = h.masked_fill(~m, 0.0)
    h_max = h.masked_fill(~m, -math.inf).amax(dim=1, keepdim=True).clamp_min(0.0)  # [B, 1]; 0 on empty rows
    pos = alpha * h
    neg = -alpha * (h_max - h)
    s = signs.to(advantages.device).view(-1, 1)
    shaped = torch.where(s > 0, pos, neg).masked_fill(~m, 0.0).to(advantages.dtype)
    return torch.where(s != 0, shaped, advantages)


def rl_zvp_advantages(
    advantages: torch.Tensor,
    scores: torch.Tensor,
    group_ids: torch.Tensor | Sequence,
    entropy: torch.Tensor,
    response_mask: torch.Tensor,
    cfg: RlZvpConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RL-ZVP's advantages for a whole batch: ``(advantages [B, L], signs [B] long)``.

    :func:`zero_variance_signs` then :func:`rl_zvp_shape`; shapes as there."""
    signs = zero_variance_signs(scores, group_ids, response_mask, positive_above=cfg.positive_above, tol=cfg.tol)
    return rl_zvp_shape(advantages, signs, entropy, response_mask, cfg.alpha), signs
