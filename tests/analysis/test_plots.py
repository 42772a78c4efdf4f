"""Tests for echorl/analysis/plots.py: the PNG is written, valid and of sane size; robust input."""

from __future__ import annotations

import json
import struct

import pytest

from echorl.analysis import plot_metrics, read_metrics


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _write(path, rows, extra_lines=()):
    with open(path, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
        for ln in extra_lines:
            fh.write(ln + "\n")


def test_png_written_valid_and_sane(tmp_path):
    rows = [{"step": s, "reward/mean": 0.2 + 0.01 * s, "reward/accuracy": 0.2 + 0.01 * s,
             "echo/groups_zero_var_frac": 0.1 + 0.02 * s, "echo/groups_degenerate_success_frac": 0.01 * s,
             "echo/clip_len_frac": 0.5, "echo/loss": 1.0 / (s + 1), "actor/pg_loss": 0.1} for s in range(40)]
    _write(tmp_path / "metrics.jsonl", rows)
    out = plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "sub" / "fig.png")
    assert out == tmp_path / "sub" / "fig.png"
    w, h = _png_size(out)
    assert (w, h) == (1100, 700)  # figsize 11x7 at dpi 100
    assert 10_000 < out.stat().st_size < 2_000_000


def test_missing_keys_broken_lines_and_empty_log(tmp_path):
    _write(tmp_path / "m.jsonl", [{"step": 0, "reward/mean": 0.1}, {"step": 1, "reward/mean": float("nan")},
                                  {"step": 2, "reward/mean": "x", "echo/loss": None}, {"reward/mean": 0.3}],
           extra_lines=["", "[1, 2]", '{"step": 3, "reward/me'])
    rows = read_metrics(tmp_path / "m.jsonl")
    assert len(rows) == 4  # blank, non-object and truncated lines skipped
    _png_size(plot_metrics(tmp_path / "m.jsonl", tmp_path / "a.png"))
    (tmp_path / "empty.jsonl").write_text("")
    _png_size(plot_metrics(tmp_path / "empty.jsonl", tmp_path / "b.png"))


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        plot_metrics(tmp_path / "nope.jsonl", tmp_path / "c.png")
