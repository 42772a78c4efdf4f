"""Tests of echorl/rewards/math.py with real math-verify, through the pool and through verl."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from echorl.rewards import math as rmath
from echorl.rewards.math import compute_score, compute_scores, last_boxed, verify_answer
from echorl.rewards.pool import VerifierPool

CASES = [  # (solution, gold, expected)
    ("Half of 1 is \\boxed{\\frac{1}{2}}.", "0.5", 1.0),
    ("So the answer is \\boxed{0.5}", "\\frac{1}{2}", 1.0),
    ("\\boxed{\\dfrac{\\sqrt3}{2}}", "\\frac{\\sqrt{3}}{2}", 1.0),
    ("Expanding, \\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
    ("First \\boxed{3}, wait, no: \\boxed{5}", "5", 1.0),   # the last box counts
    ("First \\boxed{5}, wait, no: \\boxed{3}", "5", 0.0),
    ("The answer is \\boxed{\\frac{1}{3}}", "0.5", 0.0),    # wrong
    ("The answer is 0.5.", "0.5", 0.0),                      # no boxed answer
    ("\\boxed{}", "3", 0.0),                                 # empty box
    ("\\boxed{\\frac{1}{", "0.5", 0.0),                      # unclosed box
    ("}{ \\frac{ $$ \\\\ ^^ garbage", "3", 0.0),            # garbage
    ("", "3", 0.0),
    ("\\fbox{12}", "12", 1.0),
    ("\\boxed 7 is it", "7", 1.0),
    ("gold may be boxed: \\boxed{2}", "\\boxed{2}", 1.0),
    ("several golds \\boxed{6}", ["5", "6"], 1.0),
    ("integer gold \\boxed{42}", 42, 1.0),
]


@pytest.fixture(scope="module", autouse=True)
def fresh_pool():
    rmath.close_pool()
    rmath.get_pool(timeout_s=20.0, num_workers=2)  # generous: sympy is slow on a loaded machine
    yield
    rmath.close_pool()


@pytest.mark.parametrize("text,content", [
    ("Half of 1 is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("First \\boxed{3}, wait, no: \\boxed{5}", "5"),
    ("\\boxed{\\{1, 2\\}} then \\fbox{7}", "7"),
    ("\\boxed{a} and an unclosed \\boxed{\\frac{1}{", "a"),
    ("\\boxed{}", ""),
    ("\\boxed 7 is it", "7"),
    ("$\\boxed 7$", "7"),
    ("\\boxed{\\frac{1}{", None),
    ("The answer is 0.5.", None),
    ("", None),
])
def test_last_boxed(text, content):
    assert last_boxed(text) == content


def test_verify_answer_in_process():
    got = [verify_answer(s, g) for s, g, _ in CASES]
    assert got == [e for _, _, e in CASES]


def test_compute_score_through_the_pool():
    got = [compute_score("math", s, g, extra_info={"split": "train", "index": i})
           for i, (s, g, _) in enumerate(CASES)]
    assert got == [e for _, _, e in CASES]
    assert all(type(x) is float for x in got)


def test_batch_form_and_stats():
    scores, stats = compute_scores([s for s, _, _ in CASES], [g for _, g, _ in CASES])
    assert scores == [e for _, _, e in CASES]
    assert stats["checked"] == len(CASES) and stats["ok"] == len(CASES)
    with pytest.raises(ValueError, match="2 solutions but 1 ground truths"):
        compute_scores(["a", "b"], ["1"])


def test_pathological_expression_times_out_instead_of_hanging():
    """sympy spends seconds to minutes on this tower; the pool kills the check at 1 s, scores 0."""
    with VerifierPool(verify_answer, num_workers=1, timeout_s=1.0,
                      warmup_args=("\\boxed{1}", "1")) as pool:
        t0 = time.monotonic()
        scores, stats = pool.score([("\\boxed{9^{9^{9^{9^{9}}}}}", "1")])
        elapsed = time.monotonic() - t0
        assert scores == [0.0] and stats["timeouts"] == 1 and stats["restarts"] == 1
        assert elapsed < 4.0
        assert pool.score([("\\boxed{1}", "1")])[0] == [1.0]  # the replaced worker answers


def test_empty_gold_is_counted_as_a_crash():
    before = rmath.get_pool().totals["exceptions"]
    assert compute_score("math", "\\boxed{1}", "") == 0.0
    assert rmath.get_pool().totals["exceptions"] == before + 1
    with pytest.raises(ValueError, match="empty ground truth"):
        verify_answer("\\boxed{1}", "  ")


def test_called_from_threads_like_verl():
    """verl runs reward functions in executor threads, where math-verify's signal timeouts fail."""
    out = [None] * 8

    def run(i):
        s, g, _ = CASES[i]
        out[i] = compute_score("math", s, g)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=30)
    assert out == [e for _, _, e in CASES[:8]]
    # and the in-process check also works off the main thread (timeouts off there)
    res = []
    t = threading.Thread(target=lambda: res.append(verify_answer("\\boxed{0.5}", "1/2")))
    t.start()
    t.join(timeout=30)
    assert res == [1.0]


class _CharTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(int(i)) for i in ids if int(i) > 0)


def test_verl_loads_and_calls_it_as_custom_reward_function():
    """verl 0.9.1's own loader and NaiveRewardManager.run_single, with the documented config keys."""
    from omegaconf import OmegaConf
    from verl import DataProto
    from verl.trainer.ppo.reward import load_reward_manager

    cfg = OmegaConf.create({"reward": {
        "custom_reward_function": {"path": "pkg://echorl.rewards.math", "name": "compute_score",
                                   "reward_kwargs": {"timeout_s": 1.0}},
        "reward_manager": {"source": "register", "name": "naive"}}})
    manager = load_reward_manager(cfg, _CharTokenizer())
    texts = ["so \\boxed{\\frac{1}{2}}", "the answer is \\boxed{3}"]
    golds = ["0.5", "4"]
    prompt_len, resp_len = 4, max(map(len, texts)) + 3
    responses = torch.zeros(2, resp_len, dtype=torch.long)
    attention = torch.zeros(2, prompt_len + resp_len, dtype=torch.long)
    attention[:, :prompt_len] = 1
    for i, t in enumerate(texts):
        responses[i, :len(t)] = torch.tensor([ord(c) for c in t])
        attention[i, prompt_len:prompt_len + len(t)] = 1
    data = DataProto.from_dict(
        tensors={"responses": responses, "attention_mask": attention,
                 "prompts": torch.ones(2, prompt_len, dtype=torch.long)},
        non_tensors={"data_source": np.array(["math", "math"], dtype=object),
                     "reward_model": np.array([{"ground_truth": g} for g in golds], dtype=object),
                     "extra_info": np.array([{}, {}], dtype=object)})
    out = [manager.loop.run_until_complete(manager.run_single(data[i:i + 1])) for i in range(2)]
    assert [o["reward_score"] for o in out] == [1.0, 0.0]
    assert [o["reward_extra_info"]["acc"] for o in out] == [1.0, 0.0]
