"""End-of-run report of the embedded engine: the PNG figure and the EchoClip HTML page.

Both come from :mod:`echorl.analysis` (``plot_metrics`` reads ``metrics.jsonl``; ``clip_records``
and ``write_clip_viewer`` render a batch's rollouts with tokens shaded by entropy and the EchoClip
highlighted). The engine keeps the tensors of the last step that had clips for the page, which shows
one rollout per group of that step, all-success, mixed and all-fail groups in turn, each labelled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from echorl.analysis.plots import plot_metrics
from echorl.analysis.viewer import clip_records, write_clip_viewer


def write_report(out_dir: str | Path, tokenizer: Any, last: dict[str, Any] | None, max_clips: int = 12) -> dict[str, str]:
    """Write ``<out_dir>/metrics.png``, ``echo_clips.html`` and its records ``echo_clips.json``.

    Args:
        last: ``responses [B, L]``, ``response_mask [B, L]``, ``entropy [B, L]``, ``scores [B]``,
            ``selection`` (EchoSelection), ``group_index [B]``, ``rows`` (the step's prompt rows),
            ``boundary_ids`` and optionally ``success_threshold`` (default 1.0, the group kinds); None
            when no step ran in this process (no HTML page then).
    """
    out = Path(out_dir)
    res = {"figure": str(plot_metrics(out / "metrics.jsonl", out / "metrics.png"))}
    if last is not None:
        g = last["group_index"].tolist()
        records = clip_records(last["responses"], last["response_mask"], last["entropy"], last["selection"], tokenizer,
                               last["boundary_ids"], prompts=[str(last["rows"][i]["prompt"]) for i in g],
                               scores=last["scores"], group_ids=g, max_records=max_clips,
                               success_threshold=float(last.get("success_threshold", 1.0)))
        (out / "echo_clips.json").write_text(json.dumps(records, default=str))  # for `echorl analyze`
        res["clips_html"] = str(write_clip_viewer(records, out / "echo_clips.html"))
    return res
