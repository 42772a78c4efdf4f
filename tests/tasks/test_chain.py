"""Tests for echorl/tasks/chain.py: the testbed task (rows, exact verifier, fixed disjoint splits)."""

from __future__ import annotations

import random
import re

import pytest

from echorl.tasks import chain, compute_score, get_task, load_dataset
from echorl.tasks.chain import HELDOUT_SIZE, OOD, TRAIN, corrupt_hard_step, generate, heldout_prompts, score


def _left_to_right(prompt: str) -> tuple[int, list[tuple[str, int]]]:
    """Independent parse and evaluation of 'Left to right: a op b op c ...'."""
    expr = re.fullmatch(r"Left to right: (\d+)((?:[+\-*]\d)+)", prompt)
    assert expr, prompt
    value = int(expr.group(1))
    ops = [(m[0], int(m[1])) for m in re.findall(r"([+\-*])(\d)", expr.group(2))]
    for op, b in ops:
        value = value + b if op == "+" else value - b if op == "-" else value * b
    return value, ops


def _check_row(r, spec):
    value, ops = _left_to_right(r["prompt"])
    assert r["answer"] == str(value) and r["data_source"] == "echorl/chain" and r["level"] == spec.num_ops
    assert [op for op, _ in ops].count("*") == 1 and len(ops) == spec.num_ops
    lines = r["solution"].split("\n")
    assert len(lines) == spec.num_ops + 1 and lines[-1] == f"Answer: {value}"
    prev = int(re.match(r"Left to right: (\d+)", r["prompt"]).group(1))
    for k, (ln, (op, b)) in enumerate(zip(lines[:-1], ops)):
        assert ln == f"{prev}{op}{b}={eval(f'{prev}{op}{b}')}"  # noqa: S307 - digits and one operator
        assert (op == "*") == (k == r["extra_info"]["hard_step"])
        prev = eval(f"{prev}{op}{b}")  # noqa: S307
        assert 0 <= prev < 1000
    assert score(r["solution"], r["answer"]) == 1.0


def test_rows_are_correct_five_line_chains_with_one_hard_step():
    rows = generate(400, seed=3)
    for r in rows:
        _check_row(r, TRAIN)
        assert r["extra_info"]["split"] == "train"
    # the hard step sits at every position
    assert {r["extra_info"]["hard_step"] for r in rows} == {0, 1, 2, 3}
    for r in generate(50, split="ood"):
        _check_row(r, OOD)


def test_hand_computed_problem():
    rng = random.Random(0)
    row = chain.make_problem(rng, chain.ChainSpec(num_ops=4))
    value, _ = _left_to_right(row["prompt"])
    assert row["answer"] == str(value)
    assert chain.extract_answer("14+3=17\n17*7=119\n119-5=114\n114+2=116\nAnswer: 116") == "116"
    assert score("14+3=17\n17*7=119\n119-5=114\n114+2=116\nAnswer: 116", "116") == 1.0
    assert score("14+3=17\n17*7=118\n118-5=113\n113+2=115\nAnswer: 115", "116") == 0.0
    assert score("Answer: 116 ", 116) == 1.0 and score("Answer: 0116", "116") == 0.0 and score(None, "1") == 0.0


def test_generation_is_deterministic_unique_and_prefix_stable():
    a, b, c = generate(300, seed=7), generate(300, seed=7), generate(300, seed=8)
    assert a == b and a != c
    assert generate(500, seed=7)[:300] == a
    assert len({r["prompt"] for r in generate(3000, seed=1)}) == 3000


def test_heldout_splits_are_fixed_disjoint_and_never_in_training():
    dev, test, ood = (generate(HELDOUT_SIZE, seed=s, split=sp) for s, sp in ((0, "dev"), (5, "test"), (9, "ood")))
    assert generate(HELDOUT_SIZE, seed=123, split="dev") == dev  # the seed does not move a held-out split
    assert generate(10, split="test") == test[:10]
    for rows in (dev, test, ood):
        assert len({r["prompt"] for r in rows}) == HELDOUT_SIZE
    assert not {r["prompt"] for r in dev} & {r["prompt"] for r in test}
    assert heldout_prompts() == {r["prompt"] for r in dev + test}
    held = heldout_prompts()
    for seed in (0, 1, 2):
        train = generate(4096, seed=seed)
        assert not held & {r["prompt"] for r in train}
    # the exclusion really removes rows: the unfiltered training stream does draw held-out prompts
    rng = random.Random("echorl/chain/train/0")
    raw = [chain.make_problem(rng, TRAIN)["prompt"] for _ in range(20000)]
    assert held & set(raw)
    kept = list(dict.fromkeys(p for p in raw if p not in held))  # first occurrences, held-out dropped
    assert [r["prompt"] for r in generate(len(kept), seed=0)] == kept
    assert {r["level"] for r in ood} == {6} and {r["level"] for r in dev} == {4}


def test_split_errors_and_registry():
    with pytest.raises(ValueError, match="unknown split 'val'"):
        generate(3, split="val")
    with pytest.raises(ValueError, match=f"holds {HELDOUT_SIZE} rows, asked for n={HELDOUT_SIZE + 1}"):
        generate(HELDOUT_SIZE + 1, split="dev")
    assert get_task("chain").data_source == "echorl/chain"
    assert load_dataset("chain", n=5, seed=2) == generate(5, seed=2)
    assert load_dataset("chain", n=5, split="ood") == generate(5, split="ood")
    r = generate(1, split="dev")[0]
    assert compute_score("echorl/chain", r["solution"], r["answer"], r["extra_info"]) == 1.0


def test_corrupted_solution_changes_only_the_product_and_stays_consistent():
    rng = random.Random(0)
    rows = generate(300, seed=4)
    changed = 0
    for r in rows:
        bad = corrupt_hard_step(r, rng)
        if bad == r["solution"]:
            continue
        changed += 1
        k = r["extra_info"]["hard_step"]
        good_lines, bad_lines = r["solution"].split("\n"), bad.split("\n")
        assert bad_lines[:k] == good_lines[:k]  # lines before the product are untouched
        lhs, prod = bad_lines[k].split("=")
        assert lhs == good_lines[k].split("=")[0] and prod != good_lines[k].split("=")[1]
        assert len(prod) == len(good_lines[k].split("=")[1])  # one digit changed, no leading zero
        assert sum(x != y for x, y in zip(prod, good_lines[k].split("=")[1])) == 1
        prev = int(prod)
        for g, ln in zip(good_lines[k + 1:-1], bad_lines[k + 1:-1]):
            op_b = re.search(r"[+\-]\d$", g.split("=")[0]).group(0)
            assert ln == f"{prev}{op_b}={eval(f'{prev}{op_b}')}"  # noqa: S307 - same operation, carried value
            prev = eval(f"{prev}{op_b}")  # noqa: S307
            assert prev >= 0
        assert bad_lines[-1] == f"Answer: {prev}" and score(bad, r["answer"]) == 0.0
    assert changed >= 295
