"""UFT rules by hand: the cosine hint schedule, segment cut points, hint sampling, the hint layout and
masking (never RL-trained, never in an EchoClip) and the hint NLL's gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from methods_support import micro_batch

from echorl.core.clips import select_echo_clips
from echorl.core.config import EchoConfig
from echorl.local.methods import LocalMethod, assemble_batch
from echorl.methods.config import MethodConfig, UftConfig
from echorl.methods.luffy import MethodLoss
from echorl.methods.uft import hint_denominator, hint_probability, hint_separations, sample_hint


def test_cosine_schedule_at_hand_picked_steps():
    """UFT counts steps from 1: 0-based step s uses t = s + 1 (rl_dataset.timestep starts at 1)."""
    cfg = UftConfig(hint_steps=300, lower_prob=0.05, upper_prob=0.95)
    # p(t) = 0.05 + 0.45 * (1 + cos(pi t / 300))
    assert hint_probability(0, cfg) == pytest.approx(0.05 + 0.45 * (1 + math.cos(math.pi / 300)))  # 0.949975
    assert hint_probability(0, cfg) == pytest.approx(0.949975, abs=1e-6)
    assert hint_probability(74, cfg) == pytest.approx(0.05 + 0.45 * (1 + math.sqrt(0.5)))  # t = 75: 0.818198
    assert hint_probability(74, cfg) == pytest.approx(0.818198, abs=1e-6)
    assert hint_probability(149, cfg) == pytest.approx(0.5)
    assert hint_probability(224, cfg) == pytest.approx(0.181802, abs=1e-6)
    assert hint_probability(299, cfg) == pytest.approx(0.05)  # t = 300 = T_hint: the last hinted step
    assert hint_probability(300, cfg) == 0.0
    assert hint_probability(0, UftConfig(hint_steps=0)) == 0.0


def test_pieces_as_in_ufts_data():
    """UFT's hint column (data/math: 1024 of 1024 rows reproduced by this rule)."""
    from echorl.methods.uft import hint_segments

    text = ("First, $x = 2$. Then $y = 3$.\n\nA.\tThe sum is 5.  It follows that\n$$5$$.\nSo 3.5 is wrong. "
            "\\boxed{5}")
    assert hint_segments(text) == ["First, $x = 2$. ", "Then $y = 3$.\n", "\n", "A.\t", "The sum is 5. ",
                                   " It follows that\n", "$$5$$.\n", "So 3.5 is wrong. ", "\\boxed{5}"]
    assert hint_segments(text, "lines") == ["First, $x = 2$. Then $y = 3$.\n", "\n",
                                            "A.\tThe sum is 5.  It follows that\n", "$$5$$.\n",
                                            "So 3.5 is wrong. \\boxed{5}"]
    assert "".join(hint_segments(text)) == text


def test_segment_cut_points():
    assert hint_separations(12, 5) == [0, 2, 5, 7, 10, 12]  # round(i/5 * 12)
    assert hint_separations(3, 5) == [0, 1, 2, 3]
    assert hint_separations(0, 5) == [0]


def test_sample_hint_extremes_and_binomial_mean():
    text = "".join(f"line {i}\n" for i in range(10))
    rng = np.random.default_rng(0)
    always = UftConfig(hint_steps=10, lower_prob=1.0, upper_prob=1.0)
    never = UftConfig(hint_steps=10, lower_prob=0.0, upper_prob=0.0)
    assert sample_hint(text, 3, always, rng) == text
    assert sample_hint(text, 3, never, rng) == ""
    assert sample_hint(text, 11, always, rng) == ""  # after hint_steps: no hint
    assert sample_hint(None, 0, always, rng) == ""
    half = UftConfig(hint_steps=10, lower_prob=0.5, upper_prob=0.5)
    lines = [sample_hint(text, 0, half, rng).count("\n") for _ in range(4000)]
    assert set(lines) <= {0, 2, 4, 6, 8, 10}  # 5 segments of 2 lines
    assert np.mean(lines) == pytest.approx(5.0, abs=0.15)  # E = 10 * 0.5


def _uft_method(tok, upper=1.0):
    cfg = MethodConfig.from_dict({"name": "uft", "uft": {"hint_steps": 10, "lower_prob": upper, "upper_prob": upper}})
    return LocalMethod(cfg, tok, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id or 0, n=2, max_response_length=32)


def test_hint_opens_the_response_with_mask_zero_and_is_never_clipped():
    from echorl.models.char_tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    method = _uft_method(tok)
    rows = [{"solution": "1+2=3\nAnswer: 3"}, {"prompt": "no solution"}]
    prompts = [tok("Q1", add_special_tokens=False)["input_ids"], tok("Q2", add_special_tokens=False)["input_ids"]]
    gen_prompts = method.generation_prompts(prompts, rows, step=0)
    hint = tok("1+2=3\nAnswer: 3", add_special_tokens=False)["input_ids"]  # p = 1: the whole solution
    assert gen_prompts[0] == prompts[0] + hint and gen_prompts[1] == prompts[1]
    gen = tok("\nx\ny", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    rb = assemble_batch([gen_prompts[i // 2] for i in range(4)], [gen] * 4, [[1] * len(gen)] * 4, 0,
                        torch.tensor([0, 0, 1, 1]))
    out = method.after_rollout(rb, rows, prompts)
    H = len(hint)
    assert out.prompts[0][out.attention_mask[0, :out.prompts.shape[1]].bool()].tolist() == prompts[0]
    assert out.responses[0, :H + len(gen)].tolist() == hint + gen
    assert out.response_mask[0, :H].sum() == 0 and out.response_mask[0, H:H + len(gen)].sum() == len(gen)
    assert out.responses[2, :len(gen)].tolist() == gen and int(out.response_mask[2].sum()) == len(gen)
    fields = method.batch_fields(out, num_minibatches=1)
    assert fields["hint_mask"][:2, :H].all() and int(fields["hint_mask"].sum()) == 2 * H
    assert fields["hint_denom"].tolist() == [2.0 * H] * 4
    # EchoRL: every row succeeds, selector=full would take the whole response, yet no hint token
    cfg = EchoConfig(boundary_token_ids=tuple(tok("\n", add_special_tokens=False)["input_ids"]), scope="success",
                     per="rollout", selector="full")
    entropy = torch.rand(out.responses.shape, generator=torch.Generator().manual_seed(0))
    sel = select_echo_clips(out.responses, method.echo_response_mask(out), entropy, torch.ones(4), out.group_index, cfg)
    assert sel.mask.any(1).all() and not (sel.mask & fields["hint_mask"]).any()
    assert torch.equal(sel.mask, out.response_mask.bool())  # 'full': exactly the generated tokens
    # method.uft.echo_hinted=false: the hinted group (rows 0-1) gives no clip, the unhinted one does
    strict = LocalMethod(MethodConfig.from_dict({"name": "uft", "uft": {"echo_hinted": False}}), tok,
                         eos_id=tok.eos_token_id, pad_id=0, n=2, max_response_length=32)
    strict.hint_mask = fields["hint_mask"]
    sel = select_echo_clips(out.responses, strict.echo_response_mask(out), entropy, torch.ones(4), out.group_index, cfg)
    assert sel.mask.any(1).tolist() == [False, False, True, True]


@pytest.mark.parametrize("coef", [None, 0.5])
def test_hint_nll_gradient_by_hand(token_mean_actor, coef):
    """Zero advantages: the only gradient is coef * (-1) / D on each hint token (default coef: UFT's
    sft_loss_coef 0.001)."""
    logp = torch.full((2, 4), math.log(0.25), requires_grad=True)
    hint = torch.tensor([[True, True, False, False], [False, False, False, False]])
    rmask = (~hint).long()
    out, data = micro_batch(logp, logp.detach().clone(), torch.zeros(2, 4), rmask, hint_mask=hint,
                            hint_denom=torch.full((2,), 4.0))
    cfg = MethodConfig.from_dict({"name": "uft", "uft": {} if coef is None else {"coef": coef}})
    c = 0.001 if coef is None else coef
    loss, metrics = MethodLoss(token_mean_actor, EchoConfig(enable=False), cfg)(out, data)
    assert loss.item() == pytest.approx(c * 2 * math.log(4) / 4, rel=1e-6)
    loss.backward()
    want = torch.zeros(2, 4)
    want[0, :2] = -c / 4
    assert torch.allclose(logp.grad, want, atol=1e-9)
    assert float(metrics["uft/hint_nll"].values[0]) == pytest.approx(2 * math.log(4) / 4, rel=1e-6)


def test_hint_denominator():
    m = torch.zeros(4, 5, dtype=torch.bool)
    m[0, :3] = True
    m[2, :5] = True
    assert hint_denominator(m, 2) == 4.0
    assert hint_denominator(torch.zeros(2, 2, dtype=torch.bool), 2) == 1.0


def test_bad_config_names_the_key():
    with pytest.raises(ValueError, match=r"method\.uft\.lower_prob"):
        MethodConfig.from_dict({"name": "uft", "uft": {"lower_prob": 0.9, "upper_prob": 0.5}})
    with pytest.raises(ValueError, match=r"method\.name"):
        MethodConfig.from_dict({"name": "sft"})
    with pytest.raises(ValueError, match=r"method\.luffy\.gama"):
        MethodConfig.from_dict({"name": "luffy", "luffy": {"gama": 0.1}})
    with pytest.raises(ValueError, match=r"method\.luffy\.gamma"):
        MethodConfig.from_dict({"name": "luffy", "luffy": {"gamma": 0}})
    with pytest.raises(ValueError, match=r"method\.uft\.segments must be one of \['uft', 'lines'\]"):
        MethodConfig.from_dict({"name": "uft", "uft": {"segments": "sentences"}})
    with pytest.raises(ValueError, match=r"method\.uft\.score_hint must be true or false"):
        MethodConfig.from_dict({"name": "uft", "uft": {"score_hint": "no"}})
    with pytest.raises(ValueError, match=r"method\.luffy\.on_policy_clip must be true or false"):
        MethodConfig.from_dict({"name": "luffy", "luffy": {"on_policy_clip": 1}})
    d = MethodConfig()  # every default is the authors'
    assert (d.luffy.on_policy_clip, d.luffy.gamma, d.uft.segments, d.uft.score_hint, d.uft.coef) == (
        False, 0.1, "uft", False, 0.001)


@pytest.mark.parametrize("score_hint", [False, True])
def test_engine_verifier_reads_the_continuation(score_hint):
    from echorl.models.char_tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    cfg = MethodConfig.from_dict({"name": "uft", "uft": {"hint_steps": 10, "lower_prob": 1.0, "upper_prob": 1.0,
                                                         "score_hint": score_hint}})
    method = LocalMethod(cfg, tok, eos_id=tok.eos_token_id, pad_id=0, n=2, max_response_length=32)
    prompts = [tok("q", add_special_tokens=False)["input_ids"]]
    gen_prompts = method.generation_prompts(prompts, [{"solution": "1+4=5\nAnswer: 5"}], step=0)
    cont = tok("ok 5", add_special_tokens=False)["input_ids"]
    rb = assemble_batch(gen_prompts * 2, [cont, cont[:2]], [[1] * 4, [1] * 2], 0, torch.tensor([0, 0]))
    out = method.after_rollout(rb, [{"solution": "1+4=5\nAnswer: 5"}], prompts)
    hint = "1+4=5\nAnswer: 5" if score_hint else ""
    assert method.verifier_texts(out) == [hint + "ok 5", hint + "ok"]
