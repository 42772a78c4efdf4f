"""EntropyMethodLoss (echorl/methods/entropy_loss.py) around verl's real ``ppo_loss`` on nested micro-batches
built as verl's v1 trainer stores them, against literal loops of RL-ZVP's Eq. 5 and the forking
rule's Eq. 6 with its authors' per-micro-batch normaliser.

Run: ``.venv/bin/python -m pytest -q tests/test_entropy_methods.py``.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from verl.workers.engine.utils import prepare_micro_batches
from verl.workers.utils.losses import ppo_loss

from echorl.core.forking import ForkingConfig
from echorl.core.rl_zvp import RlZvpConfig
from echorl.methods.entropy_loss import ZVP_SIGN, EntropyMethodLoss, zvp_sign_field

B = 8  # rows: 4 groups of 2


class _Cfg:
    """The fields of verl's actor config that ppo_loss and the vanilla loss read."""

    clip_ratio, clip_ratio_low, clip_ratio_high = 0.2, 0.2, 0.28
    loss_agg_mode, loss_scale_factor, entropy_coeff, use_kl_loss = "token-mean", None, 0.0, False
    policy_loss = {"loss_mode": "vanilla"}

    def __init__(self):
        self.global_batch_info = {}

    def get(self, key, default=None):
        return getattr(self, key, default)


def _nested(rows):
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def make_minibatch(seed=0):
    """Rows, their response-aligned values as lists, the v1 TensorDict and the packed model output."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(B):
        p, r = int(torch.randint(2, 5, (1,), generator=g)), int(torch.randint(3, 9, (1,), generator=g))
        lp = -torch.rand(r, generator=g, dtype=torch.float64) * 2
        rows.append(dict(
            p=p, r=r, lp=lp, old=lp + 0.3 * torch.randn(r, generator=g, dtype=torch.float64),
            ent=(torch.randint(0, 8, (r,), generator=g).double() / 4),  # a coarse grid: ties happen
            adv=float(torch.randn(1, generator=g)), prompt=torch.randint(0, 50, (p,), generator=g),
            resp=torch.randint(0, 50, (r,), generator=g)))
    scores = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0])  # groups: +, -, mixed, +
    for i in (0, 1, 2, 3, 6, 7):
        rows[i]["adv"] = 0.0  # GRPO's advantage of a zero-variance group
    uids = [i // 2 for i in range(B)]
    rmask = [torch.ones(x["r"], dtype=torch.int64) for x in rows]
    data = TensorDict({
        "prompts": _nested([x["prompt"] for x in rows]),
        "responses": _nested([x["resp"] for x in rows]),
        "input_ids": _nested([torch.cat([x["prompt"], x["resp"]]) for x in rows]),
        "response_mask": _nested(rmask), "loss_mask": _nested(rmask),
        "old_log_probs": _nested([x["old"] for x in rows]),
        "advantages": _nested([torch.full((x["r"],), x["adv"], dtype=torch.float64) for x in rows]),
        "row": torch.arange(B),
    }, batch_size=[B])
    dense_mask = torch.zeros(B, max(x["r"] for x in rows), dtype=torch.bool)
    for i, x in enumerate(rows):
        dense_mask[i, : x["r"]] = True
    data[ZVP_SIGN] = zvp_sign_field(scores, uids, dense_mask, RlZvpConfig())
    return rows, scores, data


def packed(rows, idx, key):
    """Response values of rows ``idx`` packed as the engine packs log-probs: token j of a response
    is predicted at position p - 1 + j of prompt + response."""
    out = []
    for i in idx:
        x = rows[i]
        v = torch.zeros(x["p"] + x["r"], dtype=torch.float64)
        v[x["p"] - 1: x["p"] - 1 + x["r"]] = x[key]
        out.append(v)
    offsets = torch.tensor([0] + [len(v) for v in out]).cumsum(0)
    return torch.nested.nested_tensor_from_jagged(torch.cat(out), offsets)


def run(loss_fn, data, rows, n_micro):
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=sum(x["r"] for x in rows), global_batch_size=B,
                         use_dynamic_bsz=False, micro_batch_size_per_gpu=B // n_micro)
    micro, _ = prepare_micro_batches(data, dp_group=None)
    total = 0.0
    for mb in micro:
        idx = mb["row"].tolist()
        out = {"log_probs": packed(rows, idx, "lp"), "entropy": packed(rows, idx, "ent")}
        loss, _ = loss_fn(model_output=out, data=mb, dp_group=None)
        total += float(loss)
    return total, [mb["row"].tolist() for mb in micro]


def pg(x, t, a, eps_low=0.2, eps_high=0.28):
    r = math.exp(float(x["lp"][t]) - float(x["old"][t]))
    return -min(r * a, min(max(r, 1 - eps_low), 1 + eps_high) * a)


@pytest.mark.parametrize("n_micro", [1, 2, 4])
def test_forking_is_the_authors_per_micro_batch_token_mean(n_micro):
    rows, _, data = make_minibatch(1)
    cfg = _Cfg()
    loss_fn = EntropyMethodLoss(partial(ppo_loss, cfg), cfg, forking=ForkingConfig(rho=0.2))
    got, parts = run(loss_fn, data, rows, n_micro)
    want = 0.0
    for idx in parts:  # each micro-batch: top k of its tokens, ties to the earlier position
        toks = sorted(((i, t) for i in idx for t in range(rows[i]["r"])),
                      key=lambda p: (-float(rows[p[0]]["ent"][p[1]]), idx.index(p[0]), p[1]))
        k = max(1, int(len(toks) * 0.2 + 0.9999))
        kept = toks[:k]
        want += sum(pg(rows[i], t, rows[i]["adv"]) for i, t in kept) / k * len(idx) / B
    assert got == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("n_micro", [1, 2])
def test_rl_zvp_advantages_enter_verls_loss(n_micro):
    rows, scores, data = make_minibatch(2)
    assert data[ZVP_SIGN].tolist() == [1, 1, -1, -1, 0, 0, 1, 1]
    cfg = _Cfg()
    loss_fn = EntropyMethodLoss(partial(ppo_loss, cfg), cfg, rl_zvp=RlZvpConfig(alpha=0.1))
    got, _ = run(loss_fn, data, rows, n_micro)
    n_tok = sum(x["r"] for x in rows)
    want = 0.0
    for i, x in enumerate(rows):
        h_max = max(float(h) for h in x["ent"])
        for t in range(x["r"]):
            h = float(x["ent"][t])
            a = {1: 0.1 * h, -1: -0.1 * (h_max - h), 0: x["adv"]}[int(data[ZVP_SIGN][i])]
            want += pg(x, t, a) / n_tok
    assert got == pytest.approx(want, abs=1e-12)
    # the wrapped loss alone sees only GRPO's zeros on the zero-variance rows
    plain, _ = run(partial(ppo_loss, cfg), make_minibatch(2)[2], rows, n_micro)
    assert plain != pytest.approx(want, abs=1e-6)


def test_input_is_not_changed_and_errors_name_the_fix():
    rows, _, data = make_minibatch(3)
    cfg = _Cfg()
    loss_fn = EntropyMethodLoss(partial(ppo_loss, cfg), cfg, rl_zvp=RlZvpConfig(), forking=ForkingConfig())
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=sum(x["r"] for x in rows), global_batch_size=B)
    before = (data["advantages"].values().clone(), data["response_mask"].values().clone())
    out = {"log_probs": packed(rows, range(B), "lp"), "entropy": packed(rows, range(B), "ent")}
    loss_fn(model_output=out, data=data, dp_group=None)
    assert torch.equal(data["advantages"].values(), before[0]) and torch.equal(data["response_mask"].values(), before[1])
    assert tu.get_non_tensor_data(data=data, key="batch_num_tokens", default=None) == sum(x["r"] for x in rows)
    with pytest.raises(KeyError, match="returned no 'entropy'"):
        loss_fn(model_output={"log_probs": out["log_probs"]}, data=data, dp_group=None)
    bare = data.exclude(ZVP_SIGN)
    with pytest.raises(KeyError, match="lacks 'zvp_sign'"):
        loss_fn(model_output=out, data=bare, dp_group=None)
    bad = _Cfg()
    bad.loss_agg_mode = "seq-mean-token-mean"
    with pytest.raises(ValueError, match="loss_agg_mode='seq-mean-token-mean': set it to token-mean"):
        EntropyMethodLoss(partial(ppo_loss, bad), bad, forking=ForkingConfig())
    with pytest.raises(ValueError, match="set echorl.enable=false"):
        EntropyMethodLoss(partial(ppo_loss, cfg), cfg, forking=ForkingConfig(), echo_adds_term=True)
    with pytest.raises(ValueError, match="needs rl_zvp or forking"):
        EntropyMethodLoss(partial(ppo_loss, cfg), cfg)


def test_picklable_with_the_same_result():
    """verl's driver sends the loss callable to every actor worker (set_loss_fn): it must pickle."""
    import pickle

    from echorl import EchoConfig
    from echorl.loss import EchoLoss

    rows, _, data = make_minibatch(4)
    cfg = _Cfg()
    loss_fn = EntropyMethodLoss(EchoLoss(cfg, EchoConfig(enable=False)), cfg, rl_zvp=RlZvpConfig(alpha=0.2),
                                forking=ForkingConfig(rho=0.5))
    twin = pickle.loads(pickle.dumps(loss_fn))
    assert run(twin, data, rows, 2) == run(loss_fn, data, rows, 2)
