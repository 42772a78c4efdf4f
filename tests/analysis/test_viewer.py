"""Tests for echorl/analysis/viewer.py: records from tensors, a varied sample of groups, escaping,
clip and peak marks, and the page as Chromium renders it (text, clip highlight, one line per step)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import torch

from echorl import EchoConfig, select_echo_clips
from echorl.analysis import clip_records, render_clip_viewer, write_clip_viewer
from echorl.analysis.viewer import group_kinds, varied_rows
from echorl.models.char_tokenizer import build_char_tokenizer
from echorl.models.tiny import boundary_ids


class _Cards(HTMLParser):
    """Per card: token texts, which tokens carry 'clip' / 'peak', the peak markers, the kind label."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.cards, self.stack = [], []

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        if tag == "br":
            return
        if tag == "div" and classes == ["card"]:
            self.cards.append({"tokens": [], "in_clip": [], "peak": [], "markers": [], "kind": None, "lines": 0})
        card = self.cards[-1] if self.cards else None
        if tag == "span" and "line" in classes and card is not None:
            card["lines"] += 1
        if tag == "span" and "tok" in classes:
            card["tokens"].append("")
            card["in_clip"].append("clip" in classes)
            card["peak"].append("peak" in classes)
        self.stack.append((tag, classes))

    def handle_endtag(self, tag):
        if tag != "br":
            self.stack.pop()

    def handle_data(self, data):
        classes = [c for _, cs in self.stack for c in cs]
        if not self.cards:
            return
        if "peak-marker" in classes:
            self.cards[-1]["markers"].append(data)
        elif "kind" in classes:
            self.cards[-1]["kind"] = data
        elif "tok" in classes and "nl" not in classes:  # the visible newline glyph is not token text
            self.cards[-1]["tokens"][-1] += data
        elif "nl" in classes:
            self.cards[-1]["tokens"][-1] += "\n"


def _batch():
    """Three groups of two rollouts: 0 all-success, 1 mixed, 2 all-fail (group 2 has an empty row)."""
    tok = build_char_tokenizer()
    (nl,) = boundary_ids(tok)  # 3; the vocab entry is the byte-level "Ċ", not "\\n"
    texts = ["1<2&3=1\n1+1=2\n2*2=4\nAnswer: 4", "5+1=6\nAnswer: 6", "9-9=0\nAnswer: 0", "x\nAnswer: 1",
             "", "7*7=48\nAnswer: 48"]
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    L = max(map(len, ids)) + 2
    B = len(texts)
    responses = torch.full((B, L), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    for i, x in enumerate(ids):
        responses[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    g = torch.Generator().manual_seed(0)
    entropy = torch.rand(B, L, generator=g)
    entropy[0, 8:14] = 5.0  # row 0: step 1 ("1+1=2\n") is the peak
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    cfg = EchoConfig(boundary_token_ids=(nl,), scope="success", per="rollout")
    sel = select_echo_clips(responses, mask, entropy, scores, groups, cfg)
    return tok, texts, responses, mask, entropy, scores, groups, sel, nl


def test_group_kinds_and_varied_rows_take_one_rollout_per_group_in_turn():
    kinds = group_kinds([1, 1, 0, 1, 0, 0, 1, 1], [5, 5, 6, 6, 7, 7, 8, 8])
    assert kinds == {5: ("all-success", 2, 2), 6: ("mixed", 1, 2), 7: ("all-fail", 0, 2), 8: ("all-success", 2, 2)}
    scores = [1, 1, 0, 1, 0, 0, 1, 1, 1, 0]
    groups = [5, 5, 6, 6, 7, 7, 8, 8, 9, 9]
    has_clip = [False, True, False, True, False, False, True, True, True, False]
    non_empty = [True] * 10
    # group 5: row 1 (its clipped row); 6: row 3; 7: row 4; 8: row 6; 9 (mixed): row 8; kinds alternate
    assert varied_rows(scores, groups, has_clip, non_empty, 10) == [1, 3, 4, 6, 8]
    assert varied_rows(scores, groups, has_clip, non_empty, 2) == [1, 3]
    # no clip anywhere: a mixed group shows its successful row, an empty row is never shown
    assert varied_rows([0, 1], [0, 0], [False, False], [True, True], 5) == [1]
    assert varied_rows([0, 0], [0, 0], [False, False], [False, True], 5) == [1]


def test_records_from_tensors():
    tok, texts, responses, mask, entropy, scores, groups, sel, nl = _batch()
    prompts = ["p0", "p1", "p2", "p3", "p4", "p5"]
    recs = clip_records(responses, mask, entropy, sel, tok, (nl,), prompts=prompts, scores=scores, group_ids=groups)
    # one rollout per group: all-success (row 0, clipped), mixed (row 3, the success), all-fail (row 5; row 4 is empty)
    assert [r["prompt"] for r in recs] == ["p0", "p3", "p5"]
    assert [r["group_kind"] for r in recs] == ["all-success", "mixed", "all-fail"]
    assert [r["group_successes"] for r in recs] == ["2/2", "1/2", "0/2"]
    r0 = recs[0]
    assert "".join(r0["tokens"]) == texts[0]
    assert len(r0["tokens"]) == len(r0["entropy"]) == len(r0["step_ids"]) == len(texts[0])
    assert r0["clip_end_step"] == 1 and r0["clip_len"] == len("1<2&3=1\n1+1=2\n")
    assert r0["clip_len"] == int(sel.mask[0].sum())
    assert r0["step_ids"] == [0] * 8 + [1] * 6 + [2] * 6 + [3] * 9
    assert r0["score"] == 1.0 and r0["group"] == 0
    assert recs[2]["clip_len"] == 0 and recs[2]["clip_end_step"] == -1
    assert [r["prompt"] for r in clip_records(responses, mask, entropy, sel, tok, (nl,), prompts=prompts,
                                              scores=scores, group_ids=groups, max_records=1)] == ["p0"]
    assert clip_records(responses, mask, entropy, sel, tok, (nl,), rows=[3])[0]["group"] == 3
    # without scores: rows with a clip first, then the rest
    no_scores = clip_records(responses, mask, entropy, sel, tok, (nl,), prompts=prompts)
    assert "group_kind" not in no_scores[0] and no_scores[0]["prompt"] == "p0"


def test_html_escapes_marks_clip_and_peak(tmp_path):
    tok, texts, responses, mask, entropy, scores, groups, sel, nl = _batch()
    recs = clip_records(responses, mask, entropy, sel, tok, (nl,), prompts=["<script>alert(1)</script>"] * 6,
                        scores=scores, group_ids=["u<0>", "u<0>", "u1", "u1", "u2", "u2"], rows=[0, 1, 2, 3, 5])
    out = write_clip_viewer(recs, tmp_path / "v" / "clips.html", title="T & <b>")
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<title>T &amp; &lt;b&gt;</title>" in page
    assert "u&lt;0&gt;" in page
    assert ">&lt;</span>" in page and ">&amp;</span>" in page  # the '<' and '&' tokens, escaped
    assert "http" not in page.replace("http-equiv", "")  # self-contained: no external assets
    resps = re.findall(r'<div class="resp">(.*?)</div>', page, re.S)
    assert len(resps) == 5 and not any("\n" in r for r in resps)  # no literal newline: markers cannot wrap
    p = _Cards()
    p.feed(page)
    assert len(p.cards) == 5
    for card, rec in zip(p.cards, recs):
        assert card["tokens"] == rec["tokens"]  # every token, unescaped back to its text
        # the highlight covers exactly the clip: the first clip_len tokens, and no other
        assert card["in_clip"] == [True] * rec["clip_len"] + [False] * (len(rec["tokens"]) - rec["clip_len"])
        assert card["peak"] == [rec["clip_end_step"] >= 0 and s == rec["clip_end_step"] for s in rec["step_ids"]]
        assert card["markers"] == ([f"peak step {rec['clip_end_step']}"] if rec["clip_len"] else [])
        assert card["lines"] == max(rec["step_ids"]) + 1  # one line span per step
        assert card["kind"] == f"{rec['group_kind']} {rec['group_successes']}"
    assert "".join(t for t, c in zip(p.cards[0]["tokens"], p.cards[0]["in_clip"]) if c) == "1<2&3=1\n1+1=2\n"
    assert "".join(t for t, k in zip(p.cards[0]["tokens"], p.cards[0]["peak"]) if k) == "1+1=2\n"


def test_record_validation():
    bad = {"prompt": "", "tokens": ["a", "b"], "entropy": [0.1], "clip_len": 1, "clip_end_step": 0, "step_ids": [0, 0],
           "score": 1.0, "group": 0}
    with pytest.raises(ValueError, match="record 0: tokens \\(2\\), entropy \\(1\\)"):
        render_clip_viewer([bad])
    with pytest.raises(ValueError, match="clip_len 5 outside"):
        render_clip_viewer([dict(bad, entropy=[0.1, 0.2], clip_len=5)])
    with pytest.raises(ValueError, match="group_kind 'some' is not one of"):
        render_clip_viewer([dict(bad, entropy=[0.1, 0.2], group_kind="some")])
    assert "No records" in render_clip_viewer([])


# ---------------------------------------------------------------------------- in a real browser
_PROBE = """<script>
const out = [];
for (const card of document.querySelectorAll('.card')) {
  const toks = [...card.querySelectorAll('.tok')];
  const box = e => { const r = e.getBoundingClientRect(); return [r.top, r.bottom, r.left, r.right]; };
  out.push({
    kind: card.querySelector('.kind') ? card.querySelector('.kind').textContent : null,
    text: toks.map(t => t.textContent),
    shadow: toks.map(t => getComputedStyle(t).boxShadow),
    display: [...card.querySelectorAll('.resp *')].map(e => getComputedStyle(e).display),
    lines: [...card.querySelectorAll('.line')].map(l => ({
      rects: l.getClientRects().length, marker: box(l.querySelector('.step')), first: box(l.querySelector('.tok')),
      last: box([...l.querySelectorAll('.tok')].pop()), text: l.querySelector('.step').textContent})),
    peak: [...card.querySelectorAll('.peak-marker')].map(box),
    peak_toks: [...card.querySelectorAll('.tok.peak')].map(box),
  });
}
const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("Chromium is not installed; the EchoClip page is checked in a headless browser. Install it with "
                "`apt-get update && apt-get install -y chromium` (`make test` does this through "
                "scripts/install_chromium.sh when it runs as root or with sudo).")


def _render_in_chromium(html_path, tmp_path, width: int) -> list[dict]:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={width},900", "--dump-dom",
           html_path.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="probe">(.*?)</pre>', res.stdout, re.S)
    assert res.returncode == 0 and m, f"chromium failed (rc {res.returncode}): {res.stderr[-2000:]}"
    import html as _html

    return json.loads(_html.unescape(m.group(1)))


@pytest.mark.parametrize("width", [1200, 360])  # 360 px: narrower than a line, which must still not wrap
def test_page_in_headless_chromium(tmp_path, width):
    tok, texts, responses, mask, entropy, scores, groups, sel, nl = _batch()
    recs = clip_records(responses, mask, entropy, sel, tok, (nl,), prompts=["p"] * 6, scores=scores,
                        group_ids=groups)
    page = render_clip_viewer(recs).replace("</body>", _PROBE + "</body>")
    path = tmp_path / "clips.html"
    path.write_text(page, encoding="utf-8")
    cards = _render_in_chromium(path, tmp_path, width)
    assert [c["kind"] for c in cards] == ["all-success 2/2", "mixed 1/2", "all-fail 0/2"]
    blue = "rgb(37, 99, 235)"
    for card, rec in zip(cards, recs):
        # rendered text: every token, newlines shown as the glyph
        assert card["text"] == [t.replace("\n", "\u21b5") for t in rec["tokens"]]
        # clip highlighting: the blue bar on exactly the first clip_len tokens
        assert [blue in s for s in card["shadow"]] == [i < rec["clip_len"] for i in range(len(rec["tokens"]))]
        assert all(s == "none" for s in card["shadow"][rec["clip_len"]:])
        assert "block" not in card["display"] and "flex" not in card["display"]  # inline layout only
        # one visual line per step, in order; each step's marker sits on the line of its first token
        assert [ln["text"] for ln in card["lines"]] == [str(k) for k in range(max(rec["step_ids"]) + 1)]
        tops = [ln["first"][0] for ln in card["lines"]]
        assert tops == sorted(tops) and len(set(tops)) == len(tops)
        for ln in card["lines"]:
            assert ln["rects"] == 1  # the line did not wrap
            mt, mb, _, mr = ln["marker"]
            ft, fb, fl, _ = ln["first"]
            assert mt < fb and ft < mb and mr <= fl + 0.5  # same line, marker just before the first token
            assert ln["last"][0] == ft  # the line's last token is on that same line
        if rec["clip_len"]:
            (pk,) = card["peak"]
            assert any(pk[0] < t[1] and t[0] < pk[1] for t in card["peak_toks"])  # marker on the peak step's line
        else:
            assert card["peak"] == []
