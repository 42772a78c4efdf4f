"""``trainer.device``: the engine's model on CPU or CUDA, the batch bookkeeping on the CPU. The
CUDA checks run wherever CUDA is available and compare against the same computation on the CPU."""

from __future__ import annotations

import copy

import pytest
import torch
from engine_support import base_overrides, make_model

from echorl.local import load_config
from echorl.local.trainer import LocalTrainer, resolve_device
from echorl.logprobs import old_policy_pass

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="torch.cuda.is_available() is False: no CUDA device")


def test_device_names_are_checked_with_the_fix_in_the_message():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"trainer.device='gpu' is not a device; use cpu, cuda or cuda:<index>"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match=r"trainer.device='meta': the engine runs on cpu or cuda"):
        resolve_device("meta")
    if CUDA:
        assert resolve_device("cuda").type == "cuda"
        with pytest.raises(ValueError, match=r"only \d+ CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(ValueError, match=r"torch.cuda.is_available\(\) is False .*set trainer.device=cpu"):
            resolve_device("cuda")


def _one_step(tmp_path, model, tok, **extra):
    """A trainer on ``model`` and its first step's metrics."""
    cfg = load_config(base_overrides(tmp_path, steps=1, **{"reward.score_fn": "local_scorers:len_mod4", **extra}))
    tr = LocalTrainer(cfg, model=model, tokenizer=tok)
    try:
        return tr, cfg, tr.step()
    finally:
        tr.pool.close()


def test_cpu_run_keeps_model_and_batch_on_the_cpu(tmp_path):
    tr, _, m = _one_step(tmp_path, *make_model(), **{"trainer.device": "cpu"})
    assert tr.device == torch.device("cpu") and m["actor/grad_norm"] > 0
    assert {v.device.type for v in tr.last_batch.values() if torch.is_tensor(v)} == {"cpu"}


def _batch(tok, B: int = 8, P: int = 5, L: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, len(tok), (B, P + L), generator=g)
    am = torch.ones(B, P + L, dtype=torch.long)
    am[::2, P + 3:] = 0  # rows of different lengths
    return ids, am, ids[:, P:]


@needs_cuda
def test_old_policy_pass_on_cuda_equals_cpu_and_returns_cpu_tensors():
    model, tok = make_model()
    ids, am, resp = _batch(tok)
    lp_cpu, ent_cpu = old_policy_pass(model, ids, am, resp, temperature=1.0, chunk_rows=4)
    lp_gpu, ent_gpu = old_policy_pass(copy.deepcopy(model).cuda(), ids, am, resp, temperature=1.0, chunk_rows=4)
    assert lp_gpu.device.type == "cpu" and ent_gpu.device.type == "cpu"
    valid = am[:, ids.shape[1] - resp.shape[1]:].bool()
    torch.testing.assert_close(lp_gpu[valid], lp_cpu[valid], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ent_gpu[valid], ent_cpu[valid], rtol=1e-4, atol=1e-5)


@needs_cuda
def test_engine_step_on_cuda(tmp_path):
    """One step with the model on CUDA: the update ran there (weights moved), the batch it
    trained on is on the CPU, and the step's losses equal a recomputation of the same update on a
    CPU copy of the starting weights."""
    from echorl.local.update import actor_update

    model, tok = make_model()
    start = copy.deepcopy(model)
    tr, cfg, m = _one_step(tmp_path, model, tok, **{"trainer.device": "cuda", "echorl.coef": 0.5})
    assert next(tr.model.parameters()).device.type == "cuda"
    assert {v.device.type for v in tr.last_batch.values() if torch.is_tensor(v)} == {"cpu"}
    assert m["actor/grad_norm"] > 0
    # the same update on the CPU, from the same weights and batch
    ref = LocalTrainer(load_config(base_overrides(tmp_path / "cpu", steps=1, **{"echorl.coef": 0.5})),
                       model=start, tokenizer=tok)
    ref.pool.close()
    n, temp = int(cfg.actor_rollout_ref.rollout.n), float(cfg.actor_rollout_ref.rollout.temperature)
    cpu = actor_update(ref.model, ref.optimizer, ref.scheduler, ref.loss_fn, tr.last_batch, ref.actor_cfg, n=n,
                       temperature=temp, generator=torch.Generator().manual_seed(int(ref.actor_cfg.data_loader_seed)))
    assert m["actor/pg_loss"] == pytest.approx(cpu["actor/pg_loss"], rel=1e-3, abs=1e-6)
    assert m["actor/grad_norm"] == pytest.approx(cpu["actor/grad_norm"], rel=1e-3)
    for (k, a), b in zip(tr.model.state_dict().items(), ref.model.state_dict().values()):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-3, atol=1e-5, msg=k)
