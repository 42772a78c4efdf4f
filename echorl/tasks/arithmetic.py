"""Synthetic multi-step arithmetic with one reasoning step per line.

A problem is a left-nested chain of operations on small non-negative integers::

    prompt:   Compute ((3+4)*2)-5.
    solution: 3+4=7
              7*2=14
              14-5=9
              Answer: 9

Every line of the solution is one reasoning step, so the newline token is the step boundary of
SPEC 2.1. Difficulty grows with the level: more operations and larger operands (see
:data:`LEVELS`). With a small model the easy levels become all-success groups (the degenerated
regime EchoRL targets) while the hard ones still fail.

Generation is deterministic: the same ``seed`` gives the same rows on every machine (Python's
``random.Random`` only). Intermediate values stay in ``[0, MAX_VALUE]``: subtraction never goes
below 0 and multiplication is only drawn when the product stays in range.

Run ``python -m echorl.tasks.arithmetic`` to print a few problems.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

DATA_SOURCE = "echorl/arithmetic"
MAX_VALUE = 999


@dataclass(frozen=True)
class Level:
    """One difficulty level: ``num_ops`` operations, operands drawn from ``[1, max_operand]``
    (the multiplier of ``*`` from ``[2, max_multiplier]``)."""

    num_ops: int
    max_operand: int
    max_multiplier: int


# level -> parameters; level k has k operations, so difficulty is monotone in the op count.
LEVELS: dict[int, Level] = {
    1: Level(num_ops=1, max_operand=9, max_multiplier=5),
    2: Level(num_ops=2, max_operand=9, max_multiplier=5),
    3: Level(num_ops=3, max_operand=19, max_multiplier=5),
    4: Level(num_ops=4, max_operand=19, max_multiplier=9),
    5: Level(num_ops=5, max_operand=29, max_multiplier=9),
}

_ANSWER_RE = re.compile(r"Answer: (-?\d+)")
_STRIP_SUFFIXES = ("<|im_end|>", "<|endoftext|>")


def make_problem(rng: random.Random, level: int) -> dict[str, Any]:
    """Draw one problem of ``level`` from ``rng``.

    Returns a row ``{"prompt", "answer", "data_source", "level", "solution"}``; ``answer`` is the
    final value as a string, ``solution`` the reference text (steps joined by ``"\\n"``, last line
    ``"Answer: N"``).
    """
    if level not in LEVELS:
        raise ValueError(f"arithmetic: unknown level {level!r}; valid levels are {sorted(LEVELS)}")
    p = LEVELS[level]
    value = rng.randint(1, p.max_operand)
    expr = str(value)
    steps: list[str] = []
    for i in range(p.num_ops):
        ops = ["+"]
        if value >= 1:  # keep every intermediate value >= 0 and never subtract 0
            ops.append("-")
        if 2 <= value * 2 <= MAX_VALUE:  # '*' only when some multiplier keeps the product in range
            ops.append("*")
        op = rng.choice(ops)
        if op == "+" and value + 1 > MAX_VALUE:
            op = "-"
        if op == "+":
            b = rng.randint(1, min(p.max_operand, MAX_VALUE - value))
        elif op == "-":
            b = rng.randint(1, min(p.max_operand, value))
        else:
            b = rng.randint(2, max(2, min(p.max_multiplier, MAX_VALUE // value)))
        new = value + b if op == "+" else value - b if op == "-" else value * b
        steps.append(f"{value}{op}{b}={new}")
        expr = f"({expr}){op}{b}" if i > 0 else f"{expr}{op}{b}"
        value = new
    solution = "\n".join(steps + [f"Answer: {value}"])
    return {
        "prompt": f"Compute {expr}.",
        "answer": str(value),
        "data_source": DATA_SOURCE,
        "level": level,
        "solution": solution,
    }


def generate(n: int, seed: int = 0, levels: tuple[int, ...] | list[int] | None = None) -> list[dict[str, Any]]:
    """``n`` problems, levels cycled in order (``levels[i % len(levels)]``), deterministic in ``seed``.

    Args:
        n: number of rows.
        seed: RNG seed; the same seed gives the same rows.
        levels: levels to draw from (default: every level of :data:`LEVELS`).
    """
    if n < 0:
        raise ValueError(f"arithmetic.generate: n must be >= 0, got {n}")
    levels = tuple(sorted(LEVELS)) if levels is None else tuple(levels)
    if not levels:
        raise ValueError("arithmetic.generate: levels is empty")
    for lv in levels:
        if lv not in LEVELS:
            raise ValueError(f"arithmetic: unknown level {lv!r}; valid levels are {sorted(LEVELS)}")
    rng = random.Random(f"echorl/arithmetic/{seed}")
    return [make_problem(rng, levels[i % len(levels)]) for i in range(n)]


def extract_answer(solution_str: Any) -> str | None:
    """The ``N`` of the final ``"Answer: N"`` line, or ``None``.

    The last non-empty line (after stripping whitespace and a trailing ``<|im_end|>``) must be
    exactly ``Answer: N`` with ``N`` an integer; anything else (garbage, no answer line, text after
    the answer, a non-string) gives ``None``.
    """
    if not isinstance(solution_str, str):
        return None
    text = solution_str.strip()
    changed = True
    while changed:  # tolerate special tokens left in by decoding without skip_special_tokens
        changed = False
        for suf in _STRIP_SUFFIXES:
            if text.endswith(suf):
                text, changed = text[: -len(suf)].rstrip(), True
    if not text:
        return None
    last = text.rsplit("\n", 1)[-1].strip()
    m = _ANSWER_RE.fullmatch(last)
    return m.group(1) if m else None


def score(solution_str: Any, answer: Any) -> float:
    """Exact verifier: 1.0 when the final ``"Answer: N"`` line has ``N == answer`` (as written:
    ``"09"`` does not match ``"9"``), else 0.0. Never raises."""
    got = extract_answer(solution_str)
    return 1.0 if got is not None and got == str(answer).strip() else 0.0


if __name__ == "__main__":
    for row in generate(10, seed=0):
        print(f"[level {row['level']}] {row['prompt']}\n{row['solution']}\n")
