"""Groups split across processes: a real 2-process EchoGRPOTrainer step (torchrun, gloo, CPU) selects
what one process selects on the same batch, and logs the same L_echo.

tests/trl/two_process_run.py runs one step in each of two processes (6 of 12 rollouts each; the
second prompt's 4 rollouts straddle them). Here the two ranks' inputs are put back together in rank
order and the one-process stage (:class:`echorl.trl.stage.SingleProcess`) runs on the whole batch.
Cost: one torchrun of two processes: 19 s at load average 1.6 on 2 cores, 89 s at load average 17
(mostly imports).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trl_support import N_GEN, plain_logprobs_entropy

from echorl.core.config import EchoConfig
from echorl.stage import run_echo_stage
from echorl.trl.stage import SingleProcess, split_echo_stage
from echorl.trl.testbed import load_chain_model

HERE = Path(__file__).parent


def _cat(parts, side: str, pad=0):
    """Concatenate ``[b, w_r]`` parts along rows, padding each to the widest on ``side``."""
    w = max(p.shape[1] for p in parts)
    pads = [(w - p.shape[1], 0) if side == "left" else (0, w - p.shape[1]) for p in parts]
    return torch.cat([torch.nn.functional.pad(p, pd, value=pad) for p, pd in zip(parts, pads)])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_process")
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(HERE)}
    res = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(HERE / "two_process_run.py"), str(out)],
                         env=env, capture_output=True, text=True, timeout=540)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_two_processes_select_what_one_process_selects(ranks):
    assert [r["world"] for r in ranks] == [2, 2] and ranks[0]["backend"] == "gloo"
    recs = [r["record"] for r in ranks]
    assert [rec["entropy_source"] for rec in recs] == ["generation"] * 2  # on-policy: recorded during generate
    b = recs[0]["completion_ids"].shape[0]
    assert [rec["rows"] for rec in recs] == [slice(0, b), slice(b, 2 * b)] and b % N_GEN  # a group straddles
    cfg = EchoConfig(boundary="fixed", boundary_token_ids=ranks[0]["boundary_token_ids"], coef=0.5)
    scores = recs[0]["scores"]
    assert torch.equal(scores, recs[1]["scores"])  # TRL gathers the rewards: every rank has all of them
    whole = split_echo_stage(_cat([r["completion_ids"] for r in recs], "right"),
                             _cat([r["loss_mask"] for r in recs], "right"), _cat([r["entropy"] for r in recs], "right"),
                             torch.cat([r["advantages"] for r in recs]), scores, N_GEN, cfg, SingleProcess())
    clips = whole.stage.metrics["echo/clips"]
    assert clips == 2 * b // N_GEN  # all succeed: one clip per group
    for p, rec in enumerate(recs):
        rows, width = slice(p * b, (p + 1) * b), rec["completion_ids"].shape[1]
        assert torch.equal(rec["echo_mask"], whole.echo_mask[rows, :width])
        assert not whole.echo_mask[rows, width:].any()
        assert torch.equal(rec["echo_denom"], whole.echo_denom[rows])
        assert rec["metrics"] == whole.stage.metrics
    # the straddling group (global rows 4-7: two on each rank) has one clip in all, not one per rank
    clipped = torch.cat([rec["echo_mask"].any(1) for rec in recs])
    assert int(clipped[N_GEN:2 * N_GEN].sum()) == 1
    # what each rank alone would choose differs: two clips for the straddling group
    alone = [run_echo_stage(rec["completion_ids"], rec["loss_mask"], rec["entropy"], scores[rec["rows"]],
                            torch.arange(2 * b)[rec["rows"]] // N_GEN, cfg).echo_mask.any(1) for rec in recs]
    assert int(torch.cat(alone)[N_GEN:2 * N_GEN].sum()) == 2


def test_two_processes_log_the_one_process_echo_loss(ranks):
    """The logged L_echo (reduced over ranks) is the mean clip NLL of the whole batch under the
    step's starting weights: the per-row weights do not depend on the split."""
    recs = [r["record"] for r in ranks]
    model0, _ = load_chain_model()
    model0.eval()
    nll, n = 0.0, 0
    for rec in recs:
        logp, _ = plain_logprobs_entropy(model0, rec["prompt_ids"], rec["prompt_mask"], rec["completion_ids"],
                                         rec["loss_mask"])
        m = rec["echo_mask"]
        has = m.any(1)
        nll += float((-(logp * m).sum(1)[has] / m.sum(1)[has]).sum())
        n += int(has.sum())
    assert ranks[0]["echo_loss"] == ranks[1]["echo_loss"]
    assert ranks[0]["echo_loss"] == pytest.approx(nll / n, rel=2e-5)
