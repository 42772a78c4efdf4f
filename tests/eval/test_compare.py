"""echorl/eval/compare.py: paired per-problem differences of two hand-written per-sample files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from echorl.eval.compare import compare_samples
from echorl.eval.run import read_samples


def _records(bench, group, correct_by_problem, preds=None):
    out = []
    for pid, flags in enumerate(correct_by_problem):
        for s, c in enumerate(flags):
            out.append({"benchmark": bench, "group": group, "problem_id": str(pid), "sample": s,
                        "pred": (preds[pid][s] if preds else ("ok" if c else "bad")), "correct": bool(c),
                        "score": float(c)})
    return out


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# A: benchmark x (id): per-problem avg@2 = 0, .5, .5, 1 ; benchmark y (ood): 0, 0, 1
# B: benchmark x: 1, .5, 1, 1 (diffs +1, 0, +.5, 0 -> mean .375) ; y: 0, .5, 1 (diffs 0, .5, 0 -> 1/6)
A = _records("x", "id", [[0, 0], [1, 0], [0, 1], [1, 1]]) + _records("y", "ood", [[0, 0], [0, 0], [1, 1]])
B = _records("x", "id", [[1, 1], [0, 1], [1, 1], [1, 1]]) + _records("y", "ood", [[0, 0], [1, 0], [1, 1]])


def test_paired_differences_from_files(tmp_path):
    a = read_samples(_write(tmp_path / "a.jsonl", A))
    b = read_samples(_write(tmp_path / "b.jsonl", B))
    res = compare_samples(a, b, resamples=2000, seed=7)
    x, y = res["benchmarks"]["x"], res["benchmarks"]["y"]
    assert (x["a"], x["b"], x["diff"]) == pytest.approx((0.5, 0.875, 0.375))
    assert (y["a"], y["b"], y["diff"]) == pytest.approx((1 / 3, 0.5, 1 / 6))
    assert res["groups"]["id"]["diff"] == pytest.approx(0.375)
    assert res["groups"]["ood"]["diff"] == pytest.approx(1 / 6)
    assert res["groups"]["all"]["diff"] == pytest.approx((0.375 + 1 / 6) / 2)
    # the bootstrap of x resamples its 4 paired diffs [1, 0, .5, 0]: the interval lies in [0, 1]
    assert 0.0 <= x["lo"] <= x["diff"] <= x["hi"] <= 1.0
    # literal bootstrap with the same generator calls gives the same interval
    rng = np.random.default_rng(7)
    dx = np.array([1.0, 0.0, 0.5, 0.0])
    reps_x = dx[rng.integers(0, 4, size=(2000, 4))].mean(axis=1)
    dy = np.array([0.0, 0.5, 0.0])
    reps_y = dy[rng.integers(0, 3, size=(2000, 3))].mean(axis=1)
    assert (x["lo"], x["hi"]) == pytest.approx(tuple(np.quantile(reps_x, (0.025, 0.975))), abs=1e-12)
    macro = (reps_x + reps_y) / 2
    assert (res["groups"]["all"]["lo"], res["groups"]["all"]["hi"]) == pytest.approx(
        tuple(np.quantile(macro, (0.025, 0.975))), abs=1e-12)
    # seeded: the same seed gives the same interval, A vs A gives exactly 0
    assert compare_samples(a, b, resamples=2000, seed=7) == res
    same = compare_samples(a, a, resamples=100)
    assert all(v["diff"] == v["lo"] == v["hi"] == 0.0 for v in same["benchmarks"].values())


def test_constant_difference_has_a_degenerate_interval():
    a = _records("x", "id", [[0, 0]] * 5)
    b = _records("x", "id", [[1, 0]] * 5)
    r = compare_samples(a, b, resamples=500)["benchmarks"]["x"]
    assert r["diff"] == r["lo"] == r["hi"] == 0.5


def test_other_metrics_pass_and_maj():
    a = _records("x", "id", [[0, 1], [0, 0]])
    b = _records("x", "id", [[1, 1], [0, 1]])
    r = compare_samples(a, b, metric="pass@2", resamples=10)["benchmarks"]["x"]
    assert (r["a"], r["b"]) == (0.5, 1.0)
    # maj@2 ties go to the first sample: a -> [wrong, wrong], b -> [right, wrong]
    r = compare_samples(a, b, metric="maj@2", resamples=10)["benchmarks"]["x"]
    assert (r["a"], r["b"]) == (0.0, 0.5)
    with pytest.raises(ValueError, match="k must be <= n"):
        compare_samples(a, b, metric="pass@4")


def test_mismatched_problems_are_refused():
    a = _records("x", "id", [[0], [1]])
    b = _records("x", "id", [[0], [1], [1]])
    with pytest.raises(ValueError, match="different problems"):
        compare_samples(a, b)
    with pytest.raises(ValueError, match="different benchmarks"):
        compare_samples(a, _records("z", "id", [[0], [1]]))


def test_compare_cli_prints_and_writes_json(tmp_path, capsys):
    from echorl.cli import main as cli_main

    a, b = _write(tmp_path / "a.jsonl", A), _write(tmp_path / "b.jsonl", B)
    assert cli_main(["eval", "compare", str(a), str(b), "--resamples", "200", "--out", str(tmp_path / "d.json")]) == 0
    printed = capsys.readouterr().out
    assert "macro/all" in printed and "+0.3750" in printed
    res = json.loads((tmp_path / "d.json").read_text())
    assert res["benchmarks"]["x"]["diff"] == pytest.approx(0.375)
    assert cli_main(["eval", "compare", str(a), str(tmp_path / "missing.jsonl")]) == 2
