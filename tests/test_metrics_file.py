"""echorl/metrics_file.py: the reader of metrics.jsonl keeps every step and refuses corruption."""

from __future__ import annotations

import json
import logging

import pytest

from echorl.metrics_file import MetricsFileError, read_metrics


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_reads_objects_in_order_and_skips_blank_lines(tmp_path):
    p = _write(tmp_path / "m.jsonl", [json.dumps({"step": 1, "x": 0.5}), "", json.dumps({"step": 2, "x": 1.5})])
    assert read_metrics(p) == [{"step": 1, "x": 0.5}, {"step": 2, "x": 1.5}]


def test_torn_last_line_is_left_out_with_a_warning(tmp_path, caplog):
    p = _write(tmp_path / "m.jsonl", [json.dumps({"step": 1}), '{"step": 2, "x": 0.'])
    with caplog.at_level(logging.WARNING, logger="echorl.metrics_file"):
        assert read_metrics(p) == [{"step": 1}]
    assert "m.jsonl:2" in caplog.text and "torn last line" in caplog.text


def test_bad_line_before_the_end_names_file_and_line(tmp_path):
    p = _write(tmp_path / "m.jsonl", [json.dumps({"step": 1}), "not json", json.dumps({"step": 3})])
    with pytest.raises(MetricsFileError, match=r"m\.jsonl:2 is not valid JSON"):
        read_metrics(p)


def test_non_object_line_is_refused(tmp_path):
    p = _write(tmp_path / "m.jsonl", [json.dumps({"step": 1}), "[1, 2]"])
    with pytest.raises(MetricsFileError, match=r"m\.jsonl:2 holds a JSON list"):
        read_metrics(p)


def test_missing_file_raises_unless_allowed(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_metrics(tmp_path / "none.jsonl")
    assert read_metrics(tmp_path / "none.jsonl", missing_ok=True) == []
