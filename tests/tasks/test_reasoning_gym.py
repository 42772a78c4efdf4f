"""Tests for echorl/tasks/reasoning_gym.py: rows in the common format, scored by reasoning-gym."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("reasoning_gym")

from echorl.tasks import get_task, load_dataset  # noqa: E402
from echorl.tasks.reasoning_gym import ADAPTERS, extract_answer  # noqa: E402


@pytest.mark.parametrize("base", sorted(ADAPTERS))
def test_rows_score_one_on_their_reference(base):
    name = f"rg/{base}"
    task = get_task(name)
    rows = load_dataset(name, n=6, seed=1)
    assert len(rows) == 6
    for r in rows:
        assert r["data_source"] == f"reasoning_gym/{base}"
        assert r["prompt"].endswith("'Answer: <answer>'.")
        assert r["level"] in ADAPTERS[base]
        json.loads(r["extra_info"]["rg_entry"])  # serialisable, so JSONL/parquet keep it
        assert task.score(r["solution"], r["answer"], r["extra_info"]) == 1.0
        assert task.score(f"some steps\nAnswer: {r['answer']}", r["answer"], r["extra_info"]) == 1.0
        assert task.score("", r["answer"], r["extra_info"]) == 0.0
        assert task.score(None, r["answer"], r["extra_info"]) == 0.0
    assert load_dataset(name, n=6, seed=1) == rows  # deterministic


def test_unique_answer_tasks_score_without_extra_info():
    task = get_task("rg/basic_arithmetic")
    r = load_dataset("rg/basic_arithmetic", n=1, seed=2)[0]
    assert task.score(f"Answer: {r['answer']}", r["answer"]) == 1.0
    wrong = str(int(float(r["answer"])) + 1)
    assert task.score(f"Answer: {wrong}", r["answer"]) < 1.0


def test_countdown_accepts_another_correct_expression():
    task = get_task("rg/countdown")
    r = load_dataset("rg/countdown", n=1, seed=0, levels=(1,))[0]
    meta = json.loads(r["extra_info"]["rg_entry"])["metadata"]
    # Reorder the reference expression's top-level sum: still correct, not the stored string.
    expr = r["answer"]
    assert eval(expr) == meta["target"]  # noqa: S307 - generated arithmetic
    assert task.score(f"Answer: ({expr})", r["answer"], r["extra_info"]) == 1.0


def test_extract_answer_fallbacks():
    assert extract_answer("a\nAnswer: 5\nAnswer: 6") == "6"
    assert extract_answer("blah <answer> 7 </answer>") == "7"
    assert extract_answer("x\n 8 \n") == "8"
    assert extract_answer("   ") is None


def test_malformed_entry_is_an_error_naming_the_fix():
    from echorl.tasks.reasoning_gym import score

    base = sorted(ADAPTERS)[0]
    with pytest.raises(ValueError, match="rg_entry is not a JSON object.*regenerate"):
        score(base, "Answer: 1", "1", {"rg_entry": "{not json"})
    with pytest.raises(ValueError, match="rg_entry has no 'answer' field"):
        score(base, "Answer: 1", "1", {"rg_entry": '{"metadata": {}}'})
