"""Tests for echorl/tasks/arithmetic.py: determinism, exact verifier, level difficulty."""

from __future__ import annotations

import random
import re

import pytest

from echorl.tasks import arithmetic
from echorl.tasks.arithmetic import LEVELS, extract_answer, generate, make_problem, score


def _eval_chain(prompt: str) -> int:
    """Independent evaluation of 'Compute <expr>.' (the expression uses only + - * and parens)."""
    expr = re.fullmatch(r"Compute ([0-9+\-*()]+)\.", prompt).group(1)
    return eval(expr, {"__builtins__": {}})  # noqa: S307 - digits, operators and parens only


def test_generation_is_deterministic_and_seed_dependent():
    a, b, c = generate(50, seed=7), generate(50, seed=7), generate(50, seed=8)
    assert a == b
    assert a != c
    # A prefix of a longer run is the shorter run (rows drawn one after the other).
    assert generate(80, seed=7)[:50] == a


def test_rows_have_the_contract_fields_and_correct_answers():
    rows = generate(500, seed=1)
    for r in rows:
        assert set(r) == {"prompt", "answer", "data_source", "level", "solution"}
        assert r["data_source"] == "echorl/arithmetic"
        assert isinstance(r["answer"], str)
        assert int(r["answer"]) == _eval_chain(r["prompt"])
        lines = r["solution"].split("\n")
        assert len(lines) == LEVELS[r["level"]].num_ops + 1
        assert lines[-1] == f"Answer: {r['answer']}"
        # every step line is a correct equation, and each step starts from the previous result
        prev = None
        for ln in lines[:-1]:
            lhs, rhs = ln.split("=")
            assert eval(lhs, {"__builtins__": {}}) == int(rhs)  # noqa: S307
            assert 0 <= int(rhs) <= arithmetic.MAX_VALUE
            if prev is not None:
                assert lhs.startswith(prev)
            prev = rhs
        assert score(r["solution"], r["answer"]) == 1.0


def test_levels_cycle_in_order_and_filter():
    rows = generate(10, seed=0)
    assert [r["level"] for r in rows] == [1, 2, 3, 4, 5, 1, 2, 3, 4, 5]
    assert {r["level"] for r in generate(20, seed=0, levels=(2, 4))} == {2, 4}
    with pytest.raises(ValueError, match="unknown level 9"):
        generate(3, levels=(9,))
    with pytest.raises(ValueError, match="unknown level"):
        make_problem(random.Random(0), 0)


def test_difficulty_is_monotone_in_ops_count():
    ops = [LEVELS[k].num_ops for k in sorted(LEVELS)]
    assert ops == sorted(ops) and len(set(ops)) == len(ops)
    maxop = [LEVELS[k].max_operand for k in sorted(LEVELS)]
    assert maxop == sorted(maxop)
    # Response length (tokens to get right) grows with the level.
    rows = generate(1000, seed=3)
    mean_len = {lv: sum(len(r["solution"]) for r in rows if r["level"] == lv) / 200 for lv in LEVELS}
    assert all(mean_len[k] < mean_len[k + 1] for k in range(1, 5)), mean_len


@pytest.mark.parametrize(
    "text,answer,expected",
    [
        ("3+4=7\n7*2=14\n14-5=9\nAnswer: 9", "9", 1.0),
        ("Answer: 9", 9, 1.0),  # int answer accepted
        ("3+4=7\nAnswer: 9\n", "9", 1.0),  # trailing newline
        ("3+4=7\nAnswer: 9<|im_end|>", "9", 1.0),  # eos left in by decoding
        ("  Answer: 9  \n\n", "9", 1.0),
        ("Answer: 09", "9", 0.0),  # exact: no leading zeros
        ("Answer: 9\nAnswer: 8", "9", 0.0),  # the final line counts
        ("Answer: 9 apples", "9", 0.0),
        ("answer: 9", "9", 0.0),
        ("Answer:9", "9", 0.0),
        ("The answer is 9", "9", 0.0),
        ("Answer: 9\nmore text", "9", 0.0),
        ("Answer: -3", "-3", 1.0),
        ("Answer: 10", "1", 0.0),
        ("", "9", 0.0),
        ("\x00\xff<<>>Answer: 9", "9", 0.0),
        (None, "9", 0.0),
        (12, "12", 0.0),
    ],
)
def test_verifier_is_exact(text, answer, expected):
    assert score(text, answer) == expected


def test_extract_answer():
    assert extract_answer("1+1=2\nAnswer: 2") == "2"
    assert extract_answer("garbage") is None
    assert extract_answer(b"Answer: 2") is None
