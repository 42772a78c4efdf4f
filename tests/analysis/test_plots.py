"""Tests for echorl/analysis/plots.py: what is drawn (titles, labels, line data), the PNG written; robust input."""

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
           extra_lines=["", '{"step": 3, "reward/me'])
    rows = read_metrics(tmp_path / "m.jsonl")
    assert len(rows) == 4  # the blank line and the torn last line left out
    _png_size(plot_metrics(tmp_path / "m.jsonl", tmp_path / "a.png"))
    (tmp_path / "empty.jsonl").write_text("")
    _png_size(plot_metrics(tmp_path / "empty.jsonl", tmp_path / "b.png"))


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        plot_metrics(tmp_path / "nope.jsonl", tmp_path / "c.png")


def _drawn_figure(monkeypatch, *args, **kwargs):
    """Run plot_metrics for real and keep the Figure it saves (a spy on Figure.savefig)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    saved = []
    real = Figure.savefig

    def spy(self, *a, **k):
        saved.append(self)
        return real(self, *a, **k)

    monkeypatch.setattr(Figure, "savefig", spy)
    plot_metrics(*args, **kwargs)
    assert len(saved) == 1
    return saved[0]


def test_figure_draws_the_logged_values(tmp_path, monkeypatch):
    rows = [{"step": s, "reward/mean": 0.1 * (s % 3), "reward/accuracy": 0.5, "echo/groups_zero_var_frac": 0.25,
             "echo/clips": 0 if s == 2 else 3, "echo/clip_len_frac": 0.4 + 0.1 * s, "echo/loss": 2.0 - s}
            for s in range(1, 5)]
    _write(tmp_path / "metrics.jsonl", rows)
    fig = _drawn_figure(monkeypatch, tmp_path / "metrics.jsonl", tmp_path / "f.png", title="my run")
    assert fig._suptitle.get_text() == "my run"
    ax = {a.get_title(): a for a in fig.axes}
    assert list(ax) == ["Reward and accuracy", "Advantage-degenerated groups", "EchoClip length", "EchoRL loss"]
    assert [a.get_xlabel() for a in fig.axes] == ["step"] * 4
    assert [a.get_ylabel() for a in fig.axes] == ["value", "share of groups", "fraction of response", "NLL per clip token"]

    def lines(title):
        return {ln.get_label(): (list(ln.get_xdata()), [round(float(y), 9) for y in ln.get_ydata()])
                for ln in ax[title].get_lines()}

    assert lines("Reward and accuracy") == {"reward (mean)": ([1.0, 2.0, 3.0, 4.0], [0.1, 0.2, 0.0, 0.1]),
                                            "accuracy": ([1.0, 2.0, 3.0, 4.0], [0.5] * 4)}
    assert lines("Advantage-degenerated groups") == {"zero variance (all same)": ([1.0, 2.0, 3.0, 4.0], [0.25] * 4)}
    # step 2 had no clip: clip length and EchoRL loss are left out there, not drawn as 0
    assert lines("EchoClip length") == {"clip length / response length": ([1.0, 3.0, 4.0], [0.5, 0.7, 0.8])}
    assert lines("EchoRL loss") == {"L_echo": ([1.0, 3.0, 4.0], [1.0, -1.0, -2.0])}


def test_long_run_gets_the_rolling_mean_and_an_empty_panel_says_no_data(tmp_path, monkeypatch):
    ys = [float(s % 2) for s in range(30)]
    _write(tmp_path / "metrics.jsonl", [{"step": s, "reward/mean": y} for s, y in enumerate(ys)])
    fig = _drawn_figure(monkeypatch, tmp_path / "metrics.jsonl", tmp_path / "f.png")
    reward = fig.axes[0]
    smooth = [ln for ln in reward.get_lines() if ln.get_label() == "reward (mean), 10-step mean"]
    assert len(smooth) == 1
    want = [sum(ys[max(0, i - 9):i + 1]) / min(i + 1, 10) for i in range(30)]  # literal trailing mean
    assert [round(float(y), 12) for y in smooth[0].get_ydata()] == [round(y, 12) for y in want]
    texts = [t.get_text() for t in fig.axes[3].texts]
    assert texts == ["no data (echo/loss)"]
    assert fig._suptitle.get_text() == f"EchoRL run: {tmp_path.name} (30 steps)"
