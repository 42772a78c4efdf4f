"""echorl/eval/graders.py: answer section, math-verify (real), multiple-choice letters, task verifiers."""

from __future__ import annotations

import pytest

from echorl.eval.graders import (
    answer_section,
    gold_letter,
    grade_sample,
    grader_payload,
    mc_letter,
    mc_options,
    resolve_grader,
    vote_key,
)


def test_answer_section_after_last_think_end():
    assert answer_section("<think>a</think>b</think>c") == "c"
    assert answer_section("no think here") == "no think here"
    assert answer_section("<think>unfinished") == "<think>unfinished"
    assert answer_section(None) == ""


@pytest.mark.parametrize("response,gold,expected", [
    ("so \\boxed{\\frac{1}{2}}", "0.5", 1.0),                            # math-verify equivalence
    ("<think>maybe \\boxed{3}</think> final \\boxed{1/2}", "\\frac12", 1.0),
    ("<think>\\boxed{0.5}</think> I give up", "0.5", 0.0),                 # the boxed answer is inside think
    ("\\boxed{2} then \\boxed{3}", "3", 1.0),                              # the last box counts
    ("\\boxed{2} then \\boxed{3}", "2", 0.0),
    ("The answer is 0.5", "0.5", 0.0),                                    # no box, no answer
    ("\\boxed{x^2+2x+1}", "(x+1)^2", 1.0),
])
def test_math_grader_with_real_math_verify(response, gold, expected):
    assert grade_sample("math", response, gold, {}) == expected


@pytest.mark.parametrize("text,num,expected", [
    ("Reasoning...\nThe answer is (C).", 4, "C"),
    ("so \\boxed{B}", 4, "B"),
    ("\\boxed{\\text{(D)}}", 4, "D"),
    ("\\boxed{A. Paris}", 4, "A"),
    ("Answer: D", 4, "D"),
    ("blah\n(A)", 4, "A"),
    ("The answer is (E)", 4, None),                  # beyond the 4 options
    ("The answer is (E)", 10, "E"),
    ("the answer is a number, so answer: b", 4, None),  # lower-case letters are words, not choices
    ("<think>the answer is A</think> Answer: B", 4, "B"),
    ("<think>the answer is A</think> no idea", 4, None),
    ("I think A is wrong, the answer is B, not C. Answer: C", 4, "C"),  # last "Answer:" pattern wins
    ("Apples are red", 4, None),
])
def test_mc_letter(text, num, expected):
    assert mc_letter(text, num) == expected


def test_gold_letter_forms():
    opts = ["Berlin", "Paris", "Rome", "Madrid"]
    assert gold_letter("C", opts) == "C"
    assert gold_letter("(b)", opts) == "B"
    assert gold_letter(3, opts) == "D"
    assert gold_letter("Paris", opts) == "B"
    with pytest.raises(ValueError, match="neither a letter"):
        gold_letter("Lisbon", opts)
    with pytest.raises(ValueError, match="outside"):
        gold_letter(4, opts)


def test_mc_options_formats():
    assert mc_options({"options": ["x", "y"]}) == ["x", "y"]
    assert mc_options({"choices": {"B": "y", "A": "x"}}) == ["x", "y"]
    assert mc_options({"choices": {"label": ["A", "B"], "text": ["x", "y"]}}) == ["x", "y"]  # ARC layout
    assert mc_options({"prompt": "q"}) is None


def test_mc_grading_end_to_end():
    row = {"prompt": "q", "answer": "Paris", "options": ["Berlin", "Paris", "Rome"]}
    gold, extra = grader_payload("mc", row)
    assert (gold, extra) == ("B", {"num_options": 3})
    assert grade_sample("mc", "The answer is (B)", gold, extra) == 1.0
    assert grade_sample("mc", "The answer is (A)", gold, extra) == 0.0
    assert grade_sample("mc", "The answer is (D)", gold, extra) == 0.0  # no option D
    assert vote_key("mc", "The answer is (B)", extra) == "B"


def test_task_grader_uses_the_registered_verifier():
    row = {"prompt": "Compute 1+2.", "answer": "3", "data_source": "echorl/arithmetic"}
    gold, extra = grader_payload("task", row)
    assert grade_sample("task", "1+2=3\nAnswer: 3", gold, extra) == 1.0
    assert grade_sample("task", "1+2=4\nAnswer: 4", gold, extra) == 0.0
    assert grade_sample("task", "<think>Answer: 4</think>1+2=3\nAnswer: 3", gold, extra) == 1.0
    assert vote_key("task", "1+2=4\nAnswer: 4", extra) == "4"
    assert vote_key("task", "garbage\nlast line ", extra) == "last line"


def test_math_vote_key_ignores_whitespace():
    assert vote_key("math", "\\boxed{ \\frac{1}{2} }", {}) == "\\frac{1}{2}"
    assert vote_key("math", "no box", {}) is None


def test_resolve_grader_auto_and_errors():
    task_rows = [{"prompt": "p", "answer": "1", "data_source": "echorl/arithmetic"}]
    mc_rows = [{"prompt": "p", "answer": "A", "options": ["x", "y"]}]
    math_rows = [{"prompt": "p", "answer": "1", "data_source": "aime24"}]
    assert resolve_grader("auto", task_rows) == "task"
    assert resolve_grader("auto", mc_rows) == "mc"
    assert resolve_grader("auto", math_rows) == "math"
    assert resolve_grader("math", task_rows) == "math"
    with pytest.raises(ValueError, match="row 0 has 'aime24'"):
        resolve_grader("task", math_rows)
    with pytest.raises(ValueError, match="grader must be one of"):
        resolve_grader("regex", math_rows)


@pytest.mark.parametrize("response,expected", [
    ("so \\boxed{3}", ["math"]), ("3*4=12\nAnswer: 12", ["task"]), ("The answer is (C).", ["mc"]),
    ("<think>Answer: 9</think>\\boxed{9}", ["math"]), ("no answer here", [])])
def test_readable_by(response, expected):
    from echorl.eval.graders import readable_by

    assert readable_by(response) == expected
