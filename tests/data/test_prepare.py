"""Tests of echorl/data/prepare.py and scripts/prepare_data.py on small parquet/JSONL files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from echorl.data.prepare import DAPO_PREFIX, DAPO_SUFFIX, DataFormatError, convert_rows, prepare, read_rows

ROOT = Path(__file__).resolve().parents[2]
SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."


def _expected(source, question, answer, split, index):
    return {"data_source": source,
            "prompt": [{"role": "user", "content": question + SUFFIX}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": answer},
            "extra_info": {"split": split, "index": index}}


def _write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


OPENR1 = [  # OpenR1-Math-220k / 46k columns
    {"problem": "What is $1+1$?", "solution": "1+1=2, so \\boxed{2}", "answer": "2",
     "problem_type": "Algebra", "uuid": "a"},
    {"problem": "Compute $\\frac{3}{6}$.", "solution": "...", "answer": "\\frac{1}{2}",
     "problem_type": "Algebra", "uuid": "b"},
]
DAPO = [  # DAPO-Math-17k: verl layout, DAPO template, each problem repeated
    {"data_source": "math_dapo",
     "prompt": [{"content": DAPO_PREFIX + "Find $x$ if $2x=10$." + DAPO_SUFFIX, "role": "user"}],
     "ability": "MATH", "reward_model": {"ground_truth": "5", "style": "rule-lighteval/MATH_v2"},
     "extra_info": {"index": "u1"}},
] * 3 + [
    {"data_source": "math_dapo",
     "prompt": [{"content": DAPO_PREFIX + "How many primes are below 10?" + DAPO_SUFFIX, "role": "user"}],
     "ability": "MATH", "reward_model": {"ground_truth": "4", "style": "rule-lighteval/MATH_v2"},
     "extra_info": {"index": "u2"}},
]
MATH = [  # hendrycks MATH (answer in the solution) and MATH-500 (answer column)
    {"problem": "Simplify $\\sqrt{4}$.", "level": "Level 1", "type": "Algebra",
     "solution": "We have $\\sqrt{4} = \\boxed{2}$."},
    {"problem": "What is $\\frac{1}{2}+\\frac{1}{4}$?", "solution": "It is $\\boxed{\\frac{3}{4}}$.",
     "answer": "\\frac{3}{4}", "subject": "Prealgebra", "level": "Level 2", "unique_id": "x"},
]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_openr1(tmp_path, suffix):
    src = _write(tmp_path / f"openr1{suffix}", OPENR1)
    out = tmp_path / "out.parquet"
    assert prepare([src], out, "openr1") == 2
    assert pq.read_table(out).to_pylist() == [
        _expected("openr1_math_46k", "What is $1+1$?", "2", "train", 0),
        _expected("openr1_math_46k", "Compute $\\frac{3}{6}$.", "\\frac{1}{2}", "train", 1)]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_dapo_strips_its_template_and_dedups(tmp_path, suffix):
    src = _write(tmp_path / f"dapo{suffix}", DAPO)
    out = tmp_path / "out.parquet"
    assert prepare([src], out, "dapo") == 2
    assert pq.read_table(out).to_pylist() == [
        _expected("dapo_math_17k", "Find $x$ if $2x=10$.", "5", "train", 0),
        _expected("dapo_math_17k", "How many primes are below 10?", "4", "train", 1)]
    assert prepare([src], out, "dapo", dedup=False) == 4


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_math(tmp_path, suffix):
    src = _write(tmp_path / f"math{suffix}", MATH)
    out = tmp_path / "out.parquet"
    assert prepare([src], out, "math", split="test", data_source="math500") == 2
    assert pq.read_table(out).to_pylist() == [
        _expected("math500", "Simplify $\\sqrt{4}$.", "2", "test", 0),
        _expected("math500", "What is $\\frac{1}{2}+\\frac{1}{4}$?", "\\frac{3}{4}", "test", 1)]


def test_output_reads_back_as_verl_dataset_rows(tmp_path):
    """The prompt column is a list of {role, content} structs, as verl's RLHFDataset expects."""
    out = tmp_path / "out.parquet"
    prepare([_write(tmp_path / "m.jsonl", MATH)], out, "math")
    schema = pq.read_schema(out)
    assert str(schema.field("prompt").type) == "list<element: struct<role: string, content: string>>"
    assert str(schema.field("reward_model").type) == "struct<style: string, ground_truth: string>"


def test_multiple_inputs_are_numbered_and_deduplicated_across_files(tmp_path):
    a = _write(tmp_path / "a.jsonl", DAPO[:2])
    b = _write(tmp_path / "b.parquet", DAPO[2:])
    out = tmp_path / "out.parquet"
    assert prepare([a, b], out, "dapo") == 2
    assert [r["extra_info"]["index"] for r in pq.read_table(out).to_pylist()] == [0, 1]


@pytest.mark.parametrize("fmt,rows,match", [
    ("openr1", [OPENR1[0], {"problem": "no answer here", "uuid": "c"}],
     r"openr1\.jsonl: row 1: missing field 'answer' for format 'openr1' \(looked for 'answer', "
     r"'reward_model\.ground_truth'\); the row has columns \['problem', 'uuid'\]"),
    ("openr1", [{"answer": "3"}],
     r"row 0: missing field 'question' for format 'openr1' \(looked for 'problem', 'question', "
     r"last user message of 'prompt'\)"),
    ("math", [MATH[0], MATH[1], {"problem": "p", "solution": "no box"}],
     r"row 2: field 'answer' \(column 'solution'\): no \\boxed\{\} answer in 'solution'"),
    ("dapo", [{"prompt": [{"role": "user", "content": "plain question"}],
               "reward_model": {"ground_truth": "1"}}],
     r"row 0: field 'question' \(column '<chat>'\): the user message does not have DAPO-Math-17k's"),
    ("openr1", [{"problem": "q", "answer": "  "}], r"row 0: field 'answer' \(column 'answer'\) is empty"),
])
def test_errors_name_the_row_and_field(tmp_path, fmt, rows, match):
    src = _write(tmp_path / f"{fmt}.jsonl", rows)
    with pytest.raises(DataFormatError, match=match):
        prepare([src], tmp_path / "out.parquet", fmt)
    assert not (tmp_path / "out.parquet").exists()


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset file not found"):
        read_rows(tmp_path / "nope.parquet")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        read_rows(tmp_path / "x.csv")
    (tmp_path / "bad.jsonl").write_text('{"problem": "a", "answer": "1"}\n{oops\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl: line 2 \(row 1\) is not valid JSON"):
        read_rows(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="unknown format 'gsm8k'"):
        convert_rows([], "gsm8k")
    with pytest.raises(ValueError, match="template must contain"):
        convert_rows([], "math", template="no placeholder")


def test_custom_template_keeps_literal_braces():
    rows = convert_rows([{"problem": "1+1?", "answer": 2.0}], "openr1", template="Q: {question} \\boxed{}")
    assert rows[0]["prompt"][0]["content"] == "Q: 1+1? \\boxed{}"
    assert rows[0]["reward_model"]["ground_truth"] == "2"


def test_script_cli(tmp_path, capsys):
    src = _write(tmp_path / "m.jsonl", MATH)
    out = tmp_path / "o.parquet"
    r = subprocess.run([sys.executable, str(ROOT / "scripts/prepare_data.py"), "--format", "math",
                        "--input", str(src), "--output", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"wrote 2 rows to {out}" in r.stdout
    # errors: exit code 2 and the message on stderr (in-process: a second interpreter is slow)
    import importlib.util
    spec = importlib.util.spec_from_file_location("prepare_data_script", ROOT / "scripts/prepare_data.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    bad = _write(tmp_path / "bad.jsonl", [{"problem": "p"}])
    assert script.main(["--format", "math", "--input", str(bad), "--output", str(out)]) == 2
    assert "row 0: missing field 'answer'" in capsys.readouterr().err


def test_dropped_duplicates_are_counted_in_the_log(tmp_path, caplog):
    src = _write(tmp_path / "dapo.jsonl", DAPO)
    with caplog.at_level("WARNING", logger="echorl.data.prepare"):
        assert prepare([src], tmp_path / "out.parquet", "dapo") == 2
    assert "dropped 2 duplicate (question, answer) rows of 4" in caplog.text
