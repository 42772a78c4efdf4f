"""Tests for echorl/analysis/viewer.py: records from tensors, escaping, clip span, peak marker."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
import torch

from echorl import EchoConfig, select_echo_clips
from echorl.analysis import clip_records, render_clip_viewer, write_clip_viewer
from echorl.models.char_tokenizer import build_char_tokenizer
from echorl.models.tiny import boundary_ids


class _Cards(HTMLParser):
    """Per card: token texts, which tokens sit inside the clip span, which carry 'peak', the markers."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.cards, self.stack = [], []

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        if tag == "div" and classes == ["card"]:
            self.cards.append({"tokens": [], "in_clip": [], "peak": [], "markers": [], "clip_spans": 0})
        card = self.cards[-1] if self.cards else None
        if tag == "span" and "clip" in classes and card is not None:
            card["clip_spans"] += 1
        if tag == "span" and "tok" in classes:
            card["tokens"].append("")
            card["in_clip"].append(any("clip" in cs for _, cs in self.stack))
            card["peak"].append("peak" in classes)
        self.stack.append((tag, classes))

    def handle_endtag(self, tag):
        self.stack.pop()

    def handle_data(self, data):
        classes = [c for _, cs in self.stack for c in cs]
        if not self.cards:
            return
        if "peak-marker" in classes:
            self.cards[-1]["markers"].append(data)
        elif "tok" in classes and "nl" not in classes:  # the visible newline glyph is not token text
            self.cards[-1]["tokens"][-1] += data


def _batch():
    tok = build_char_tokenizer()
    (nl,) = boundary_ids(tok)  # 3; the vocab entry is the byte-level "Ċ", not "\\n"
    texts = ["1<2&3=1\n1+1=2\n2*2=4\nAnswer: 4", "5+1=6\nAnswer: 6", "9-9=0\nAnswer: 0", "x\nAnswer: 1"]
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    L = max(map(len, ids)) + 2
    B = len(texts)
    responses = torch.full((B, L), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    for i, x in enumerate(ids):
        responses[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    g = torch.Generator().manual_seed(0)
    entropy = torch.rand(B, L, generator=g)
    entropy[0, 8:14] = 5.0  # row 0: step 1 ("1+1=2\n") is the peak
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0])
    groups = torch.tensor([0, 0, 1, 1])  # group 0 all-success (degenerated), group 1 mixed
    cfg = EchoConfig(boundary_token_ids=(nl,))
    sel = select_echo_clips(responses, mask, entropy, scores, groups, cfg)
    return tok, texts, responses, mask, entropy, scores, groups, sel, nl


def test_records_from_tensors():
    tok, texts, responses, mask, entropy, scores, groups, sel, nl = _batch()
    recs = clip_records(responses, mask, entropy, sel, tok, (nl,), prompts=["p0", "p1", "p2", "p3"],
                        scores=scores, group_ids=groups)
    assert [r["prompt"] for r in recs] == ["p0", "p1", "p2", "p3"]  # clipped rows 0, 1 first, then the rest
    r0 = recs[0]
    assert "".join(r0["tokens"]) == texts[0]
    assert len(r0["tokens"]) == len(r0["entropy"]) == len(r0["step_ids"]) == len(texts[0])
    assert r0["peak_step"] == 1 and r0["clip_len"] == len("1<2&3=1\n1+1=2\n")
    assert r0["clip_len"] == int(sel.mask[0].sum())
    assert r0["step_ids"] == [0] * 8 + [1] * 6 + [2] * 6 + [3] * 9
    assert r0["score"] == 1.0 and r0["group"] == 0
    assert recs[2]["clip_len"] == 0 and recs[2]["peak_step"] == -1
    assert [r["prompt"] for r in clip_records(responses, mask, entropy, sel, tok, (nl,), prompts=list("abcd"),
                                              max_records=1)] == ["a"]
    assert clip_records(responses, mask, entropy, sel, tok, (nl,), rows=[3])[0]["group"] == 3


def test_html_escapes_marks_clip_and_peak(tmp_path):
    tok, texts, responses, mask, entropy, scores, groups, sel, nl = _batch()
    recs = clip_records(responses, mask, entropy, sel, tok, (nl,), prompts=["<script>alert(1)</script>"] * 4,
                        scores=scores, group_ids=["u<0>", "u<0>", "u1", "u1"])
    out = write_clip_viewer(recs, tmp_path / "v" / "clips.html", title="T & <b>")
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<title>T &amp; &lt;b&gt;</title>" in page
    assert "u&lt;0&gt;" in page
    assert ">&lt;</span>" in page and ">&amp;</span>" in page  # the '<' and '&' tokens, escaped
    assert "http" not in page.replace("http-equiv", "")  # self-contained: no external assets
    p = _Cards()
    p.feed(page)
    assert len(p.cards) == 4
    for card, rec in zip(p.cards, recs):
        assert card["tokens"] == rec["tokens"]  # every token, unescaped back to its text
        # the highlight spans exactly the clip: the first clip_len tokens, and no other
        assert card["in_clip"] == [True] * rec["clip_len"] + [False] * (len(rec["tokens"]) - rec["clip_len"])
        assert card["clip_spans"] == (1 if rec["clip_len"] else 0)
        assert card["peak"] == [rec["peak_step"] >= 0 and s == rec["peak_step"] for s in rec["step_ids"]]
        assert card["markers"] == ([f"peak step {rec['peak_step']}"] if rec["clip_len"] else [])
    assert "".join(t for t, c in zip(p.cards[0]["tokens"], p.cards[0]["in_clip"]) if c) == "1<2&3=1\n1+1=2\n"
    assert "".join(t for t, k in zip(p.cards[0]["tokens"], p.cards[0]["peak"]) if k) == "1+1=2\n"

def test_record_validation():
    bad = {"prompt": "", "tokens": ["a", "b"], "entropy": [0.1], "clip_len": 1, "peak_step": 0, "step_ids": [0, 0],
           "score": 1.0, "group": 0}
    with pytest.raises(ValueError, match="record 0: tokens \\(2\\), entropy \\(1\\)"):
        render_clip_viewer([bad])
    with pytest.raises(ValueError, match="clip_len 5 outside"):
        render_clip_viewer([dict(bad, entropy=[0.1, 0.2], clip_len=5)])
    assert "No records" in render_clip_viewer([])
