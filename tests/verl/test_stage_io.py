"""echorl/verl/stage_io.py on a real TransferQueue: the EchoRL stage reuses the fields verl's
advantage stage read and wrote for the same keys, and fetches only the rest."""

from __future__ import annotations

import torch
import transfer_queue as tq
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu

from echorl.verl.stage_io import recording, stage_inputs

FIELDS = ("uid", "responses", "response_mask", "entropy", "rm_scores", "advantages")


def verl_like_advantage_stage(keys):
    """Reaches TransferQueue through its module global ``tq``, as verl's ``_compute_advantage`` does:
    reads uid/response_mask/rm_scores, writes advantages (= rm_scores + 1 here)."""
    data = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["uid", "response_mask", "rm_scores"])
    adv = torch.nested.as_nested_tensor([r + 1.0 for r in data["rm_scores"].unbind()], layout=torch.jagged)
    tq.kv_batch_put(keys=keys, partition_id="train", fields=TensorDict({"advantages": adv}, batch_size=len(keys)))


class FetchLog:
    """The real TransferQueue, noting the fields of each ``kv_batch_get``."""

    def __init__(self, real):
        self.real, self.fetched = real, []

    def kv_batch_get(self, **kwargs):
        self.fetched.append(sorted(kwargs["select_fields"]))
        return self.real.kv_batch_get(**kwargs)


def _nested(rows):
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def _padded(x):
    return torch.nested.to_padded_tensor(x, 0) if x.is_nested else x


def test_stage_inputs_reuse_what_verl_read_and_wrote(transfer_queue):
    g = torch.Generator().manual_seed(0)
    lens = [3, 5, 2, 4]
    B = len(lens)
    keys = [f"u{i // 2}_{i}_0" for i in range(B)]
    stored = tu.get_tensordict({
        "responses": _nested([torch.randint(0, 50, (n,), generator=g) for n in lens]),
        "response_mask": _nested([torch.ones(n, dtype=torch.int64) for n in lens]),
        "entropy": _nested([torch.rand(n, generator=g) for n in lens]),
        "rm_scores": _nested([torch.rand(n, generator=g) for n in lens]),
        "uid": [k.split("_")[0] for k in keys],
    })
    try:
        tq.kv_batch_put(keys=keys, partition_id="train", fields=stored)
        with recording(verl_like_advantage_stage) as rec:
            assert verl_like_advantage_stage.__globals__["tq"] is rec
            verl_like_advantage_stage(keys)
        assert verl_like_advantage_stage.__globals__["tq"] is tq  # put back
        spy = FetchLog(tq)
        got = stage_inputs(rec, spy, keys, "train", FIELDS)
        assert spy.fetched == [["entropy", "responses"]]  # one fetch, of the fields verl's stage did not touch
        full = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=list(FIELDS))
        assert sorted(got.keys()) == sorted(FIELDS)
        for f in FIELDS:
            if f == "uid":
                assert list(got[f]) == list(full[f]) == ["u0", "u0", "u1", "u1"]
            else:
                assert torch.equal(_padded(got[f]), _padded(full[f])), f
        torch.testing.assert_close(_padded(got["advantages"]) - 1.0,
                                   torch.where(_padded(got["response_mask"]).bool(), _padded(got["rm_scores"]), -1.0))
        # other keys (another batch) are not reused; no recorder: every field is fetched
        spy = FetchLog(tq)
        stage_inputs(rec, spy, keys[::-1], "train", FIELDS)
        assert spy.fetched == [sorted(FIELDS)]
        spy = FetchLog(tq)
        stage_inputs(None, spy, keys, "train", FIELDS)
        assert spy.fetched == [sorted(FIELDS)]
    finally:
        tq.kv_clear(keys=keys, partition_id="train")


def test_a_function_without_a_tq_global_is_left_alone():
    import json

    with recording(json.dumps) as rec:
        assert rec is None and "tq" not in json.dumps.__globals__
