"""UFT: hint prefixes of the expert solution, annealed to zero (Liu et al. 2025, arXiv 2505.16984).

Rules (the authors' code, file by file: docs/methods.md):

* Segments: the expert solution (:func:`echorl.methods.luffy.expert_text`) is cut into pieces as
  UFT's data files are (``method.uft.segments=uft``: a piece ends after every line break and after
  every ``.`` followed by a space or tab; this reproduces the ``hint`` column of UFT's MATH file
  row for row) or into lines (``segments=lines``); ``m = min(max_segments, pieces)`` parts cut at
  ``sep_i = round(i / m * pieces)`` (``i = 0..m``, ``sep_m = pieces``) (:func:`hint_separations`).
* Schedule: UFT counts training steps from 1; at 0-based step ``s``, ``t = s + 1`` and
  ``p = lower + (upper - lower) * (1 + cos(pi t / T)) / 2`` for ``t <= T = hint_steps``, no hint
  after (:func:`hint_probability`).
* Sampling: per prompt, ``k ~ Binomial(m, p)`` (UFT: the sum of ``m`` Bernoulli draws) and the hint
  is the first ``sep_k`` pieces (:func:`sample_hint`), from a generator seeded with
  ``(seed, step)``; all ``n`` rollouts of the prompt share it.
* Layout: the hint tokens open the response, with ``response_mask = 0`` on them (like tool output
  in a multi-turn response) and ``hint_mask = 1``; the policy generates the rest. So the RL loss,
  the advantages' token set and EchoRL's selection (which reads ``response_mask``) never touch a
  hint token. The verifier reads the continuation only (UFT's hints never hold the answer it
  scores); ``method.uft.score_hint=true`` scores hint + continuation.
* Objective: the base RL loss on generated tokens plus ``coef * NLL(hint tokens)`` with a
  normaliser fixed before the update: the hint tokens of the batch per mini-batch
  (:func:`hint_denominator`), so the term is the mini-batch mean hint-token NLL for any
  micro-batch split.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import torch

from echorl.methods.config import UftConfig

__all__ = ["hint_probability", "hint_segments", "hint_separations", "sample_hint", "sample_hints", "hint_token_ids",
           "hint_denominator"]


_PIECE_END = re.compile(r"(?<=\n)|(?<=\.[ \t])")  # UFT's pieces end after a line break or ". " / ".\t"


def hint_probability(step: int, cfg: UftConfig) -> float:
    """The per-segment keep probability at 0-based training step ``step`` (UFT's step ``t = step + 1``;
    0 once ``t > hint_steps``)."""
    t = int(step) + 1
    if cfg.hint_steps <= 0 or t > cfg.hint_steps:
        return 0.0
    return cfg.lower_prob + 0.5 * (cfg.upper_prob - cfg.lower_prob) * (1.0 + math.cos(math.pi * t / cfg.hint_steps))


def hint_segments(text: str, mode: str = "uft") -> list[str]:
    """The solution's pieces (``"".join`` gives the text back): ``uft`` cuts after every line break and
    after every ``.`` followed by a space or tab, ``lines`` after every line break."""
    if mode == "lines":
        return text.splitlines(keepends=True)
    return [p for p in _PIECE_END.split(text) if p]


def hint_separations(num_lines: int, max_segments: int) -> list[int]:
    """Cut points ``[sep_0 = 0, ..., sep_m = num_lines]`` with ``m = min(max_segments, num_lines)``."""
    m = min(int(max_segments), int(num_lines))
    if m <= 0:
        return [0]
    sep = [round(i / m * num_lines) for i in range(m + 1)]
    sep[-1] = num_lines
    return sep


def sample_hint(text: str | None, step: int, cfg: UftConfig, rng: np.random.Generator) -> str:
    """The hint for one prompt at ``step``: the first ``sep_k`` lines, ``k ~ Binomial(m, p(step))``."""
    if not text:
        return ""
    lines = hint_segments(text, cfg.segments)
    sep = hint_separations(len(lines), cfg.max_segments)
    p = hint_probability(step, cfg)
    k = int(rng.binomial(len(sep) - 1, p)) if p > 0 and len(sep) > 1 else 0
    return "".join(lines[:sep[k]])


def step_rng(cfg: UftConfig, step: int) -> np.random.Generator:
    """The hint generator of one training step (same hints on resume)."""
    return np.random.default_rng([int(cfg.seed), int(step)])


def sample_hints(texts: Sequence[str | None], step: int, cfg: UftConfig) -> list[str]:
    """One hint per prompt of the step (``texts[i]`` the expert solution of prompt ``i`` or None)."""
    rng = step_rng(cfg, step)
    return [sample_hint(t, step, cfg, rng) for t in texts]


def hint_token_ids(hint: str, tokenizer, response_length: int) -> list[int]:
    """Token ids of a hint (no special tokens), at most ``response_length - 1`` of them: the hint opens
    the response and the policy must generate at least one token after it."""
    if not hint:
        return []
    return list(tokenizer(hint, add_special_tokens=False)["input_ids"])[:max(int(response_length) - 1, 0)]


def hint_denominator(hint_mask: torch.Tensor, num_minibatches: int) -> float:
    """Hint tokens of the whole batch per mini-batch (at least 1): the fixed normaliser of the NLL term."""
    return max(float(hint_mask.bool().sum()) / max(int(num_minibatches), 1), 1.0)
