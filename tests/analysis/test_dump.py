"""echorl/analysis/dump.py: a step's EchoClip dump round-trips through echo_clips.json into the HTML
page (the clip tokens, and only they, inside the highlighted clip), and the dump config refuses bad
values by name."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
import torch

from echorl import EchoConfig, select_echo_clips
from echorl.analysis.dump import DumpConfig, dump_records, write_dump
from echorl.models.char_tokenizer import build_char_tokenizer


class _Clip(HTMLParser):
    """Per card: the text of every token span and whether it sits inside an element of class ``clip``."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.cards, self.stack = [], []

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        if tag == "div" and classes == ["card"]:
            self.cards.append([])
        if tag == "span" and "tok" in classes:
            self.cards[-1].append(["", "clip" in classes or any("clip" in cs for _, cs in self.stack)])
        if tag not in ("br",):
            self.stack.append((tag, classes))

    def handle_endtag(self, tag):
        if tag not in ("br",):
            self.stack.pop()

    def handle_data(self, data):
        in_tok = any("tok" in cs for _, cs in self.stack)
        glyph = any("nl" in cs for _, cs in self.stack)
        if self.cards and in_tok and not glyph:
            self.cards[-1][-1][0] += data.replace("\n", "")  # a newline token shows as a glyph (and maybe a newline)


def _batch(tok):
    """Groups: A all-success (2 rows), B mixed, C all-fail, plus an empty (padding) row."""
    texts = ["3+4=7\n7*2=14\nAnswer: 14", "3+4=7\n7*2=15\nAnswer: 14", "9-2=7\nAnswer: 7", "9-2=6\nAnswer: 6",
             "1+1=3\nAnswer: 3", "1+1=4\nAnswer: 4", ""]
    scores = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    uids = ["A", "A", "B", "B", "C", "C", "pad"]
    ids = [tok.encode(t, add_special_tokens=False) + ([tok.eos_token_id] if t else []) for t in texts]
    L = max(map(len, ids))
    responses = torch.full((len(ids), L), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(ids), L, dtype=torch.long)
    for i, x in enumerate(ids):
        responses[i, :len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, :len(x)] = 1
    entropy = torch.rand(responses.shape, generator=torch.Generator().manual_seed(0)) * 2
    return responses, mask, entropy, scores, uids


def test_dump_round_trips_into_the_page(tmp_path):
    from echorl.cli import main

    tok = build_char_tokenizer()
    responses, mask, entropy, scores, uids = _batch(tok)
    cfg = EchoConfig(boundary_token_ids=(3,), scope="success", per="rollout")
    sel = select_echo_clips(responses, mask, entropy, scores, uids, cfg)
    prompts = [f"Compute <{u}> & more" for u in uids]  # characters the page must escape
    recs = dump_records(responses, mask, entropy, sel, tok, (3,), prompts=prompts, scores=scores, group_ids=uids,
                        step=20, max_records=12)
    path = write_dump(recs, tmp_path / "dump", step=20)
    assert path == tmp_path / "dump" / "echo_clips.json"
    assert json.loads((tmp_path / "dump" / "echo_clips_step000020.json").read_text()) == json.loads(path.read_text())
    back = json.loads(path.read_text())
    # the viewer's sample covers every group; the padding row is never dumped
    assert 3 <= len(back) <= 6 and {r["group"] for r in back} == {"A", "B", "C"}
    for r in back:
        b = next(i for i in range(6) if prompts[i] == r["prompt"]
                 and tok.decode(responses[i][mask[i].bool()].tolist()) == "".join(r["tokens"]))
        v = mask[b].bool()
        assert r["step"] == 20 and r["score"] == float(scores[b]) and r["group"] == uids[b]
        assert r["tokens"] == [tok.decode([t]) for t in responses[b][v].tolist()]
        assert r["entropy"] == pytest.approx(entropy[b][v].tolist())
        assert r["clip_len"] == int(sel.mask[b].sum()) and r["clip_end_step"] == (int(sel.clip_end_step[b]) if r["clip_len"] else -1)
    assert main(["analyze", "clips", str(tmp_path / "dump")]) == 0
    page = (tmp_path / "dump" / "echo_clips.html").read_text()
    assert "Compute &lt;A&gt; &amp; more" in page
    parser = _Clip()
    parser.feed(page)
    assert len(parser.cards) == len(back)
    for card, r in zip(parser.cards, back):
        assert [t for t, _ in card] == [t.replace("\n", "") for t in r["tokens"]]  # every token, in order
        assert [c for _, c in card] == [i < r["clip_len"] for i in range(len(r["tokens"]))]  # the clip is highlighted
    clipped = [r for r in back if r["clip_len"]]  # every row of group A has a clip (scope=success, per=rollout)
    assert clipped and all(r["score"] >= 1.0 for r in clipped)


def test_dump_config_validates_and_schedules():
    assert DumpConfig.from_dict(None) == DumpConfig(freq=10, dir=None, max_records=12)
    c = DumpConfig.from_dict({"freq": 5, "dir": "/tmp/x"})
    assert [s for s in range(0, 16) if c.due(s)] == [5, 10, 15]
    assert not any(DumpConfig(freq=0).due(s) for s in range(10))
    with pytest.raises(ValueError, match=r"echorl_dump.freq must be an integer >= 0, got -1"):
        DumpConfig(freq=-1)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['echorl_dump.every'\]; valid: .*echorl_dump.freq"):
        DumpConfig.from_dict({"every": 3})
    with pytest.raises(ValueError, match="max_records=0"):
        DumpConfig(freq=2, max_records=0)


def test_cli_clips_refuses_a_missing_dump(tmp_path):
    from echorl.cli import main

    with pytest.raises(FileNotFoundError, match="echo_clips.json"):
        main(["analyze", "clips", str(tmp_path)])
