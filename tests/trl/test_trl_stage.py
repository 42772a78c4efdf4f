"""echorl.trl.stage: the EchoRL stage over a batch dealt out over processes, and the loss scale.

The processes are simulated in one: process ``p`` of ``P`` holds global rows ``[p*b, (p+1)*b)``,
trimmed to its own width (TRL pads each process's completions to its own longest), and its
``gather`` returns what ``accelerate`` returns, the padded parts concatenated in process order.
The real 2-process run is tests/trl/test_two_process.py.
"""

from __future__ import annotations

import pytest
import torch

from echorl.core.config import EchoConfig
from echorl.core.loss import echo_loss_term
from echorl.trl.stage import SingleProcess, echo_term_scale, minibatches_per_generation, split_echo_stage

BOUNDARY = 9
N_GEN = 4


class Simulated:
    """Process ``index`` of ``parts`` (each a list of this call's per-process tensors, in call order)."""

    def __init__(self, index: int, parts: list[list[torch.Tensor]]):
        self.process_index, self.num_processes = index, len(parts)
        self._parts, self._calls = parts, 0

    def pad_across_processes(self, t, dim=0, pad_index=0):
        return t  # the gather below pads every part to the widest

    def gather(self, t):
        parts = [p[self._calls] for p in self._parts]
        self._calls += 1
        if t.dim() == 2:
            width = max(p.shape[1] for p in parts)
            parts = [torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts]
        return torch.cat(parts)


def _batch(B=12, L=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    responses = torch.randint(0, 8, (B, L), generator=g)
    responses[torch.rand(B, L, generator=g) < 0.25] = BOUNDARY
    lengths = torch.randint(3, L + 1, (B,), generator=g)
    lengths[5] = 0  # an empty row: never a group member
    mask = (torch.arange(L) < lengths.unsqueeze(1)).int()
    entropy = torch.rand(B, L, generator=g) * 2
    scores = (torch.rand(B, generator=g) < 0.6).float()
    scores[4:8] = 1.0  # group 1 (rows 4-7) all succeed and straddles every split with b not a multiple of 4
    advantages = torch.randn(B, generator=g)
    return responses, mask, entropy, scores, advantages


def _split(P, responses, mask, entropy, advantages):
    """Per-process parts, each trimmed to its own width (at least 1 column)."""
    b = responses.shape[0] // P
    out = []
    for p in range(P):
        rows = slice(p * b, (p + 1) * b)
        width = max(1, int(mask[rows].sum(1).max()))
        out.append([responses[rows, :width].int(), (mask[rows, :width] != 0).to(torch.uint8),
                    entropy[rows, :width].float(), advantages[rows].float()])
    return out


@pytest.mark.parametrize("P", [2, 3, 4, 6])
@pytest.mark.parametrize("cfg", [EchoConfig(boundary_token_ids=(BOUNDARY,), boundary="fixed"),
                                 EchoConfig(boundary_token_ids=(BOUNDARY,), boundary="fixed", preset="degenerate"),
                                 EchoConfig(boundary_token_ids=(BOUNDARY,), boundary="fixed", mode="advantage")],
                         ids=["paper", "degenerate", "advantage"])
def test_every_split_selects_what_one_process_selects(P, cfg):
    responses, mask, entropy, scores, adv = _batch()
    whole = split_echo_stage(responses, mask, entropy, adv, scores, N_GEN, cfg, SingleProcess(), num_minibatches=2)
    assert whole.stage.metrics["echo/clips"] > 1  # the case is not vacuous
    parts = _split(P, responses, mask, entropy, adv)
    b = responses.shape[0] // P
    for p in range(P):
        r, m, e, a = parts[p]
        res = split_echo_stage(r, m, e, a, scores, N_GEN, cfg, Simulated(p, parts), num_minibatches=2)
        rows = slice(p * b, (p + 1) * b)
        assert res.rows == rows
        width = r.shape[1]
        assert torch.equal(res.echo_mask, whole.echo_mask[rows, :width])
        assert not whole.echo_mask[rows, width:].any()
        assert torch.equal(res.echo_denom, whole.echo_denom[rows])
        assert res.stage.metrics == whole.stage.metrics
        if cfg.adds_advantage_bonus:
            clips = whole.stage.selection.mask[rows, :width]  # mode='advantage': clips ride the advantages
            assert clips.any() or p > 0
            assert not res.echo_mask.any()
            assert torch.equal(res.advantages, a.unsqueeze(1) + cfg.adv_coef * clips.float())
        else:
            assert res.advantages is None


def test_the_group_choice_crosses_processes():
    """Group 1 (rows 4-7) all succeed; with b=6 its members sit on both processes. per=group keeps
    one clip for it, the member with the highest peak step entropy, wherever it sits."""
    responses, mask, entropy, scores, adv = _batch()
    cfg = EchoConfig(boundary_token_ids=(BOUNDARY,), boundary="fixed")
    entropy = entropy.clone()
    entropy[6, 0] = 50.0  # row 6 (process 1) has the group's highest step
    parts = _split(2, responses, mask, entropy, adv)
    got = [split_echo_stage(*parts[p][:3], parts[p][3], scores, N_GEN, cfg, Simulated(p, parts)) for p in range(2)]
    clipped = torch.cat([g.echo_mask.any(1) for g in got])
    assert clipped[4:8].tolist() == [False, False, True, False]


def test_refuses_a_batch_of_partial_groups():
    responses, mask, entropy, scores, adv = _batch(B=12)
    cfg = EchoConfig(boundary_token_ids=(BOUNDARY,), boundary="fixed")
    with pytest.raises(ValueError, match="num_generations=5"):
        split_echo_stage(responses, mask, entropy, adv, scores, 5, cfg, SingleProcess())
    with pytest.raises(ValueError, match=r"scores must hold one reward per row of the global batch \[P\*b\]=\[12\]"):
        split_echo_stage(responses, mask, entropy, adv, scores[:6], N_GEN, cfg, SingleProcess())


def test_echo_term_scale():
    assert echo_term_scale(1, 4, 1) == 1.0
    assert echo_term_scale(4, 4, 2) == 4.0
    assert echo_term_scale(2, 1, 4) == 0.5  # one optimizer step over 4 generation batches of one mini-batch each
    assert minibatches_per_generation(4, 2) == 2 and minibatches_per_generation(1, 4) == 1
    with pytest.raises(ValueError, match=r"steps_per_generation \(3\).*gradient_accumulation_steps \(2\)"):
        echo_term_scale(1, 3, 2)


@pytest.mark.parametrize("P,spg,ga", [(1, 4, 1), (2, 4, 2), (4, 2, 1), (2, 2, 2)])
def test_gradient_does_not_depend_on_the_split(P, spg, ga):
    """The applied gradient of the EchoRL term over one mini-batch: per process and micro-batch,
    ``scale * echo_loss_term`` summed over the accumulation window and averaged over processes (as
    data-parallel reduction does), equals the one-process term over the whole mini-batch."""
    responses, mask, entropy, scores, adv = _batch(B=16, seed=3)
    scores[:] = 1.0
    cfg = EchoConfig(boundary_token_ids=(BOUNDARY,), boundary="fixed")
    M = minibatches_per_generation(spg, ga)
    whole = split_echo_stage(responses, mask, entropy, adv, scores, N_GEN, cfg, SingleProcess(), num_minibatches=M)
    logp = -torch.rand(16, responses.shape[1], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    logp = logp.requires_grad_()
    mini_rows = 16 // M  # the first mini-batch: rows [0, mini_rows)
    ref = echo_loss_term(logp[:mini_rows], whole.echo_mask[:mini_rows], whole.echo_denom[:mini_rows])
    (g_ref,) = torch.autograd.grad(ref, logp)
    # the mini-batch as P processes x ga micro-batches
    scale = echo_term_scale(P, spg, ga)
    per = mini_rows // (P * ga)
    total = 0.0
    for p in range(P):
        for m in range(ga):
            rows = slice((p * ga + m) * per, (p * ga + m + 1) * per)
            total = total + scale * echo_loss_term(logp[rows], whole.echo_mask[rows], whole.echo_denom[rows])
    (g_split,) = torch.autograd.grad(total / P, logp)
    assert ref.item() > 0
    torch.testing.assert_close(g_split.float(), g_ref.float(), rtol=1e-6, atol=1e-9)
