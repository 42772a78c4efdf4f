"""Figures and the EchoClip HTML viewer.

* :func:`plot_metrics` (``plots.py``): one PNG from a run's ``metrics.jsonl``.
* :func:`write_clip_viewer` / :func:`clip_records` (``viewer.py``): a self-contained HTML page of
  sample EchoClips, tokens shaded by entropy, steps, peak step and clip marked.
"""

from echorl.analysis.plots import plot_metrics, read_metrics
from echorl.analysis.viewer import clip_records, render_clip_viewer, write_clip_viewer

__all__ = ["clip_records", "plot_metrics", "read_metrics", "render_clip_viewer", "write_clip_viewer"]
