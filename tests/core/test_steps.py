"""Tests of echorl/core/steps.py: segmentation (SPEC 2.1), step entropy (SPEC 2.2), auto ids.

Run: ``.venv/bin/python -m pytest -q tests/core/test_steps.py``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from echorl import auto_boundary_token_ids, segment_steps, step_aggregates
from echorl.core.steps import STEP_AGGS

from .reference import ref_step_value, ref_steps

N, M = 198, 271  # Qwen "\n" and "\n\n"
BIDS = torch.tensor([N, M])
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def seg(tokens, valid=None, device="cpu"):
    """segment_steps on one row; returns (step_id list, num_steps, has_boundary)."""
    r = torch.tensor([tokens], device=device)
    v = torch.ones_like(r, dtype=torch.bool) if valid is None else torch.tensor([valid], device=device).bool()
    sid, n, hb = segment_steps(r, v, BIDS.to(device))
    return sid[0].tolist(), int(n[0]), bool(hb[0])


# ---------------------------------------------------------------------------- SPEC 2.1 by hand
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "tokens, valid, expected, n_steps, has_b",
    [
        # plain: the newline closes its step
        ([5, 6, N, 7, N], None, [0, 0, 0, 1, 1], 2, True),
        # consecutive newlines (both ids) are one delimiter that belongs to the step it closes
        ([5, N, M, N, 6], None, [0, 0, 0, 0, 1], 2, True),
        # boundary as the first token: it belongs to the first step
        ([N, 5, N, 6], None, [0, 0, 0, 1], 2, True),
        # a leading run of newlines belongs to the first step
        ([N, M, N, 5, 6, N, 7], None, [0, 0, 0, 0, 0, 0, 1], 2, True),
        # a response made of newlines only is one step
        ([N, N, M], None, [0, 0, 0], 1, True),
        ([M], None, [0], 1, True),
        # boundary as the last token (and a trailing run): closes the last step, no empty step
        ([5, N], None, [0, 0], 1, True),
        ([5, N, 6, N, N], None, [0, 0, 1, 1, 1], 2, True),
        # no boundary at all: one step
        ([5, 6, 7], None, [0, 0, 0], 1, False),
        # a single token
        ([5], None, [0], 1, False),
        # a masked boundary does not break a step
        ([5, N, 6, N, 7], [1, 0, 1, 1, 1], [0, -1, 0, 0, 1], 2, True),
        # a masked non-boundary between two newlines does not split the run
        ([5, N, 9, M, 6], [1, 1, 0, 1, 1], [0, 0, -1, 0, 1], 2, True),
        # masked positions at both ends
        ([9, N, 5, N, 6, 9], [0, 1, 1, 1, 1, 0], [-1, 0, 0, 0, 1, -1], 2, True),
        # a hole after the newline: the next *valid* token decides
        ([5, N, 9, 6, N], [1, 1, 0, 1, 1], [0, 0, -1, 1, 1], 2, True),
        # a hole that hides the only boundary: one step, no valid boundary
        ([5, N, 6], [1, 0, 1], [0, -1, 0], 1, False),
        # an empty row
        ([5, N, 6], [0, 0, 0], [-1, -1, -1], 0, False),
        # many steps
        ([1, N, 2, N, 3, M, 4, N, N, 5], None, [0, 0, 1, 1, 2, 2, 3, 3, 3, 4], 5, True),
    ],
)
def test_segment_steps_by_hand(tokens, valid, expected, n_steps, has_b, device):
    assert seg(tokens, valid, device) == (expected, n_steps, has_b)
    # the literal reference agrees with the hand-computed answer
    v = [True] * len(tokens) if valid is None else [bool(x) for x in valid]
    ref = [-1] * len(tokens)
    for k, positions in enumerate(ref_steps(tokens, v, {N, M})):
        for t in positions:
            ref[t] = k
    assert ref == expected


def test_segment_steps_batch_of_rows_and_custom_ids():
    r = torch.tensor([[5, 7, 6, 7, 0], [7, 7, 5, 0, 0]])
    v = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    sid, n, hb = segment_steps(r, v, torch.tensor([7]))
    assert sid.tolist() == [[0, 0, 1, 1, -1], [0, 0, 0, -1, -1]]
    assert n.tolist() == [2, 1] and hb.tolist() == [True, True]
    assert sid.dtype == torch.long and n.dtype == torch.long and hb.dtype == torch.bool


def test_segment_steps_zero_length():
    sid, n, hb = segment_steps(torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, 0, dtype=torch.bool), BIDS)
    assert sid.shape == (3, 0) and n.tolist() == [0, 0, 0] and hb.tolist() == [False] * 3


@st.composite
def rows(draw):
    L = draw(st.integers(0, 30))
    p_b = draw(st.sampled_from([0.0, 0.1, 0.4, 0.8, 1.0]))
    p_hole = draw(st.sampled_from([0.0, 0.2, 0.6]))
    toks = [draw(st.sampled_from([N, M])) if draw(st.floats(0, 1)) < p_b else draw(st.integers(0, 9)) for _ in range(L)]
    valid = [draw(st.floats(0, 1)) >= p_hole for _ in range(L)]
    return toks, valid


@settings(max_examples=300, deadline=None, derandomize=True)
@given(rows())
def test_segment_steps_matches_reference(row):
    toks, valid = row
    ref = [-1] * len(toks)
    steps = ref_steps(toks, valid, {N, M})
    for k, positions in enumerate(steps):
        for t in positions:
            ref[t] = k
    sid, n, hb = seg(toks, valid) if toks else ([], 0, False)
    assert sid == ref
    assert n == len(steps)
    assert hb == any(valid[t] and toks[t] in (N, M) for t in range(len(toks)))
    # no step is made of boundaries only, unless the whole response is
    if any(valid[t] and toks[t] not in (N, M) for t in range(len(toks))):
        assert all(any(toks[t] not in (N, M) for t in positions) for positions in steps)


# ---------------------------------------------------------------------------- SPEC 2.2 by hand
STEP_ID = torch.tensor([[0, 0, 1, -1, 1, 2], [0, -1, -1, -1, -1, -1]])
ENT = torch.tensor([[1.0, 3.0, 2.0, float("nan"), 0.5, 4.0], [7.0, float("inf"), 0, 0, 0, 0]])


@pytest.mark.parametrize(
    "agg, expected",
    [
        ("mean", [[2.0, 1.25, 4.0, 0.0], [7.0, 0.0, 0.0, 0.0]]),
        ("sum", [[4.0, 2.5, 4.0, 0.0], [7.0, 0.0, 0.0, 0.0]]),
        ("max", [[3.0, 2.0, 4.0, 0.0], [7.0, 0.0, 0.0, 0.0]]),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
def test_step_aggregates_by_hand(agg, expected, dtype, device):
    """NaN/inf at masked positions are ignored; missing steps are 0 with count 0; S may exceed the steps."""
    h, count = step_aggregates(STEP_ID.to(device), ENT.to(dtype).to(device), 4, agg)
    assert h.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert h.cpu().double().tolist() == expected  # exact: every value is a dyadic rational
    assert count.cpu().tolist() == [[2, 2, 1, 0], [1, 0, 0, 0]]


def test_step_aggregates_unknown_name():
    with pytest.raises(ValueError, match="step_agg.*'median'.*valid names"):
        step_aggregates(STEP_ID, ENT, 3, "median")


def test_step_agg_registry_names_and_duplicates():
    assert STEP_AGGS.names() == ["max", "mean", "sum"]
    with pytest.raises(ValueError, match="step_agg: 'mean' is already registered"):
        STEP_AGGS.register("mean")(lambda *a: None)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(rows(), st.sampled_from(["mean", "sum", "max"]), st.data())
def test_step_aggregates_match_reference(row, agg, data):
    toks, valid = row
    if not toks:
        return
    ent = [data.draw(st.integers(0, 40)) / 8 for _ in toks]  # dyadic: exact in every float dtype
    sid, n, _ = segment_steps(torch.tensor([toks]), torch.tensor([valid]), BIDS)
    h, count = step_aggregates(sid, torch.tensor([ent], dtype=torch.float64), max(n.item(), 1), agg)
    steps = ref_steps(toks, valid, {N, M})
    assert h[0, : len(steps)].tolist() == [ref_step_value([ent[t] for t in s], agg) for s in steps]
    assert count[0, : len(steps)].tolist() == [len(s) for s in steps]


# ---------------------------------------------------------------------------- boundary='auto'
def byte_level_tokenizer():
    """An offline Qwen-like byte-level BPE tokenizer ('Ċ' is a newline byte, 'Ġ' a space)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {
        "<|endoftext|>": 0, "a": 1, "b": 2, ".": 3, "Ċ": 4, "ĊĊ": 5, ".ĊĊ": 6, "aĊ": 7, "ĠĊ": 8,
        "ĊĠ": 9, "Ġa": 10, "xĊy": 11, "ĊĊĊ": 12, ")ĊĊ": 13, "Ġ": 14,
    }
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # "ĊĊĊ" decodes to "\n\n\n" but is a special token (pad): it must not count as a boundary
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="ĊĊĊ")


def test_auto_boundary_ids_are_exactly_the_newline_ending_tokens():
    tok = byte_level_tokenizer()
    assert tok.decode([6]) == ".\n\n" and tok.decode([12]) == "\n\n\n"
    # "\n", "\n\n", ".\n\n", "a\n", " \n", ")\n\n"; not "\n " (9), "x\ny" (11) or the special 12
    assert auto_boundary_token_ids(tok) == (4, 5, 6, 7, 8, 13)


def test_auto_boundary_ids_none_found():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]")))
    with pytest.raises(ValueError, match="boundary='auto'.*boundary_token_ids"):
        auto_boundary_token_ids(tok)


@pytest.mark.parametrize("num_ids", [1, 2, 8, 9, 40])
def test_is_boundary_token_equals_isin(num_ids):
    # Both branches (OR of equalities for <= 8 ids, torch.isin beyond) must give isin's answer.
    from echorl.core.steps import is_boundary_token

    g = torch.Generator().manual_seed(num_ids)
    tokens = torch.randint(0, 60, (7, 33), generator=g)
    ids = torch.randperm(60, generator=g)[:num_ids]
    got = is_boundary_token(tokens, ids)
    assert got.dtype == torch.bool
    assert torch.equal(got, torch.isin(tokens, ids))
    assert int(got.sum()) > 0


# ---------------------------------------------------------------------------- long holes
@pytest.mark.parametrize("windows", [(), (1,), (8, 64, 512)])
def test_next_valid_scan_and_count_paths_agree_with_a_loop(windows):
    """``next_valid`` resolves short gaps by a forward scan and long ones (multi-turn tool output)
    through the valid-token count; both against a plain loop."""
    from echorl.core.steps import next_valid

    g = torch.Generator().manual_seed(len(windows))
    valid = torch.rand(5, 300, generator=g) > 0.3
    valid[1, 40:200] = False  # a 160-token hole
    valid[2, 150:] = False  # nothing valid after 149
    valid[3] = False
    rows = torch.arange(5).repeat_interleave(300)
    cols = torch.arange(300).repeat(5)
    got = next_valid(valid, rows, cols, windows=windows).tolist()
    want = []
    for r, c in zip(rows.tolist(), cols.tolist()):
        p = c
        while p < 300 and not bool(valid[r, p]):
            p += 1
        want.append(p if p < 300 else -1)
    assert got == want


def test_segment_steps_with_long_holes_matches_reference():
    g = torch.Generator().manual_seed(0)
    E, L = 8, 400
    toks = torch.randint(0, 10, (E, L), generator=g)
    toks[torch.rand(E, L, generator=g) < 0.15] = N
    valid = torch.rand(E, L, generator=g) > 0.05
    for r in range(E):  # one long masked block per row, as tool output leaves
        a = int(torch.randint(0, L - 100, (1,), generator=g))
        valid[r, a:a + 40 + 10 * r] = False
    toks[:, 148] = N  # boundaries right before holes
    valid[:, 148] = True
    valid[:, 149] = False
    sid, n, hb = segment_steps(toks, valid, torch.tensor([N, M]))
    for r in range(E):
        ref = [-1] * L
        steps = ref_steps(toks[r].tolist(), valid[r].tolist(), {N, M})
        for k, positions in enumerate(steps):
            for t in positions:
                ref[t] = k
        assert sid[r].tolist() == ref and int(n[r]) == len(steps)


class _Tok:
    """The three calls check_boundary_ids makes; 300 ids, 198 '\\n', 271 '\\n\\n', the rest 'x'."""

    def __len__(self):
        return 300

    def decode(self, ids):
        return {198: "\n", 271: "\n\n"}.get(ids[0], "x")

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[198 if c == "\n" else 5 for c in t] for t in texts]}


def test_check_boundary_ids_against_the_tokenizer():
    from echorl.core.steps import EchoBoundaryWarning, check_boundary_ids

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_boundary_ids((198, 271), _Tok(), ["a\nb"])  # fine: in the vocabulary, newlines, occur
    with pytest.warns(EchoBoundaryWarning, match=r"\[5\] decode to \['x'\]"):
        check_boundary_ids((198, 5), _Tok())
    with pytest.raises(ValueError, match=r"\[400\] are outside the vocabulary of _Tok \(size 300\)"):
        check_boundary_ids((198, 400), _Tok())
    with pytest.warns(EchoBoundaryWarning, match=r"never occur in 2 tokenized reference solutions"):
        check_boundary_ids((271,), _Tok(), ["a\nb", None, "c"])
