"""echorl/eval/benchmarks.py: benchmark specs (strings, mappings, YAML), rows and prompt rendering."""

from __future__ import annotations

import json

import pytest

from echorl.eval.benchmarks import (
    BenchmarkSpec,
    load_benchmark_yaml,
    load_rows,
    parse_bench,
    prompt_ids,
    specs_from_config,
)


def test_parse_bench_forms():
    assert parse_bench("arith=arithmetic:ood") == BenchmarkSpec("arith", "arithmetic", "ood")
    assert parse_bench("data/aime24.parquet") == BenchmarkSpec("aime24", "data/aime24.parquet", "id")
    assert parse_bench("x=rg/gsm_symbolic") == BenchmarkSpec("x", "rg/gsm_symbolic", "id")
    assert parse_bench("gpqa=/d/gpqa.jsonl:ood").source == "/d/gpqa.jsonl"
    with pytest.raises(ValueError, match="no source"):
        parse_bench("x=")
    with pytest.raises(ValueError, match="'all' is the macro"):
        parse_bench("x=arithmetic:all")


def test_mappings_and_yaml(tmp_path):
    spec = BenchmarkSpec.from_any({"source": "arithmetic", "group": "ood", "num_rows": 3, "task_kwargs": {"levels": [1]}})
    assert (spec.name, spec.group, spec.num_rows) == ("arithmetic", "ood", 3)
    with pytest.raises(ValueError, match=r"x\[0\]: unknown key\(s\) \['file'\]"):
        specs_from_config([{"file": "a.jsonl"}], "x")
    with pytest.raises(ValueError, match="missing 'source'"):
        BenchmarkSpec.from_any({"name": "a"})
    with pytest.raises(ValueError, match="names must be unique"):
        specs_from_config(["arithmetic", "arithmetic:ood"], "data.val_files")
    with pytest.raises(ValueError, match="grader must be one of"):
        BenchmarkSpec("a", "arithmetic", grader="regex")
    y = tmp_path / "b.yaml"
    y.write_text("benchmarks:\n  - a=arithmetic:ood\n  - {name: b, source: arithmetic, num_rows: 2}\n")
    assert [(s.name, s.group, s.num_rows) for s in load_benchmark_yaml(str(y))] == [("a", "ood", None), ("b", "id", 2)]
    y.write_text("- a\n")
    with pytest.raises(ValueError, match="'benchmarks:' list"):
        load_benchmark_yaml(str(y))


def test_rows_get_problem_ids(tmp_path):
    rows = load_rows(BenchmarkSpec("a", "arithmetic", num_rows=3, seed=1))
    assert [r["problem_id"] for r in rows] == ["0", "1", "2"]
    assert rows == load_rows(BenchmarkSpec("a", "arithmetic", num_rows=3, seed=1))  # deterministic
    f = tmp_path / "f.jsonl"
    f.write_text(json.dumps({"id": 7, "prompt": "p", "answer": "1"}) + "\n" + json.dumps({"id": 7, "prompt": "q", "answer": "2"}) + "\n")
    with pytest.raises(ValueError, match="ids must be unique"):
        load_rows(BenchmarkSpec("f", str(f)))
    f.write_text(json.dumps({"prompt": "p"}) + "\n")
    with pytest.raises(ValueError, match="benchmark 'f'.*row 0 is missing required field 'answer'"):
        load_rows(BenchmarkSpec("f", str(f)))
    with pytest.raises(ValueError, match="task_kwargs apply to task sources"):
        load_rows(BenchmarkSpec("f", str(f), task_kwargs={"levels": [1]}))


def test_prompts_strings_and_chat_messages():
    from echorl.models.tiny import load_tiny_model

    _, tok = load_tiny_model()
    msgs = [{"role": "user", "content": "Compute 1+1."}]
    a, b = prompt_ids(tok, [{"prompt": "Compute 1+1."}, {"prompt": msgs}])
    assert a == b  # a string goes through the same chat template as a one-message chat
    assert tok.decode(a).startswith("<|im_start|>user\nCompute 1+1.")
    (raw,) = prompt_ids(tok, [{"prompt": msgs}], chat_template="false")
    assert tok.decode(raw) == "Compute 1+1."
    with pytest.raises(ValueError, match="row 0 prompt has .* tokens, more than the limit 5"):
        prompt_ids(tok, [{"prompt": "Compute 1+1."}], max_prompt_length=5)
    system_only = [{"role": "system", "content": "be brief"}]
    with pytest.raises(ValueError, match=r"^aime: row 1: the chat prompt has no user message"):
        prompt_ids(tok, [{"prompt": "Compute 1+1."}, {"prompt": system_only}], chat_template="false", where="aime")
