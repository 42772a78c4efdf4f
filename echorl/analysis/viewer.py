"""A self-contained HTML page showing sample EchoClips.

For each sample rollout: the prompt, the response tokens shaded by token entropy (white -> red),
one line per reasoning step (a small step number opens it, inline, on the same line), the peak
step (bold, dotted underline, and a ``peak`` marker at the end of its line) and the EchoClip (its
tokens carry a blue bar underneath), with the rollout's score, its group and the group's kind
(all-success, mixed or all-fail, with the group's success count). No external assets, no scripts;
every piece of text is HTML-escaped.

Records (one per rollout) are plain dicts::

    {"prompt": str, "tokens": list[str], "entropy": list[float], "clip_len": int,
     "clip_end_step": int (-1 = none), "step_ids": list[int], "score": float, "group": str | int,
     "group_kind": "all-success" | "mixed" | "all-fail" (optional), "group_successes": str (optional, "k/n")}

``tokens``, ``entropy`` and ``step_ids`` cover the valid response positions only, in order; the
clip is a prefix of them (SPEC 2.2), so it is ``tokens[:clip_len]``. :func:`clip_records` builds
them from the tensors of a training step using :func:`echorl.core.segment_steps`; by default it
shows one rollout per group, taking groups of the three kinds in turn, so the page is a varied
sample of the batch rather than copies of one group.

Layout: every step is an inline ``<span class="line">`` (``white-space: nowrap``) holding its step
marker and its tokens, followed by ``<br>``; no literal newline reaches the page (a newline token is
shown as the glyph &#8629;), so a marker can never wrap onto a line of its own.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from echorl.core.steps import boundary_ids_tensor, segment_steps

__all__ = ["GROUP_KINDS", "clip_records", "group_kinds", "render_clip_viewer", "varied_rows", "write_clip_viewer"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:20px} .legend{font-size:13px;margin-bottom:16px;line-height:1.9}
.bar{display:inline-block;width:160px;height:12px;vertical-align:middle;border:1px solid #ccc;
 background:linear-gradient(to right,rgba(220,38,38,0),rgba(220,38,38,.85))}
.card{border:1px solid #ddd;border-radius:6px;padding:12px 14px;margin:14px 0;background:#fff}
.meta{font-size:13px;color:#555;margin-bottom:6px}
.meta b{color:#222} .ok{color:#15803d} .bad{color:#b91c1c}
.prompt{background:#f5f5f5;padding:6px 8px;border-radius:4px;white-space:pre-wrap;font-size:13px;margin:4px 0 8px}
.resp{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:14px;line-height:2.0;overflow-x:auto}
.line{white-space:nowrap}
.tok{white-space:pre;border-radius:2px}
.nl{color:#999}
.clip{box-shadow:inset 0 -3px 0 #2563eb}
.legend .clip{padding:0 3px}
.peak{text-decoration:underline dotted;text-decoration-thickness:2px;text-decoration-color:#111;font-weight:bold}
.peak-marker{font-size:10px;background:#111;color:#fff;border-radius:3px;padding:0 3px;margin:0 4px}
.step{font-size:9px;color:#2563eb;display:inline-block;min-width:1.6em;text-align:right;margin-right:4px}
.noclip{font-size:12px;color:#888}
.kind{font-size:12px;border-radius:3px;padding:1px 6px;color:#fff}
.kind-all-success{background:#15803d} .kind-mixed{background:#b45309} .kind-all-fail{background:#6b7280}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


GROUP_KINDS = ("all-success", "mixed", "all-fail")


def group_kinds(scores: Sequence[float], group_ids: Sequence[Any], success_threshold: float = 1.0) -> dict[Any, tuple[str, int, int]]:
    """``group id -> (kind, successes, size)``; kind is ``all-success``, ``mixed`` or ``all-fail``
    (a rollout succeeds when its score is ``>= success_threshold``)."""
    count: dict[Any, list[int]] = {}
    for s, g in zip(scores, group_ids):
        c = count.setdefault(g, [0, 0])
        c[0] += int(float(s) >= success_threshold)
        c[1] += 1
    return {g: ("all-success" if k == n else "all-fail" if k == 0 else "mixed", k, n) for g, (k, n) in count.items()}


def varied_rows(scores: Sequence[float], group_ids: Sequence[Any], has_clip: Sequence[bool], non_empty: Sequence[bool],
                max_records: int, success_threshold: float = 1.0) -> list[int]:
    """One row per group, groups of the three kinds taken in turn (all-success, mixed, all-fail).

    Within a group the first row with an EchoClip is shown, else (mixed groups) the first
    successful row, else the first non-empty one. Groups keep batch order within a kind.
    """
    kinds = group_kinds(scores, group_ids, success_threshold)
    first: dict[Any, int] = {}
    for b, g in enumerate(group_ids):
        if not non_empty[b]:
            continue
        cur = first.get(g)
        rank = 0 if has_clip[b] else 1 if float(scores[b]) >= success_threshold else 2
        if cur is None or rank < (0 if has_clip[cur] else 1 if float(scores[cur]) >= success_threshold else 2):
            first[g] = b
    queues = {k: [first[g] for g in dict.fromkeys(group_ids) if g in first and kinds[g][0] == k] for k in GROUP_KINDS}
    out: list[int] = []
    while len(out) < max_records and any(queues.values()):
        for k in GROUP_KINDS:
            if queues[k] and len(out) < max_records:
                out.append(queues[k].pop(0))
    return out


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
    max_records: int = 12,
    success_threshold: float = 1.0,
) -> list[dict[str, Any]]:
    """Viewer records for some rollouts of one batch.

    Args:
        responses: ``[B, L] long`` response token ids.
        response_mask: ``[B, L]`` 1 on valid response tokens.
        entropy: ``[B, L] float`` token entropy.
        selection: the :class:`echorl.core.EchoSelection` of this batch (``mask [B, L]``, ``clip_end_step [B]``).
        tokenizer: decodes one token id at a time (``batch_decode``).
        boundary_ids: step boundary ids (those the selection used).
        prompts: ``B`` prompt texts (default empty).
        scores: ``[B]`` outcome rewards (default NaN; group kinds then need ``scores``).
        group_ids: ``B`` group ids / uids (default the row index).
        rows: which rows to show; default (with ``scores``): :func:`varied_rows`, one rollout per
            group, all-success / mixed / all-fail groups in turn; without scores: rows with a clip
            first, then the rest, in batch order.
        max_records: at most this many records when ``rows`` is None.
        success_threshold: a rollout succeeds when its score is ``>=`` this (the group kinds).

    Returns:
        a list of records in the format of the module docstring.
    """
    B, L = responses.shape
    valid = response_mask.bool()
    step_id, _, _ = segment_steps(responses, valid, boundary_ids_tensor(boundary_ids, responses.device))  # [B, L]
    clip_mask = selection.mask.bool()
    peak = selection.clip_end_step
    gids = list(range(B)) if group_ids is None else [g.item() if torch.is_tensor(g) else g for g in group_ids]
    score_list = None if scores is None else [float(x) for x in scores]
    kinds = group_kinds(score_list, gids, success_threshold) if score_list is not None else {}
    if rows is None:
        has_clip = clip_mask.any(dim=1).tolist()
        non_empty = valid.any(dim=1).tolist()
        if score_list is not None:
            rows = varied_rows(score_list, gids, has_clip, non_empty, max_records, success_threshold)
        else:
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
        rec = {
            "prompt": "" if prompts is None else str(prompts[b]),
            "tokens": [str(t) for t in tokens],
            "entropy": ent[b][v].tolist(),
            "clip_len": clip_len,
            "clip_end_step": int(peak[b]) if clip_len else -1,
            "step_ids": step_id[b][v].tolist(),
            "score": float("nan") if score_list is None else score_list[b],
            "group": gids[b],
        }
        if kinds:
            kind, k, n = kinds[gids[b]]
            rec["group_kind"], rec["group_successes"] = kind, f"{k}/{n}"
        out.append(rec)
    return out


def _colour(h: float, hmax: float) -> str:
    a = 0.0 if not math.isfinite(h) or hmax <= 0 else max(0.0, min(1.0, h / hmax)) * 0.85
    return f"rgba(220,38,38,{a:.3f})"


def _token_html(tok: str, h: float, step: int, hmax: float, is_peak: bool, in_clip: bool) -> str:
    shown = _esc(tok).replace("\n", '<span class="nl">&#8629;</span>')  # no literal newline: see the module doc
    cls = "tok" + (" clip" if in_clip else "") + (" peak" if is_peak else "")
    return (f'<span class="{cls}" style="background:{_colour(h, hmax)}" '
            f'title="H={h:.3f} step {step}">{shown}</span>')


def _record_html(i: int, r: dict[str, Any], hmax: float) -> str:
    tokens, ent, steps = list(r["tokens"]), list(r["entropy"]), list(r["step_ids"])
    if not (len(tokens) == len(ent) == len(steps)):
        raise ValueError(f"record {i}: tokens ({len(tokens)}), entropy ({len(ent)}) and step_ids ({len(steps)}) differ in length")
    clip_len, peak = int(r.get("clip_len", 0)), int(r.get("clip_end_step", -1))
    if not 0 <= clip_len <= len(tokens):
        raise ValueError(f"record {i}: clip_len {clip_len} outside [0, {len(tokens)}]")
    parts = []
    for t, (tok, h, s) in enumerate(zip(tokens, ent, steps)):
        if t == 0 or s != steps[t - 1]:
            if t:
                parts.append("</span><br>")
            parts.append(f'<span class="line"><span class="step">{_esc(s)}</span>')
        is_peak = peak >= 0 and s == peak
        last_of_step = t + 1 == len(tokens) or steps[t + 1] != s
        if is_peak and last_of_step and "\n" in tok:  # the marker ends the peak line, before its newline glyph
            parts.append(f'<span class="peak-marker">peak step {_esc(peak)}</span>')
        parts.append(_token_html(tok, float(h), s, hmax, is_peak, t < clip_len))
        if is_peak and last_of_step and "\n" not in tok:
            parts.append(f'<span class="peak-marker">peak step {_esc(peak)}</span>')
    if tokens:
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
    kind = r.get("group_kind")
    kind_txt = ""
    if kind is not None:
        if kind not in GROUP_KINDS:
            raise ValueError(f"record {i}: group_kind {kind!r} is not one of {list(GROUP_KINDS)}")
        succ = r.get("group_successes")
        kind_txt = (f'<span class="kind kind-{kind}">{_esc(kind)}'
                    f'{" " + _esc(succ) if succ is not None else ""}</span> &middot; ')
    return (
        f'<div class="card"><div class="meta">#{i} &middot; {kind_txt}group <b>{_esc(r.get("group", ""))}</b> &middot; '
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
        f"{hmax:.2f} nats &middot; <span class=\"clip\">blue bar</span> = EchoClip (the NLL term's tokens) "
        '&middot; <span class="peak">underlined</span> + <span class="peak-marker">peak step k</span> = '
        'highest-entropy step, where the clip ends &middot; <span class="step">k</span> = start of step k '
        '&middot; <span class="nl">&#8629;</span> = newline (step boundary) &middot; one rollout per group, '
        'groups labelled <span class="kind kind-all-success">all-success</span> '
        '<span class="kind kind-mixed">mixed</span> <span class="kind kind-all-fail">all-fail</span> '
        'with their success count</div>'
        f"{cards}</body></html>\n"
    )


def write_clip_viewer(records: Sequence[dict[str, Any]], out_html: str | os.PathLike,
                      title: str = "EchoRL: sample EchoClips") -> Path:
    """Write :func:`render_clip_viewer` of ``records`` to ``out_html`` (UTF-8) and return its path."""
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_clip_viewer(records, title=title), encoding="utf-8")
    return out
