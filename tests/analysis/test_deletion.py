"""echorl/analysis/deletion.py: the rounding rule, the three orders on hand-made step entropies, and
the whole test against a literal re-implementation (text lines deleted, one greedy continuation per
case, graded one by one)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from echorl.analysis.deletion import deletion_ranking, num_deleted, run_deletion
from echorl.analysis.entropy import (
    encode_prompts_of,
    expert_solutions,
    generate,
    grade,
    profile_solutions,
    rows_with_user_prompts,
    token_entropies,
)


@pytest.mark.parametrize("share,pool,k", [
    (0, 7, 0), (1, 7, 7), (0.5, 3, 2), (0.1, 4, 0), (0.1, 5, 1), (0.3, 5, 2), (0.7, 5, 4),  # 3.5 -> 4 (0.7*5 < 3.5 in floats)
    (0.25, 2, 1), (0.2, 4, 1), (0.4, 4, 2), (0.6, 4, 2), (0.3, 1, 0), (0.5, 1, 1), (0.3, 0, 0), (0.35, 10, 4),
])
def test_num_deleted_rounds_half_up_exactly(share, pool, k):
    assert num_deleted(share, pool) == k


def test_num_deleted_refuses_bad_share():
    with pytest.raises(ValueError, match=r"share must be in \[0, 1\], got 1.2"):
        num_deleted(1.2, 4)
    with pytest.raises(ValueError, match="share"):
        num_deleted(-0.1, 4)


def deleted_steps(step_h, share, order, seed=0, solution_index=0):
    """The pool steps deleted at ``share`` (sorted): the first num_deleted of the ranking, as run_deletion cuts."""
    return sorted(deletion_ranking(step_h, order, seed, solution_index)[:num_deleted(share, len(step_h))])


def test_orders_on_hand_made_step_entropies():
    h = [0.5, 2.0, 1.0, 2.0, 0.1]  # a tie between steps 1 and 3
    assert deletion_ranking(h, "highest") == [1, 3, 2, 0, 4]
    assert deletion_ranking(h, "lowest") == [4, 0, 2, 1, 3]
    expect = {  # share -> (k, highest, lowest)
        0.0: (0, [], []), 0.1: (1, [1], [4]), 0.2: (1, [1], [4]), 0.3: (2, [1, 3], [0, 4]),
        0.5: (3, [1, 2, 3], [0, 2, 4]), 0.8: (4, [0, 1, 2, 3], [0, 1, 2, 4]), 1.0: (5, [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]),
    }
    for share, (k, hi, lo) in expect.items():
        assert num_deleted(share, 5) == k
        assert deleted_steps(h, share, "highest") == hi
        assert deleted_steps(h, share, "lowest") == lo
    # all equal: both orders delete from the first step on
    assert deleted_steps([1.0] * 4, 0.5, "highest") == deleted_steps([1.0] * 4, 0.5, "lowest") == [0, 1]
    # random: a seeded permutation per (seed, solution); nested over shares; seeds differ
    r = deletion_ranking(h, "random", seed=3, solution_index=7)
    assert sorted(r) == list(range(5)) and r == deletion_ranking(h, "random", seed=3, solution_index=7)
    assert r == np.random.default_rng([3, 7]).permutation(5).tolist()
    prev: set[int] = set()
    for share in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        cur = set(deleted_steps(h, share, "random", seed=3, solution_index=7))
        assert prev <= cur and len(cur) == num_deleted(share, 5)
        prev = cur
    perms = {tuple(deletion_ranking(list(range(8)), "random", seed=s, solution_index=0)) for s in range(5)}
    assert len(perms) == 5
    with pytest.raises(ValueError, match="highest"):
        deletion_ranking(h, "middle")


def _literal(model, tok, rows, sols, profiles, shares, order, seed, include_answer):
    """Accuracy per share, one solution and one greedy continuation at a time, the steps deleted as
    text lines (every step of the arithmetic format is one line)."""
    acc = []
    for s in shares:
        ok = []
        for i, (sol, prof) in enumerate(zip(sols, profiles)):
            text = tok.decode(sol.response_ids, skip_special_tokens=True)
            lines = text.split("\n")
            assert len(lines) == prof["num_steps"]
            pool = len(lines) if include_answer else len(lines) - 1
            gone = set(deleted_steps(prof["step_h"][:pool], s, order, seed, i))
            kept = "".join(lines[k] + "\n" for k in range(pool) if k not in gone)
            if include_answer and pool - 1 not in gone:
                kept = kept[:-1]  # the kept last step has no newline of its own (its EOS is dropped)
            ids = sol.prompt_ids + tok.encode(kept, add_special_tokens=False)
            (cont,) = generate(model, [ids], eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, max_new_tokens=30,
                               temperature=0.0, batch_size=1)
            ok.append(grade(rows[sol.row], kept + tok.decode(cont, skip_special_tokens=True)) >= 1.0)
        acc.append(float(np.mean(ok)))
    return acc


@pytest.mark.parametrize("include_answer", [False, True])
def test_run_deletion_equals_literal_implementation(tiny, include_answer):
    model, tok = tiny
    rows = rows_with_user_prompts("arithmetic", 4, seed=11, levels=(2, 3, 4))
    sols = expert_solutions(tok, rows, encode_prompts_of(tok, rows))
    ents = token_entropies(model, sols, pad_id=tok.pad_token_id, temperature=1.0)
    profiles = profile_solutions(sols, ents, (3,))
    shares = [0.0, 0.34, 0.67, 1.0]  # pools of 2-4 steps: k = 0, 1, 1-3, all
    res = run_deletion(model, tok, sols, profiles, rows, grade, shares=shares, seeds=(0, 1), include_answer=include_answer,
                       max_new_tokens=30, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, batch_size=5)
    assert res["solutions"] == 4 and res["skipped_one_step"] == 0
    for order in ("highest", "lowest"):
        assert res["orders"][order]["accuracy"] == _literal(model, tok, rows, sols, profiles, shares, order, 0, include_answer)
    seeds = [_literal(model, tok, rows, sols, profiles, shares, "random", sd, include_answer) for sd in (0, 1)]
    assert res["orders"]["random"]["seed_accuracy"] == {"0": seeds[0], "1": seeds[1]}
    assert res["orders"]["random"]["accuracy"] == pytest.approx(np.mean(seeds, axis=0).tolist())
    a0 = {o: r["accuracy"][0] for o, r in res["orders"].items()}
    assert len(set(a0.values())) == 1  # share 0: the same prefix for every order
    pools = [p["num_steps"] - (0 if include_answer else 1) for p in profiles]
    assert res["orders"]["highest"]["realized_share"][2] == pytest.approx(np.mean([num_deleted(0.67, n) / n for n in pools]))
    gap = res["gaps"]["lowest-highest"][1]
    assert gap["mean"] == pytest.approx(res["orders"]["lowest"]["accuracy"][1] - res["orders"]["highest"]["accuracy"][1])
    assert gap["ci95"][0] <= gap["mean"] <= gap["ci95"][1]
    json.dumps(res)  # JSON-ready


def test_one_step_solutions_are_left_out(tiny):
    model, tok = tiny
    rows = [{"prompt": "Compute 2+3.", "answer": "5", "data_source": "echorl/arithmetic", "solution": "Answer: 5"}]
    sols = expert_solutions(tok, rows, encode_prompts_of(tok, rows))
    profiles = profile_solutions(sols, [torch.ones(len(sols[0].response_ids))], (3,))
    res = run_deletion(model, tok, sols, profiles, rows, grade, shares=[0.0, 0.5], seeds=(0,), max_new_tokens=8,
                       eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id)
    assert res["solutions"] == 0 and res["skipped_one_step"] == 1 and res["continuations"] == 0
    assert res["orders"] == {}
