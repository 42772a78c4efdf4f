"""The CUDA paths of the verl loss and stage: nested (jagged) bool and float masks on the GPU,
``to_padded_tensor`` there, and results equal to the CPU's. Runs wherever CUDA is available."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu

from echorl import EchoConfig
from echorl.loss import EchoLoss, padded_response_field
from echorl.verl.fields import echo_stage_fields

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda.is_available() is False: no CUDA device")

B = 6


def _nested(rows, device):
    return torch.nested.as_nested_tensor([r.to(device) for r in rows], layout=torch.jagged)


def minibatch(device: str, float_mask: bool, seed: int = 0):
    """A micro-batch in verl's layout (nested [b, j] fields) and the packed log-probs [b, P + R]."""
    g = torch.Generator().manual_seed(seed)
    p_lens = torch.randint(2, 5, (B,), generator=g).tolist()
    r_lens = torch.randint(3, 9, (B,), generator=g).tolist()
    prompts = [torch.randint(0, 50, (p,), generator=g) for p in p_lens]
    responses = [torch.randint(0, 50, (r,), generator=g) for r in r_lens]
    thetas = [torch.randn(p + r, generator=g) for p, r in zip(p_lens, r_lens)]
    rmask = [torch.ones(r, dtype=torch.int64) for r in r_lens]
    old = [torch.nn.functional.logsigmoid(t[p - 1 : p - 1 + r]) for t, p, r in zip(thetas, p_lens, r_lens)]
    echo = []
    for i, r in enumerate(r_lens):
        e = torch.zeros(r, dtype=torch.bool)
        if i % 2 == 0:
            e[: 1 + i % r] = True
        echo.append(e.float() if float_mask else e)
    n_clip = float(sum(int(e.sum()) for e in echo))
    data = TensorDict({
        "prompts": _nested(prompts, device), "responses": _nested(responses, device),
        "input_ids": _nested([torch.cat([p, r]) for p, r in zip(prompts, responses)], device),
        "response_mask": _nested(rmask, device), "loss_mask": _nested(rmask, device),
        "old_log_probs": _nested(old, device),
        "advantages": _nested([torch.full((r,), 0.5) for r in r_lens], device),
        "echo_mask": _nested(echo, device),
        "echo_denom": torch.full((B,), n_clip, device=device),
    }, batch_size=[B], device=device)
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=sum(r_lens), global_batch_size=B)
    log_probs = torch.nested.nested_tensor_from_jagged(
        torch.cat([torch.nn.functional.logsigmoid(t) for t in thetas]).to(device),
        torch.tensor([0] + [p + r for p, r in zip(p_lens, r_lens)]).cumsum(0).to(device))
    return data, log_probs, echo


@pytest.mark.parametrize("float_mask", [False, True], ids=["bool_mask", "float_mask"])
def test_echo_mask_pads_on_cuda_like_on_cpu(float_mask):
    cpu, _, echo = minibatch("cpu", float_mask)
    gpu, _, _ = minibatch("cuda", float_mask)
    width = max(len(e) for e in echo)
    got = padded_response_field(gpu, "echo_mask", width + 2)  # to_padded_tensor on CUDA, then padded to width
    assert got.device.type == "cuda" and got.dtype == torch.bool
    assert torch.equal(got.cpu(), padded_response_field(cpu, "echo_mask", width + 2))
    assert int(got.sum()) == sum(int(e.sum()) for e in echo)


@pytest.mark.parametrize("float_mask", [False, True], ids=["bool_mask", "float_mask"])
def test_echo_loss_on_cuda_equals_cpu(actor_config, float_mask):
    fn = EchoLoss(actor_config, EchoConfig(coef=0.5, mode="loss", loss_agg="clip_token_mean"))
    out = {}
    for device in ("cpu", "cuda"):
        data, log_probs, _ = minibatch(device, float_mask)
        loss, metrics = fn(model_output={"log_probs": log_probs}, data=data)
        out[device] = (loss.detach().cpu(), float(metrics["echo/loss"].aggregate()))
    torch.testing.assert_close(out["cuda"][0], out["cpu"][0], rtol=1e-5, atol=1e-6)
    assert out["cuda"][1] == pytest.approx(out["cpu"][1], rel=1e-5) and out["cpu"][1] > 0


def test_stage_fields_on_cuda_equal_cpu():
    g = torch.Generator().manual_seed(3)
    lens = [5, 7, 6, 4, 8, 5, 6, 7]
    rows = {"responses": [], "response_mask": [], "entropy": [], "rm_scores": []}
    for i, r in enumerate(lens):
        resp = torch.randint(1000, 1100, (r,), generator=g)
        resp[r // 2] = 198  # one step boundary mid-response
        rm = torch.zeros(r)
        rm[-1] = 1.0 if i < 4 else float(i % 2)  # group 0 all-success, group 1 mixed
        rows["responses"].append(resp)
        rows["response_mask"].append(torch.ones(r, dtype=torch.int64))
        rows["entropy"].append(torch.rand(r, generator=g) * 2)
        rows["rm_scores"].append(rm)
    cfg = EchoConfig(boundary_token_ids=(198,), scope="degenerate", per="rollout", loss_agg="clip_token_mean")
    masks = {}
    for device in ("cpu", "cuda"):
        data = tu.get_tensordict({**{k: _nested(v, device) for k, v in rows.items()}, "uid": ["a"] * 4 + ["b"] * 4})
        fields, out = echo_stage_fields(data, [False] * len(lens), cfg)
        assert fields["echo_mask"].is_nested
        masks[device] = torch.nested.to_padded_tensor(fields["echo_mask"].to(torch.uint8), 0).cpu().bool()
    assert torch.equal(masks["cuda"], masks["cpu"]) and masks["cpu"][:4].any() and not masks["cpu"][4:].any()
