"""The step-deletion test: does deleting high-entropy steps hurt more than deleting low ones?
(docs/analysis.md)

For each correct solution, a growing share of its *reasoning* steps is deleted in one of three
orders, the model finishes from the edited reasoning, and the task's verifier grades the result.

The rules, exactly:

* **Steps** are those of :func:`echorl.core.segment_steps` (newline boundaries, SPEC 2.1) and step
  entropy the ``step_agg`` aggregate of the old-policy token entropy (mean by default).
* **Deletion pool**: every step except the last one, the final-answer step (the task formats end
  with an ``Answer: ...`` line, which holds the EOS). With ``include_answer=True`` the last step is
  in the pool too. Solutions whose pool is empty (one step) are left out and counted.
* **How many**: deleting share ``q`` of a pool of ``n`` steps deletes ``k = floor(q * n + 1/2)``
  steps (round half up, computed exactly with fractions, so ``q = 0.5, n = 3`` gives 2 and
  ``q = 0.1, n = 4`` gives 0), clipped to ``[0, n]``.
* **Which**: ``highest`` deletes the ``k`` pool steps of highest step entropy (ties: the earlier
  step first), ``lowest`` the ``k`` lowest (ties: earlier first), ``random`` the first ``k`` of a
  seeded permutation of the pool (``numpy.random.default_rng([seed, solution_index])``). Each order
  is a fixed ranking of the pool, so the steps deleted at a larger share include those deleted at
  a smaller one.
* **Let the model finish**: the input is the prompt followed by the kept pool steps in their
  original order, token for token (each ends with its newline), and *nothing after them*: the
  answer step is removed (with ``include_answer``, when kept, it stays without its EOS) and the
  model regenerates the rest (greedy by default, or
  sampled at ``temperature``) up to EOS or ``max_new_tokens``. The graded text is the kept steps
  plus the continuation, decoded without special tokens. At share 0 this measures how often the
  model re-derives the right answer from its full reasoning (the baseline of every curve).

Greedy continuations of identical prefixes are computed once (share 0 is the same for every order,
and small pools give identical prefixes across orders). Run: ``echorl analyze deletion --help``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from echorl.analysis.entropy import Solution, generate

__all__ = ["ORDERS", "deletion_ranking", "num_deleted", "paired_bootstrap", "run_deletion",
           "step_token_spans"]

ORDERS = ("highest", "lowest", "random")


def num_deleted(share: float | str | Fraction, pool: int) -> int:
    """``floor(share * pool + 1/2)`` computed exactly, clipped to ``[0, pool]``.

    ``share`` is a fraction in ``[0, 1]`` (a float is read through its shortest decimal form, so
    ``0.3`` is exactly 3/10)."""
    q = share if isinstance(share, Fraction) else Fraction(str(share))
    if not 0 <= q <= 1:
        raise ValueError(f"deletion share must be in [0, 1], got {share}")
    if pool < 0:
        raise ValueError(f"pool size must be >= 0, got {pool}")
    return min(pool, max(0, math.floor(q * pool + Fraction(1, 2))))


def deletion_ranking(step_h: Sequence[float], order: str, seed: int = 0, solution_index: int = 0) -> list[int]:
    """Pool step indices in the order they get deleted.

    Args:
        step_h: ``[n]`` step entropies of the pool.
        order: ``highest`` (descending, ties to the earlier step), ``lowest`` (ascending, ties to
            the earlier step) or ``random`` (``default_rng([seed, solution_index]).permutation(n)``).
    """
    n = len(step_h)
    if order == "highest":
        return sorted(range(n), key=lambda i: (-float(step_h[i]), i))
    if order == "lowest":
        return sorted(range(n), key=lambda i: (float(step_h[i]), i))
    if order == "random":
        return [int(i) for i in np.random.default_rng([int(seed), int(solution_index)]).permutation(n)]
    raise ValueError(f"deletion order must be one of {list(ORDERS)}, got {order!r}")


def step_token_spans(profile: dict[str, Any]) -> list[tuple[int, int]]:
    """``[(start, end)]`` response-token spans of each step (steps are contiguous on an unmasked
    response, in order)."""
    spans, start = [], 0
    for n in profile["step_len"]:
        spans.append((start, start + int(n)))
        start += int(n)
    return spans


def _edited_prefix(sol: Solution, spans: Sequence[tuple[int, int]], pool: int, drop: set[int],
                   eos: set[int]) -> list[int]:
    """Prompt ids + the kept pool steps' tokens (steps after the pool, i.e. the answer step, removed;
    an EOS of a kept last step dropped, so the model can go on)."""
    kept = [t for k in range(pool) if k not in drop for t in sol.response_ids[spans[k][0]:spans[k][1]] if t not in eos]
    return list(sol.prompt_ids) + kept


def paired_bootstrap(a: np.ndarray, b: np.ndarray, reps: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile interval of ``mean(a - b)`` resampling solutions (``a``, ``b``: ``[N]``)."""
    if a.size == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(reps, a.size))
    d = (a[idx] - b[idx]).mean(axis=1)
    return [float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))]


def run_deletion(model: Any, tokenizer: Any, solutions: Sequence[Solution], profiles: Sequence[dict[str, Any]],
                 rows: Sequence[dict[str, Any]], grade_fn: Callable[[dict[str, Any], str], float], *,
                 shares: Sequence[float], orders: Sequence[str] = ORDERS, seeds: Sequence[int] = (0, 1, 2, 3, 4),
                 include_answer: bool = False, temperature: float = 0.0, max_new_tokens: int = 128,
                 eos_ids: Sequence[int], pad_id: int, batch_size: int = 16, seed: int = 0) -> dict[str, Any]:
    """Run the test on ``solutions`` (with their :func:`~echorl.analysis.entropy.profile_solutions`).

    Returns a JSON-ready dict: ``shares``, ``settings``, ``solutions`` (used), ``skipped_one_step``,
    per order ``accuracy[share]`` (for ``random``: ``accuracy`` is the mean over seeds, with
    ``seed_accuracy[seed][share]``, ``seed_sd``, ``seed_min``, ``seed_max``), ``realized_share[share]``
    (mean of ``k / n``), and ``gaps``: per share, mean accuracy difference and a paired bootstrap
    95% interval for ``random - highest`` and ``lowest - highest``.
    """
    for o in orders:
        if o not in ORDERS:
            raise ValueError(f"deletion order must be one of {list(ORDERS)}, got {o!r}")
    shares = [float(s) for s in shares]
    for s in shares:
        num_deleted(s, 0)  # validates the range
    eos = set(int(e) for e in eos_ids)
    keep = [i for i, p in enumerate(profiles) if p["num_steps"] - (0 if include_answer else 1) >= 1]
    variants = [(o, sd) for o in orders for sd in (seeds if o == "random" else (None,))]
    jobs: dict[tuple[int, ...], int] = {}  # prefix key -> a solution it belongs to
    plan: dict[tuple[str, Any, int, int], tuple[tuple[int, ...], int]] = {}  # (order, seed, share_i, sol) -> prefix, k
    for i in keep:
        sol, prof = solutions[i], profiles[i]
        pool = prof["num_steps"] - (0 if include_answer else 1)
        spans = step_token_spans(prof)
        for o, sd in variants:
            rank = deletion_ranking(prof["step_h"][:pool], o, sd or 0, i)
            for j, s in enumerate(shares):
                k = num_deleted(s, pool)
                prefix = tuple(_edited_prefix(sol, spans, pool, set(rank[:k]), eos))
                # greedy: one continuation per distinct prefix; sampled: one per (variant, share, solution)
                key = prefix if temperature == 0 else prefix + (-1, len(plan))
                jobs.setdefault(key, i)
                plan[(o, sd, j, i)] = (key, k)
    keys = list(jobs)
    prefixes = [list(k if temperature == 0 else k[:-2]) for k in keys]
    conts = generate(model, prefixes, eos_ids=eos_ids, pad_id=pad_id, max_new_tokens=max_new_tokens,
                     temperature=temperature, batch_size=batch_size, seed=seed)
    result_of = {}
    for key, pre, cont in zip(keys, prefixes, conts):
        sol = solutions[jobs[key]]
        text = tokenizer.decode(pre[len(sol.prompt_ids):] + cont, skip_special_tokens=True)
        result_of[key] = float(grade_fn(rows[sol.row], text) >= 1.0)

    def outcomes(o: str, sd: Any) -> np.ndarray:  # [shares, solutions] 0/1
        return np.array([[result_of[plan[(o, sd, j, i)][0]] for i in keep] for j in range(len(shares))]).reshape(len(shares), len(keep))

    res: dict[str, Any] = {"shares": shares, "solutions": len(keep), "skipped_one_step": len(profiles) - len(keep),
                           "continuations": len(keys), "orders": {}, "gaps": {}}
    if not keep:  # nothing to delete from: no curves
        return res
    per: dict[str, np.ndarray] = {}
    for o in orders:
        if o == "random":
            acc = np.stack([outcomes(o, sd) for sd in seeds])  # [seeds, shares, N]
            seed_acc = acc.mean(axis=2)  # [seeds, shares]
            per[o] = acc.mean(axis=0)  # per-solution success rate over seeds
            res["orders"][o] = {"accuracy": seed_acc.mean(axis=0).tolist(),
                                "seed_accuracy": {str(sd): seed_acc[n].tolist() for n, sd in enumerate(seeds)},
                                "seed_sd": seed_acc.std(axis=0, ddof=1).tolist() if len(seeds) > 1 else [0.0] * len(shares),
                                "seed_min": seed_acc.min(axis=0).tolist(), "seed_max": seed_acc.max(axis=0).tolist()}
        else:
            per[o] = outcomes(o, None)
            res["orders"][o] = {"accuracy": per[o].mean(axis=1).tolist()}
        pools = [profiles[i]["num_steps"] - (0 if include_answer else 1) for i in keep]
        res["orders"][o]["realized_share"] = [float(np.mean([num_deleted(s, n) / n for n in pools])) if pools else float("nan")
                                              for s in shares]
    if "highest" in per:
        for other in ("random", "lowest"):
            if other in per:
                res["gaps"][f"{other}-highest"] = [
                    {"mean": float((per[other][j] - per["highest"][j]).mean()) if keep else float("nan"),
                     "ci95": paired_bootstrap(per[other][j], per["highest"][j], seed=seed)} for j in range(len(shares))]
    return res
