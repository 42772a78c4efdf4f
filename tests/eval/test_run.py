"""echorl/eval/run.py end to end: `echorl eval` of the shipped tiny model on tiny files; the summary
equals what the per-sample JSONL implies (recomputed here with the literal formulas)."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter

import pytest

from echorl.cli import main as cli_main
from echorl.data.prepare import convert_rows, write_parquet
from echorl.tasks import arithmetic

N = 3
RECORD_KEYS = {"benchmark", "group", "problem_id", "sample", "data_source", "grader", "prompt", "response", "answer",
               "pred", "score", "correct", "num_tokens", "finished"}


def _literal(samples):
    """avg@n, pass@k (math.comb), maj@k (Counter, ties to the first) from per-sample records."""
    by = {}
    for s in samples:
        by.setdefault(s["problem_id"], []).append(s)
    out = {}
    for k in (1, 2, N):
        p, m = [], []
        for ss in by.values():
            ss.sort(key=lambda s: s["sample"])
            c = sum(s["correct"] for s in ss)
            p.append(1 - math.comb(N - c, k) / math.comb(N, k))
            votes = Counter(s["pred"] for s in ss[:k] if s["pred"] is not None)
            if votes:
                top = max(votes.values())
                win = next(s for s in ss[:k] if s["pred"] is not None and votes[s["pred"]] == top)
                m.append(float(win["correct"]))
            else:
                m.append(0.0)
        out[f"pass@{k}"], out[f"maj@{k}"] = sum(p) / len(p), sum(m) / len(m)
    out[f"avg@{N}"] = sum(s["correct"] for s in samples) / len(samples)
    out["mean_score"] = sum(s["score"] for s in samples) / len(samples)
    return out


@pytest.mark.slow
def test_eval_cli_end_to_end(tmp_path):
    arith = tmp_path / "arith.jsonl"
    rows = arithmetic.generate(4, seed=5, levels=[1, 1, 2, 3])
    arith.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "q1", "prompt": "Capital of France? A. Berlin B. Paris", "answer": "B", "options": ["Berlin", "Paris"]},
        {"id": "q2", "prompt": "2+2? A. 4 B. 5", "answer": 0, "options": ["4", "5"]}]))
    verl_rows = convert_rows([{"problem": "What is 1+1?", "answer": "2"}], "math")  # verl's parquet layout
    write_parquet(verl_rows, tmp_path / "math.parquet")
    (tmp_path / "b.yaml").write_text(f"benchmarks:\n  - {{name: mathp, source: {tmp_path / 'math.parquet'}, "
                                     "group: ood, grader: math}\n")
    out = tmp_path / "out"
    rc = cli_main(["eval", "tiny", "--bench", f"arith={arith}", "--bench", f"mc={mc}:ood",
                   "--benchmarks", str(tmp_path / "b.yaml"), "-n", str(N), "--max-new-tokens", "48",
                   "--batch-size", "8", "--workers", "1", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert len(samples) == (4 + 2 + 1) * N
    assert all(set(s) == RECORD_KEYS for s in samples)
    by_bench = {b: [s for s in samples if s["benchmark"] == b] for b in ("arith", "mc", "mathp")}
    assert {s["grader"] for s in by_bench["arith"]} == {"task"}
    assert {s["grader"] for s in by_bench["mc"]} == {"mc"}
    assert {s["grader"] for s in by_bench["mathp"]} == {"math"}
    assert [s["answer"] for s in by_bench["mc"] if s["sample"] == 0] == ["B", "A"]
    assert [s["problem_id"] for s in by_bench["mc"] if s["sample"] == 0] == ["q1", "q2"]
    # grading: the task verifier applied to the recorded response gives the recorded score
    gold = {str(i): r["answer"] for i, r in enumerate(rows)}
    for s in by_bench["arith"]:
        assert s["score"] == arithmetic.score(s["response"], gold[s["problem_id"]])
        assert s["correct"] == (s["score"] >= 1.0)
        assert s["pred"] == arithmetic.extract_answer(s["response"])
    # the run is not vacuous: the tiny model solves some arithmetic problems and misses others
    assert 0 < summary["benchmarks"]["arith"][f"avg@{N}"] < 1
    # summary.json == the literal recomputation from samples.jsonl
    for b, ss in by_bench.items():
        got = summary["benchmarks"][b]
        assert got["problems"] == len({s["problem_id"] for s in ss}) and got["n"] == N
        for key, v in _literal(ss).items():
            assert got[key] == pytest.approx(v, abs=1e-12), (b, key)
        assert got["mean_tokens"] == pytest.approx(sum(s["num_tokens"] for s in ss) / len(ss))
        assert got["no_answer"] == pytest.approx(sum(s["pred"] is None for s in ss) / len(ss))
    g = summary["groups"]
    assert g["id"]["benchmarks"] == ["arith"] and sorted(g["ood"]["benchmarks"]) == ["mathp", "mc"]
    assert g["ood"][f"pass@{N}"] == pytest.approx((summary["benchmarks"]["mc"][f"pass@{N}"]
                                                  + summary["benchmarks"]["mathp"][f"pass@{N}"]) / 2)
    assert g["all"][f"avg@{N}"] == pytest.approx(sum(summary["benchmarks"][b][f"avg@{N}"] for b in by_bench) / 3)
    # the CSV and markdown carry the same numbers
    table = {r["benchmark"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert set(table) == {"arith", "mc", "mathp", "macro/id", "macro/ood", "macro/all"}
    assert float(table["arith"][f"pass@{N}"]) == pytest.approx(summary["benchmarks"]["arith"][f"pass@{N}"])
    assert f"| arith | id | 4 | {summary['benchmarks']['arith'][f'avg@{N}']:.4f} |" in (out / "summary.md").read_text()


def test_eval_cli_errors_name_the_problem(tmp_path, capsys):
    assert cli_main(["eval", "tiny", "--out", str(tmp_path)]) == 2
    assert "no benchmark" in capsys.readouterr().err
    assert cli_main(["eval", "tiny", "--bench", "x=arithmetic", "-n", "2", "--temperature", "0"]) == 2
    assert "temperature=0 (greedy)" in capsys.readouterr().err
    assert cli_main(["eval", "tiny", "--bench", f"x={tmp_path / 'missing.jsonl'}", "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def _sample(bench, pid, i, response, grader="math", pred=None):
    return {"benchmark": bench, "group": "id", "problem_id": pid, "sample": i, "data_source": None, "grader": grader,
            "prompt": "p", "response": response, "answer": "112", "pred": pred, "score": 0.0, "correct": False,
            "num_tokens": 5, "finished": True}


def test_no_answer_share_and_the_warning_that_names_the_grader_that_reads_them():
    from echorl.eval.run import no_answer_warnings, summarize

    # chain-task responses ("Answer: 112") graded by the math grader (last \boxed{}): 3 of 4 unread
    samples = [_sample("chains", "0", 0, "3*4=12\nAnswer: 112"), _sample("chains", "0", 1, "Answer: 7"),
               _sample("chains", "1", 0, "x\nAnswer: 5"), _sample("chains", "1", 1, "\\boxed{112}", pred="112"),
               _sample("ok", "0", 0, "\\boxed{1}", pred="1"), _sample("ok", "0", 1, "none")]
    summary = summarize(samples)
    assert summary["benchmarks"]["chains"]["no_answer"] == 0.75
    assert summary["benchmarks"]["ok"]["no_answer"] == 0.5
    assert summary["groups"]["all"]["no_answer"] == pytest.approx(0.625)
    msgs = no_answer_warnings(samples, summary)
    assert len(msgs) == 1  # 'ok' is at 50%, not above it
    assert "'chains': 75% of samples have no answer the 'math' grader can extract" in msgs[0]
    assert "100% of them hold an answer grader='task' reads" in msgs[0]


def test_no_answer_warning_when_no_grader_reads_them():
    from echorl.eval.run import no_answer_warnings, summarize

    samples = [_sample("b", "0", 0, "I do not know"), _sample("b", "0", 1, "")]
    (msg,) = no_answer_warnings(samples, summarize(samples))
    assert "100% of samples" in msg and "no grader finds an answer" in msg


def test_eval_help_lists_the_metrics(capsys):
    with pytest.raises(SystemExit):
        cli_main(["eval", "--help"])
    out = capsys.readouterr().out
    for metric in ("avg@n", "pass@k", "maj@k", "no_answer", "truncated"):
        assert metric in out
