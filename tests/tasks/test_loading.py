"""Tests for echorl/tasks/__init__.py: registry, load_dataset, row validation, compute_score."""

from __future__ import annotations

import json

import pytest

from echorl.tasks import compute_score, get_task, load_dataset, task_names, validate_rows


def test_registry_lists_tasks_and_refuses_unknown():
    names = task_names()
    assert "arithmetic" in names
    assert {"rg/gsm_symbolic", "rg/basic_arithmetic", "rg/countdown"} <= set(names)
    with pytest.raises(ValueError, match=r"unknown task 'nope'.*arithmetic"):
        get_task("nope")


def test_load_dataset_generates_registered_task():
    rows = load_dataset("arithmetic", n=12, seed=3, levels=(1,))
    assert len(rows) == 12 and {r["level"] for r in rows} == {1}
    assert rows == get_task("arithmetic").generate(12, seed=3, levels=(1,))


def test_jsonl_and_json_and_parquet_roundtrip(tmp_path):
    rows = load_dataset("arithmetic", n=5, seed=0)
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_dataset(str(p)) == rows
    assert load_dataset(str(p), n=2) == rows[:2]
    pj = tmp_path / "d.json"
    pj.write_text(json.dumps(rows))
    assert load_dataset(str(pj)) == rows
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    assert load_dataset(str(tmp_path / "d.parquet")) == rows


def test_missing_field_error_names_row_and_field(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"prompt": "a", "answer": "1"}) + "\n" + json.dumps({"prompt": "b", "answer": "2"})
                 + "\n" + json.dumps({"prompt": "c"}) + "\n")
    with pytest.raises(ValueError, match=r"row 2 is missing required field 'answer'"):
        load_dataset(str(p))
    p.write_text(json.dumps({"answer": "1"}) + "\n")
    with pytest.raises(ValueError, match=r"row 0 is missing required field 'prompt'"):
        load_dataset(str(p))
    p.write_text(json.dumps({"prompt": "a", "answer": "1"}) + "\n" + json.dumps(["not", "a", "dict"]) + "\n")
    with pytest.raises(ValueError, match=r"row 1 is a list"):
        load_dataset(str(p))
    p.write_text(json.dumps({"prompt": "a", "answer": "1"}) + "\n{broken\n")
    with pytest.raises(ValueError, match=r"line 2 \(row 1\) is not valid JSON"):
        load_dataset(str(p))


def test_verl_ground_truth_fills_answer():
    rows = validate_rows([{"prompt": "x", "reward_model": {"ground_truth": "7"}}])
    assert rows[0]["answer"] == "7"


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset file not found"):
        load_dataset(str(tmp_path / "missing.jsonl"))
    (tmp_path / "d.csv").write_text("prompt,answer\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_dataset(str(tmp_path / "d.csv"))
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(ValueError, match="no rows"):
        load_dataset(str(tmp_path / "e.jsonl"))


def test_compute_score_dispatches_on_data_source():
    assert compute_score("echorl/arithmetic", "1+1=2\nAnswer: 2", "2") == 1.0
    assert compute_score("echorl/arithmetic", "Answer: 3", "2") == 0.0
    with pytest.raises(ValueError, match="no task has data_source"):
        compute_score("unknown/src", "x", "y")


def test_one_rule_for_json_files(tmp_path):
    from echorl.data.prepare import read_rows as prepare_read_rows
    from echorl.tasks.files import DataFormatError, read_rows

    assert prepare_read_rows is read_rows  # the verl data preparation reads files the same way
    rows = [{"prompt": "1+1", "answer": "2"}, {"prompt": "2+2", "answer": "4"}]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_rows(tmp_path / "a.json") == rows == read_rows(tmp_path / "A.JSONL".lower())
    (tmp_path / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in rows))  # JSON lines named .json
    with pytest.raises(DataFormatError, match=r"lines.json: not one JSON document .*name the file .jsonl"):
        read_rows(tmp_path / "lines.json")
    (tmp_path / "obj.json").write_text(json.dumps(rows[0]))
    with pytest.raises(DataFormatError, match=r"obj.json: expected a JSON list of rows, got dict"):
        read_rows(tmp_path / "obj.json")
    with pytest.raises(ValueError, match=r"unsupported file type '.csv'; use .jsonl \(one JSON object per line\)"):
        read_rows(tmp_path / "a.csv")


def test_an_option_the_task_does_not_take_names_the_task_and_its_options():
    with pytest.raises(ValueError, match=r"task 'chain' takes no option\(s\) \['levels'\]; its options are \['split'\]"):
        load_dataset("chain", n=2, levels=(4,))
    assert [r["level"] for r in load_dataset("arithmetic", n=4, levels=(2,))] == [2, 2, 2, 2]
