"""`python -m echorl.verl.cpu.smoke`: the check on where the dumped EchoClips end, the SmolLM2 run's
lenient reward, and the model choice (the runs themselves: `make verl-smoke [MODEL=smollm2]`, and
tests/verl/e2e for the tiny model)."""

from __future__ import annotations

import json

import pytest

from echorl.verl.cpu.smoke import MODELS, check_clip_ends, contains_answer_score, model_overrides


def _record(tokens: list[str], clip_len: int, group: str = "g") -> dict:
    return {"prompt": "p", "tokens": tokens, "entropy": [0.0] * len(tokens), "clip_len": clip_len,
            "clip_end_step": 0 if clip_len else -1, "step_ids": [0] * len(tokens), "score": 1.0, "group": group}


def _dump(folder, step: int, records: list[dict]) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"echo_clips_step{step:06d}.json").write_text(json.dumps(records))


def test_clip_ends_are_counted_per_kind(tmp_path):
    """BPE-style tokens: '.\\n\\n' and ':\\n' end with a newline (boundaries under boundary=auto)."""
    _dump(tmp_path, 1, [_record(["Let", " x", ".\n\n", "Then", " 3", ":\n", "x"], 3),
                        _record(["So", " 7", ":\n", "Answer"], 4),  # the peak step is the last one
                        _record(["No", " clip"], 0)])
    _dump(tmp_path, 2, [_record(["A", "\n", "B", "\n"], 4)])
    (tmp_path / "echo_clips.json").write_text("[]")  # the latest-dump copy is not read twice
    assert check_clip_ends(tmp_path) == {"records": 4, "clips": 3, "at_newline": 2, "at_response_end": 1}


def test_a_clip_ending_inside_a_step_is_an_error(tmp_path):
    _dump(tmp_path, 3, [_record(["Let", " x", ".\n\n", "Then"], 2, group="u7")])
    with pytest.raises(ValueError, match=r"echo_clips_step000003\.json: a clip of 2 tokens ends at ' x'.*group u7"):
        check_clip_ends(tmp_path)


def test_no_clip_at_a_newline_or_no_dump_is_an_error(tmp_path):
    _dump(tmp_path, 1, [_record(["one", " step"], 2), _record(["x"], 0)])
    with pytest.raises(ValueError, match="no EchoClip .* ends at a newline-ending token"):
        check_clip_ends(tmp_path)
    with pytest.raises(ValueError, match="no EchoClip dump"):
        check_clip_ends(tmp_path / "missing")


@pytest.mark.parametrize("text,answer,score", [
    ("To compute 7 + 5:\n7 + 5 = 12\n", 12, 1.0),
    ("12", "12", 1.0),
    ("The result is 120.", 12, 0.0),   # another number that contains it
    ("about 1.2 or 12.5", 12, 0.0),    # decimals do not count
    ("3 + 4 = 7", 12, 0.0),
    ("", 3, 0.0),
])
def test_contains_answer_score(text, answer, score):
    assert contains_answer_score("echorl/arithmetic", text, answer) == score


def test_unknown_model_names_the_choices():
    assert MODELS == ("tiny", "smollm2")
    with pytest.raises(ValueError, match="unknown smoke model 'qwen'; choose one of tiny, smollm2"):
        model_overrides("qwen")
