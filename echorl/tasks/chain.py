"""Arithmetic chains with one hard step: the EchoRL testbed task (``data.task=chain``).

A problem is a chain of operations evaluated left to right. Exactly one of them is a
multiplication (the *hard* step: a two- or three-digit product); the others add or subtract one
digit, and every line starts by copying the previous result::

    prompt:   Left to right: 14+3*7-5+2
    solution: 14+3=17
              17*7=119
              119-5=114
              114+2=116
              Answer: 116

Five lines of unequal difficulty: copies and one-digit additions are easy, the product is hard.
The verifier is exact on the final ``Answer: N`` line (:func:`echorl.tasks.arithmetic.score`).

Splits (``split=``):

* ``train`` -- :data:`TRAIN` chains (4 operations), drawn from ``seed``; rows are unique by prompt
  and never equal a prompt of the held-out splits ``dev`` / ``test`` (the first
  :data:`HELDOUT_SIZE` prompts of each are excluded).
* ``dev``, ``test`` -- the same distribution, fixed: drawn from fixed seeds whatever ``seed`` says,
  unique by prompt, ``test`` disjoint from ``dev``. ``generate(n, split="dev")`` is the first ``n``
  rows of the fixed split (``n <= HELDOUT_SIZE``).
* ``ood`` -- longer chains (:data:`OOD`: 6 operations, still one multiplication), fixed like
  ``dev``. Its prompts cannot equal a 4-operation prompt.
* ``tail`` -- the corner of the training distribution with the largest numbers (:data:`TAIL`:
  4 operations, start 15-19, multiplier 8-9, addends 7-9; about 0.3% of training draws), fixed like
  ``dev``. Training rows are not drawn to avoid it, so it excludes, besides the ``dev``/``test``
  prompts, every prompt of the first :data:`TAIL_EXCLUDE_ROWS` training rows of the seeds
  :data:`TAIL_EXCLUDE_SEEDS` (the study seeds). A shift of difficulty inside the training support:
  every shift outside it that was tried (more or fewer operations, larger starts, two-digit
  operands) leaves the testbed model at floor.

Rows: ``{"prompt", "answer", "data_source", "level" (the operation count), "solution",
"extra_info": {"split", "hard_step"}}``; ``hard_step`` is the 0-based line of the multiplication.

Run ``python -m echorl.tasks.chain`` to print a few problems of each split.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache
from typing import Any

from echorl.tasks.arithmetic import extract_answer, score

__all__ = ["DATA_SOURCE", "HELDOUT_SIZE", "OOD", "SPLITS", "TAIL", "TAIL_EXCLUDE_ROWS", "TAIL_EXCLUDE_SEEDS", "TRAIN",
           "ChainSpec", "corrupt_hard_step",
           "extract_answer", "generate", "heldout_prompts", "make_problem", "score"]

DATA_SOURCE = "echorl/chain"
HELDOUT_SIZE = 1000  # rows of each fixed held-out split; training excludes all of them


@dataclass(frozen=True)
class ChainSpec:
    """A chain distribution: ``num_ops`` operations on a start value in ``[min_start, max_start]``,
    one of them ``*`` (multiplier in ``[min_multiplier, max_multiplier]``), the others ``+``/``-`` of
    ``min_addend..max_addend``."""

    num_ops: int
    max_start: int = 19
    max_addend: int = 9
    max_multiplier: int = 9
    min_start: int = 2
    min_addend: int = 1
    min_multiplier: int = 2


TRAIN = ChainSpec(num_ops=4)
OOD = ChainSpec(num_ops=6)
TAIL = ChainSpec(num_ops=4, min_start=15, min_multiplier=8, min_addend=7)
TAIL_EXCLUDE_SEEDS = tuple(range(1, 11)) + tuple(range(101, 115))
TAIL_EXCLUDE_ROWS = 4096
SPLITS = ("train", "dev", "test", "ood", "tail")
_FIXED_SEEDS = {"dev": "echorl/chain/dev", "test": "echorl/chain/test", "ood": "echorl/chain/ood",
                "tail": "echorl/chain/tail"}


def make_problem(rng: random.Random, spec: ChainSpec = TRAIN) -> dict[str, Any]:
    """Draw one chain of ``spec`` from ``rng`` (see the module docstring for the row format).

    The multiplication sits at a uniformly drawn position; ``-`` is drawn only when it keeps the
    value >= 0. Every value stays below 1000 (at most 19 + 9 * 3 = 46 before the product).
    """
    if spec.num_ops < 1:
        raise ValueError(f"chain: num_ops must be >= 1, got {spec.num_ops}")
    hard = rng.randrange(spec.num_ops)
    value = rng.randint(spec.min_start, spec.max_start)
    expr, lines = str(value), []
    for i in range(spec.num_ops):
        if i == hard:
            op, b = "*", rng.randint(spec.min_multiplier, spec.max_multiplier)
        else:
            b = rng.randint(spec.min_addend, spec.max_addend)
            op = rng.choice("+-") if value >= b else "+"
        new = value * b if op == "*" else value + b if op == "+" else value - b
        lines.append(f"{value}{op}{b}={new}")
        expr += f"{op}{b}"
        value = new
    return {
        "prompt": f"Left to right: {expr}",
        "answer": str(value),
        "data_source": DATA_SOURCE,
        "level": spec.num_ops,
        "solution": "\n".join(lines + [f"Answer: {value}"]),
        "extra_info": {"hard_step": hard},
    }


def _draw(stream: str, n: int, spec: ChainSpec, exclude: frozenset[str]) -> list[dict[str, Any]]:
    """``n`` rows of ``spec`` from the RNG seeded by ``stream``, unique by prompt, none in ``exclude``."""
    rng = random.Random(stream)
    rows, seen = [], set(exclude)
    tries = 0
    while len(rows) < n:
        row = make_problem(rng, spec)
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(f"chain: could not draw {n} distinct prompts of {spec} (the space is too small)")
        if row["prompt"] in seen:
            continue
        seen.add(row["prompt"])
        rows.append(row)
    return rows


@cache
def _fixed_split(split: str) -> tuple[dict[str, Any], ...]:
    """The whole fixed held-out split (``HELDOUT_SIZE`` rows); ``test`` excludes ``dev``'s prompts."""
    if split == "ood":
        return tuple(_draw(_FIXED_SEEDS["ood"], HELDOUT_SIZE, OOD, frozenset()))
    if split == "tail":
        train = {r["prompt"] for seed in TAIL_EXCLUDE_SEEDS
                 for r in _draw(f"echorl/chain/train/{seed}", TAIL_EXCLUDE_ROWS, TRAIN, heldout_prompts())}
        return tuple(_draw(_FIXED_SEEDS["tail"], HELDOUT_SIZE, TAIL, heldout_prompts() | train))
    exclude = frozenset(r["prompt"] for r in _fixed_split("dev")) if split == "test" else frozenset()
    return tuple(_draw(_FIXED_SEEDS[split], HELDOUT_SIZE, TRAIN, exclude))


def heldout_prompts() -> frozenset[str]:
    """Every prompt of the fixed ``dev`` and ``test`` splits (what ``train`` never contains)."""
    return frozenset(r["prompt"] for s in ("dev", "test") for r in _fixed_split(s))


def generate(n: int, seed: int = 0, split: str = "train") -> list[dict[str, Any]]:
    """``n`` rows of ``split`` (``train`` | ``dev`` | ``test`` | ``ood``).

    ``train`` rows are deterministic in ``seed``, unique by prompt and disjoint from the held-out
    prompts; a prefix of a longer draw is the shorter draw. The held-out splits ignore ``seed``
    (fixed seeds) and hold :data:`HELDOUT_SIZE` rows.
    """
    if split not in SPLITS:
        raise ValueError(f"chain: unknown split {split!r}; valid splits are {list(SPLITS)}")
    if n < 0:
        raise ValueError(f"chain.generate: n must be >= 0, got {n}")
    if split == "train":
        rows = _draw(f"echorl/chain/train/{seed}", n, TRAIN, heldout_prompts())
    else:
        if n > HELDOUT_SIZE:
            raise ValueError(f"chain: split {split!r} holds {HELDOUT_SIZE} rows, asked for n={n}")
        rows = [dict(r, extra_info=dict(r["extra_info"])) for r in _fixed_split(split)[:n]]
    for r in rows:
        r["extra_info"]["split"] = split
    return rows


def corrupt_hard_step(row: dict[str, Any], rng: random.Random) -> str:
    """``row``'s solution with one digit of the product changed, carried consistently through the
    later lines and the answer (a plausible wrong solution, for noisy warm starts).

    Only the multiplication's result changes, so every other line still follows the prompt's
    operations exactly; a change that would take a later value below 0 is redrawn (after 20
    draws the correct solution is returned).
    """
    lines = row["solution"].split("\n")
    k = int(row["extra_info"]["hard_step"])
    lhs, prod = lines[k].split("=")
    steps = []  # (op, operand) of the lines after the product
    for ln in lines[k + 1:-1]:
        a = ln.split("=")[0]
        i = max(a.rfind("+"), a.rfind("-"))  # after the product only + and - occur
        steps.append((a[i], int(a[i + 1:])))
    for _ in range(20):
        digits = list(prod)
        pos = rng.randrange(len(digits))
        digits[pos] = rng.choice([d for d in "0123456789"
                                  if d != digits[pos] and not (pos == 0 and d == "0" and len(digits) > 1)])
        value = int("".join(digits))
        out = lines[:k] + [f"{lhs}={value}"]
        for op, b in steps:
            new = value + b if op == "+" else value - b
            out.append(f"{value}{op}{b}={new}")
            value = new
        if all(int(ln.rsplit("=", 1)[1]) >= 0 for ln in out[k:]):
            return "\n".join(out + [f"Answer: {value}"])
    return row["solution"]


if __name__ == "__main__":
    for s in SPLITS:
        for row in generate(3, seed=0, split=s):
            print(f"[{s}] {row['prompt']}\n{row['solution']}\n")
