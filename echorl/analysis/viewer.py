"""A self-contained HTML page showing sample EchoClips (issue 4, item 5).

For each sample rollout: the prompt, the response tokens shaded by token entropy (white -> red),
step boundaries (a small step number opens each step), the peak step (bold underline and a
``peak`` marker after its last token) and the EchoClip (the tokens inside one outlined box), with
the rollout's score and group. No external assets, no scripts; every piece of text is
HTML-escaped.

Records (one per rollout) are plain dicts::

    {"prompt": str, "tokens": list[str], "entropy": list[float], "clip_len": int,
     "peak_step": int (-1 = none), "step_ids": list[int], "score": float, "group": str | int}

``tokens``, ``entropy`` and ``step_ids`` cover the valid response positions only, in order; the
clip is a prefix of them (SPEC 2.2), so it is ``tokens[:clip_len]``. :func:`clip_records` builds
them from the tensors of a training step using :func:`echorl.core.segment_steps`.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from echorl.core.steps import boundary_ids_tensor, segment_steps

__all__ = ["clip_records", "render_clip_viewer", "write_clip_viewer"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:20px} .legend{font-size:13px;margin-bottom:16px;line-height:1.9}
.bar{display:inline-block;width:160px;height:12px;vertical-align:middle;border:1px solid #ccc;
 background:linear-gradient(to right,rgba(220,38,38,0),rgba(220,38,38,.85))}
.card{border:1px solid #ddd;border-radius:6px;padding:12px 14px;margin:14px 0;background:#fff}
.meta{font-size:13px;color:#555;margin-bottom:6px}
.meta b{color:#222} .ok{color:#15803d} .bad{color:#b91c1c}
.prompt{background:#f5f5f5;padding:6px 8px;border-radius:4px;white-space:pre-wrap;font-size:13px;margin:4px 0 8px}
.resp{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:14px;white-space:pre-wrap;line-height:2.0}
.tok{border-radius:2px}
.nl{color:#999}
.clip{outline:2px solid #2563eb;outline-offset:1px;border-radius:3px}
.peak{text-decoration:underline;text-decoration-thickness:2px;text-decoration-color:#111;font-weight:bold}
.peak-marker{font-size:10px;background:#111;color:#fff;border-radius:3px;padding:0 3px;margin:0 2px;vertical-align:super}
.step{font-size:9px;color:#2563eb;vertical-align:super;margin-right:1px}
.noclip{font-size:12px;color:#888}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def clip_records(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    entropy: torch.Tensor,
    selection: Any,
    tokenizer: Any,
    boundary_ids: Sequence[int],
    *,
    prompts: Sequence[str] | None = None,
    scores: torch.Tensor | Sequence[float] | None = None,
    group_ids: Sequence[Any] | torch.Tensor | None = None,
    rows: Sequence[int] | None = None,
    max_records: int = 8,
) -> list[dict[str, Any]]:
    """Viewer records for some rollouts of one batch.

    Args:
        responses: ``[B, L] long`` response token ids.
        response_mask: ``[B, L]`` 1 on valid response tokens.
        entropy: ``[B, L] float`` token entropy.
        selection: the :class:`echorl.core.EchoSelection` of this batch (``mask [B, L]``, ``peak_step [B]``).
        tokenizer: decodes one token id at a time (``batch_decode``).
        boundary_ids: step boundary ids (those the selection used).
        prompts: ``B`` prompt texts (default empty).
        scores: ``[B]`` outcome rewards (default NaN).
        group_ids: ``B`` group ids / uids (default the row index).
        rows: which rows to show; default: rows with a clip first, then the rest, in batch order.
        max_records: at most this many records when ``rows`` is None.

    Returns:
        a list of records in the format of the module docstring.
    """
    B, L = responses.shape
    valid = response_mask.bool()
    step_id, _, _ = segment_steps(responses, valid, boundary_ids_tensor(boundary_ids, responses.device))  # [B, L]
    clip_mask = selection.mask.bool()
    peak = selection.peak_step
    if rows is None:
        has_clip = clip_mask.any(dim=1).tolist()
        non_empty = valid.any(dim=1).tolist()
        order = [b for b in range(B) if has_clip[b]] + [b for b in range(B) if not has_clip[b] and non_empty[b]]
        rows = order[:max_records]
    responses, valid, step_id = responses.cpu(), valid.cpu(), step_id.cpu()
    ent = entropy.detach().float().cpu()
    clip_mask = clip_mask.cpu()
    out = []
    for b in rows:
        v = valid[b]
        ids = responses[b][v].tolist()
        clip_len = int(clip_mask[b].sum())
        # The clip is a prefix of the valid positions (SPEC 2.2): check rather than assume.
        if clip_len and not bool(clip_mask[b][v][:clip_len].all()):
            raise ValueError(f"row {b}: the EchoClip is not a prefix of the valid positions")
        tokens = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False,
                                        clean_up_tokenization_spaces=False) if ids else []
        s = float("nan") if scores is None else float(scores[b])
        g = b if group_ids is None else group_ids[b]
        out.append({
            "prompt": "" if prompts is None else str(prompts[b]),
            "tokens": [str(t) for t in tokens],
            "entropy": ent[b][v].tolist(),
            "clip_len": clip_len,
            "peak_step": int(peak[b]) if clip_len else -1,
            "step_ids": step_id[b][v].tolist(),
            "score": s,
            "group": g.item() if torch.is_tensor(g) else g,
        })
    return out


def _colour(h: float, hmax: float) -> str:
    a = 0.0 if not math.isfinite(h) or hmax <= 0 else max(0.0, min(1.0, h / hmax)) * 0.85
    return f"rgba(220,38,38,{a:.3f})"


def _token_html(tok: str, h: float, step: int, hmax: float, is_peak: bool) -> str:
    shown = _esc(tok).replace("\n", '<span class="nl">&#8629;</span>\n')
    cls = "tok peak" if is_peak else "tok"
    return (f'<span class="{cls}" style="background:{_colour(h, hmax)}" '
            f'title="H={h:.3f} step {step}">{shown}</span>')


def _record_html(i: int, r: dict[str, Any], hmax: float) -> str:
    tokens, ent, steps = list(r["tokens"]), list(r["entropy"]), list(r["step_ids"])
    if not (len(tokens) == len(ent) == len(steps)):
        raise ValueError(f"record {i}: tokens ({len(tokens)}), entropy ({len(ent)}) and step_ids ({len(steps)}) differ in length")
    clip_len, peak = int(r.get("clip_len", 0)), int(r.get("peak_step", -1))
    if not 0 <= clip_len <= len(tokens):
        raise ValueError(f"record {i}: clip_len {clip_len} outside [0, {len(tokens)}]")
    last_of_peak = max((t for t, s in enumerate(steps) if s == peak), default=-1) if peak >= 0 else -1
    parts = []
    if clip_len:
        parts.append('<span class="clip" title="EchoClip">')
    for t, (tok, h, s) in enumerate(zip(tokens, ent, steps)):
        if t == clip_len and clip_len:
            parts.append("</span>")
        if t == 0 or s != steps[t - 1]:
            parts.append(f'<span class="step">{_esc(s)}</span>')
        parts.append(_token_html(tok, float(h), s, hmax, peak >= 0 and s == peak))
        if t == last_of_peak:
            parts.append(f'<span class="peak-marker">peak step {_esc(peak)}</span>')
    if clip_len and clip_len == len(tokens):
        parts.append("</span>")
    score = r.get("score", float("nan"))
    try:
        score_f = float(score)
    except (TypeError, ValueError):
        score_f = float("nan")
    ok = "ok" if score_f >= 1.0 else "bad"
    n_steps = (max(steps) + 1) if steps else 0
    clip_txt = (f"clip <b>{clip_len}</b>/{len(tokens)} tokens, peak step <b>{_esc(peak)}</b> of {n_steps}"
                if clip_len else '<span class="noclip">no EchoClip</span>')
    return (
        f'<div class="card"><div class="meta">#{i} &middot; group <b>{_esc(r.get("group", ""))}</b> &middot; '
        f'score <b class="{ok}">{_esc(f"{score_f:g}")}</b> &middot; {clip_txt}</div>'
        f'<div class="prompt">{_esc(r.get("prompt", ""))}</div>'
        f'<div class="resp">{"".join(parts)}</div></div>'
    )


def render_clip_viewer(records: Sequence[dict[str, Any]], title: str = "EchoRL: sample EchoClips") -> str:
    """The HTML page of ``records`` as a string (see the module docstring for the record format)."""
    hmax = max((float(h) for r in records for h in r["entropy"] if math.isfinite(float(h))), default=0.0)
    cards = "\n".join(_record_html(i, r, hmax) for i, r in enumerate(records)) or "<p>No records.</p>"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1>"
        '<div class="legend">Token entropy: 0 <span class="bar"></span> '
        f"{hmax:.2f} nats &middot; <span class=\"clip\">outlined</span> = EchoClip (the NLL term's tokens) "
        '&middot; <span class="peak">underlined</span> + <span class="peak-marker">peak step k</span> = '
        'highest-entropy step, where the clip ends &middot; <span class="step">k</span> = start of step k '
        '&middot; <span class="nl">&#8629;</span> = newline (step boundary)</div>'
        f"{cards}</body></html>\n"
    )


def write_clip_viewer(records: Sequence[dict[str, Any]], out_html: str | os.PathLike,
                      title: str = "EchoRL: sample EchoClips") -> Path:
    """Write :func:`render_clip_viewer` of ``records`` to ``out_html`` (UTF-8) and return its path."""
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_clip_viewer(records, title=title), encoding="utf-8")
    return out
