"""Tests of echorl/data/prepare.py and scripts/prepare_data.py on small parquet/JSONL files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from echorl.data.prepare import (
    DAPO_PREFIX,
    DAPO_SUFFIX,
    DataFormatError,
    convert_rows,
    prepare,
    read_rows,
    write_parquet,
)

ROOT = Path(__file__).resolve().parents[2]
SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."


def _expected(source, question, answer, split, index, **trace):
    """An output row; ``target=<text or None>`` for the formats that carry an expert trace."""
    row = {"data_source": source, "prompt": [{"role": "user", "content": question + SUFFIX}]}
    if "target" in trace:
        row["target"] = None if trace["target"] is None else [{"role": "assistant", "content": trace["target"]}]
    return {**row, "ability": "math", "reward_model": {"style": "rule", "ground_truth": answer},
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
    assert pq.read_table(out).to_pylist() == [  # OpenR1's human 'solution' is not an expert trace: no column
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
    plain = _write(tmp_path / "plain.jsonl", OPENR1)  # no expert traces: refused as LUFFY data
    assert script.main(["--format", "luffy", "--input", str(plain), "--output", str(out)]) == 2
    assert "no row has an expert trace for format 'luffy'" in capsys.readouterr().err


def test_dropped_duplicates_are_counted_in_the_log(tmp_path, caplog):
    src = _write(tmp_path / "dapo.jsonl", DAPO)
    with caplog.at_level("WARNING", logger="echorl.data.prepare"):
        assert prepare([src], tmp_path / "out.parquet", "dapo") == 2
    assert "dropped 2 duplicate (question, answer) rows of 4" in caplog.text


# ---------------------------------------------------------------------------- expert traces (LUFFY, UFT)
# LUFFY's training parquet (Elliott/Openr1-Math-46k-8192, written by LUFFY's data/prepare_train.py;
# the layout of its luffy/scripts/data/prepare_openr1_data_v6.py and of its shipped data/valid.parquet):
# a system instruction and the bare problem as chat messages, the DeepSeek-R1 trace as one assistant
# message in `target`, the answer in reward_model.ground_truth.
LUFFY_SYSTEM = ("Your task is to follow a systematic, thorough reasoning process before providing the final "
                "solution. ... If applicable, include the answer in \\boxed{} for closed-form results.")
R1_TRACES = ["<think>\nOkay, so 2 + 3.\n\nThat is 5.\n</think>\n\nThe sum is $\\boxed{5}$.",
             "<think>\nHalf of 8 is 4.  \n</think>\n$\\boxed{4}$\n"]


def _luffy_row(i: int, problem: str, answer: str, trace: str | None) -> dict:
    return {"data_source": "",
            "prompt": [{"role": "system", "content": LUFFY_SYSTEM}, {"role": "user", "content": problem}],
            "target": None if trace is None else [{"role": "assistant", "content": trace}],
            "ability": "math", "reward_model": {"style": "rule", "ground_truth": answer},
            "extra_info": {"split": "default", "index": i}}


LUFFY = [_luffy_row(0, "What is $2+3$?", "5", R1_TRACES[0]),
         _luffy_row(1, "What is half of $8$?", "4", R1_TRACES[1]),
         _luffy_row(2, "What is $1+1$?", "2", None)]  # LUFFY's loader trains such a row on-policy only

# UFT's files (github.com/liumy2010/UFT data/math/*.parquet): its wrapped prompt in `prompt` and
# `question`, the MATH solution cut into pieces in `hint`, the solution (not the answer) plus UFT's
# answer tags in `answer`, the bare problem and the answer in reward_model.ground_truth.
UFT_WRAP = ("A conversation between User and Assistant. ...\nUser: {q} Show your work in <think> </think> tags. ..."
            "\nAssistant: Let me solve this step by step.\n<think> ")
UFT_HINTS = [["First, $6300 = 2^2 \\cdot 3^2 \\cdot 5^2 \\cdot 7$. ", "The odd divisors are $3^a5^b7^c$.\n", "\n",
              " So the sum is $(1+3+9)(1+5+25)(1+7)=\\boxed{3224}$."],
             ["$7 \\cdot 6 = 42$."]]


def _uft_row(i: int, q: str, answer: str, hint: list[str]) -> dict:
    return {"level": "Level 5", "type": "Number Theory", "data_source": "DigitalLearningGmbH/MATH-lighteval",
            "prompt": [{"content": UFT_WRAP.format(q=q), "role": "user"}], "hint": hint,
            "question": UFT_WRAP.format(q=q), "answer": "".join(hint) + f" </think>\n<answer> {answer} </answer>",
            "ability": "math", "reward_model": {"ground_truth": {"question": q, "target": answer}, "style": "rule"},
            "extra_info": {"index": 3538 + i, "split": "train"}}


UFT = [_uft_row(0, "What is the sum of all of the odd divisors of $6300$?", "3224", UFT_HINTS[0]),
       _uft_row(1, "What is $7 \\cdot 6$?", "42", UFT_HINTS[1])]


def _write_pandas(path: Path, rows: list[dict]) -> Path:
    """A parquet as the authors wrote theirs (pandas ``DataFrame.to_parquet``)."""
    import pandas as pd

    pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_luffy_layout_carries_the_r1_trace_exactly(tmp_path, suffix, caplog):
    src = (_write_pandas if suffix == ".parquet" else _write)(tmp_path / f"openr1{suffix}", LUFFY)
    out = tmp_path / "out.parquet"
    with caplog.at_level("WARNING", logger="echorl.data.prepare"):
        assert prepare([src], out, "luffy") == 3
    assert pq.read_table(out).to_pylist() == [
        _expected("openr1_math_46k", "What is $2+3$?", "5", "train", 0, target=R1_TRACES[0]),
        _expected("openr1_math_46k", "What is half of $8$?", "4", "train", 1, target=R1_TRACES[1]),
        _expected("openr1_math_46k", "What is $1+1$?", "2", "train", 2, target=None)]
    assert f"{src}: 1 of 3 rows have no expert trace (looked for 'target')" in caplog.text
    # the same file through --format openr1 (the GRPO / DAPO path) carries the traces too
    assert prepare([src], out, "openr1") == 3
    assert [r["target"] for r in pq.read_table(out).to_pylist()] == [
        [{"role": "assistant", "content": t}] for t in R1_TRACES] + [None]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_uft_layout_joins_the_hint_pieces_into_the_trace(tmp_path, suffix):
    src = (_write_pandas if suffix == ".parquet" else _write)(tmp_path / f"uft{suffix}", UFT)
    out = tmp_path / "out.parquet"
    assert prepare([src], out, "uft") == 2
    assert pq.read_table(out).to_pylist() == [
        _expected("uft_math", "What is the sum of all of the odd divisors of $6300$?", "3224", "train", 0,
                  target="First, $6300 = 2^2 \\cdot 3^2 \\cdot 5^2 \\cdot 7$. The odd divisors are $3^a5^b7^c$.\n\n"
                         " So the sum is $(1+3+9)(1+5+25)(1+7)=\\boxed{3224}$."),
        _expected("uft_math", "What is $7 \\cdot 6$?", "42", "train", 1, target="$7 \\cdot 6 = 42$.")]


def test_openr1_220k_generations_give_the_first_nonempty_trace():
    rows = convert_rows([{"problem": "1+1?", "answer": "2", "generations": ["", "<think>\nR1: 2\n</think>", "x"]},
                         {"problem": "2+2?", "answer": "4", "generations": []}], "openr1")
    assert [r["target"] for r in rows] == [[{"role": "assistant", "content": "<think>\nR1: 2\n</think>"}], None]


@pytest.mark.parametrize("fmt,rows,match", [
    # plain OpenR1 problems given as LUFFY data: no trace anywhere
    ("luffy", OPENR1, r"openr1\.jsonl: no row has an expert trace for format 'luffy' \(looked for 'target'\); "
                      r"LUFFY and UFT would train plain GRPO on this file\. Fix: .*--format luffy"),
    ("luffy", [_luffy_row(0, "q", "1", None), _luffy_row(1, "r", "2", "")], r"no row has an expert trace"),
    ("uft", [_uft_row(0, "q", "1", [""])], r"no row has an expert trace for format 'uft' \(looked for 'hint'\)"),
])
def test_required_traces_missing_from_the_whole_file_is_an_error(tmp_path, fmt, rows, match):
    src = _write(tmp_path / "openr1.jsonl", rows)
    with pytest.raises(DataFormatError, match=match):
        prepare([src], tmp_path / "out.parquet", fmt)
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("fmt,row,match", [
    ("luffy", {**LUFFY[0], "target": [{"role": "assistant", "text": "t"}]},
     r"row 0: expert trace column 'target': the message has no 'content' \(keys \['role', 'text'\]\)"),
    ("luffy", {**LUFFY[0], "target": 3}, r"row 0: expert trace column 'target': expected a string or chat messages"),
    ("uft", {**UFT[0], "hint": [1, 2]}, r"row 0: expert trace column 'hint': expected a list of strings"),
    ("uft", {**UFT[0], "reward_model": {"ground_truth": {"numbers": [1, 2], "target": 3}}},  # UFT's countdown file
     r"row 0: missing field 'question' for format 'uft' \(looked for 'reward_model\.ground_truth\.question'\)"),
])
def test_malformed_traces_name_the_row_and_column(tmp_path, fmt, row, match):
    with pytest.raises(DataFormatError, match=match):
        prepare([_write(tmp_path / "x.jsonl", [row])], tmp_path / "out.parquet", fmt)


def test_traces_of_some_files_keep_the_column_for_every_row(tmp_path):
    with_traces, without = _write(tmp_path / "a.jsonl", LUFFY[:1]), _write(tmp_path / "b.jsonl", OPENR1)
    out = tmp_path / "out.parquet"
    assert prepare([without, with_traces], out, "openr1") == 3
    assert [r["target"] for r in pq.read_table(out).to_pylist()] == [
        None, None, [{"role": "assistant", "content": R1_TRACES[0]}]]
    with pytest.raises(ValueError, match=r"row 1 has the columns \['a', 'c'\], row 0 \['a', 'b'\]"):
        write_parquet([{"a": 1, "b": 2}, {"a": 1, "c": 2}], out)


def test_trace_reaches_the_rows_verls_dataset_hands_to_the_agent_loop(tmp_path):
    """verl's own RLHFDataset reads the converted file; LUFFY / UFT read the trace from its rows."""
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from echorl.methods.luffy import expert_text
    from echorl.models.tiny import SHIPPED_DIR

    out = tmp_path / "out.parquet"
    prepare([_write_pandas(tmp_path / "openr1.parquet", LUFFY)], out, "luffy")
    ds = RLHFDataset(str(out), AutoTokenizer.from_pretrained(str(SHIPPED_DIR)),
                     OmegaConf.create({"cache_dir": str(tmp_path / "cache"), "filter_overlong_prompts": False}))
    assert [expert_text(ds[i]) for i in range(len(ds))] == [*R1_TRACES, None]
