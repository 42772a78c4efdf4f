"""method.name=rl_zvp / forking on the verl host: the start-up checks on the composed config, the
trainer's loss install (``_setup`` -> ``set_loss_fn``), the advantage stage's ``zvp_sign`` on a real
TransferQueue, and one micro-batch through the verl host's installed loss and the engine's loss."""

from __future__ import annotations

import copy
import os
import pickle
import sys

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from test_trainer_stage import G, make_batch

from echorl import EchoConfig
from echorl.loss import EchoLoss
from echorl.methods.entropy_loss import EntropyMethodLoss
from echorl.verl.config_checks import validate_config

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for sub in ("", "local"):  # the shared micro-batch of tests/test_entropy_methods.py, the engine's tiny model
    if os.path.join(TESTS, sub) not in sys.path:
        sys.path.insert(0, os.path.join(TESTS, sub))


def _cfg(echorl_cfg, method: str, **actor):
    cfg = copy.deepcopy(echorl_cfg)
    with open_dict(cfg):
        cfg.method = {"name": method}
        for k, v in {"calculate_entropy": True, **actor}.items():
            cfg.actor_rollout_ref.actor[k] = v
    return cfg


@pytest.mark.parametrize("method", ["rl_zvp", "forking"])
def test_startup_checks(echorl_cfg, method):
    cfg = _cfg(echorl_cfg, method)
    with open_dict(cfg):
        cfg.echorl.enable = False
    assert validate_config(cfg) == EchoConfig(enable=False)
    with open_dict(cfg):
        cfg.actor_rollout_ref.actor.calculate_entropy = False
    with pytest.raises(ValueError, match="calculate_entropy=true"):
        validate_config(cfg)
    with open_dict(cfg):
        cfg.actor_rollout_ref.actor.calculate_entropy = True
        cfg.echorl.enable = True
    if method == "forking":
        with pytest.raises(ValueError, match="set echorl.enable=false"):
            validate_config(cfg)
        with open_dict(cfg):
            cfg.echorl.enable = False
            cfg.actor_rollout_ref.actor.loss_agg_mode = "seq-mean-token-mean"
        with pytest.raises(ValueError, match="set it to token-mean"):
            validate_config(cfg)
    else:
        assert validate_config(cfg).adds_loss_term  # RL-ZVP + the EchoRL term compose
        with open_dict(cfg):
            cfg.algorithm.filter_groups = {"enable": True, "metric": "acc"}
        with pytest.raises(ValueError, match="filter_groups.enable=false"):
            validate_config(cfg)


class _Workers:
    """What the driver calls on the actor worker group: set_loss_fn (dispatched to every worker)."""

    def __init__(self):
        self.sent = []

    def set_loss_fn(self, loss):
        self.sent.append(pickle.loads(pickle.dumps(loss)))  # what a worker receives


def _setup(monkeypatch, cfg, echo: EchoConfig):
    """EchoPPOTrainerSync._setup with verl's own setup (workers, servers) left out."""
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    from echorl.verl import trainer as trainer_mod
    from echorl.verl.methods import VerlMethod
    from echorl.verl.methods import configure as configure_method

    monkeypatch.setattr(PPOTrainerSync, "_setup", lambda self: None)
    monkeypatch.setattr(trainer_mod, "check_boundary_ids", lambda *a, **k: None)
    trainer = trainer_mod.EchoPPOTrainerSync.__new__(trainer_mod.EchoPPOTrainerSync)
    trainer.config, trainer.echo_cfg, trainer._echo_boundary_resolved = cfg, echo, True
    trainer.method = VerlMethod(configure_method(cfg))
    trainer.tokenizer, trainer.actor_rollout_wg = None, _Workers()
    trainer._setup()
    return trainer


@pytest.mark.parametrize("method, echo_on", [("rl_zvp", True), ("rl_zvp", False), ("forking", False)])
def test_setup_installs_the_wrapped_loss_on_the_workers(monkeypatch, echorl_cfg, method, echo_on):
    cfg = _cfg(echorl_cfg, method)
    echo = EchoConfig(boundary="fixed", enable=echo_on)
    trainer = _setup(monkeypatch, cfg, echo)
    assert not trainer.method.active  # no LUFFY / UFT agent loop or rows
    assert OmegaConf.select(cfg, "actor_rollout_ref.rollout.agent.default_agent_loop") in (None, "single_turn_agent")
    [sent] = trainer.actor_rollout_wg.sent
    assert isinstance(sent, EntropyMethodLoss) and isinstance(sent.inner, EchoLoss)
    assert (sent.rl_zvp is not None, sent.forking is not None) == (method == "rl_zvp", method == "forking")
    assert sent.inner.adds_term is echo_on


def test_setup_without_a_method_or_term_keeps_verls_loss(monkeypatch, echorl_cfg):
    trainer = _setup(monkeypatch, copy.deepcopy(echorl_cfg), EchoConfig(boundary="fixed", enable=False))
    assert trainer.actor_rollout_wg.sent == [] and trainer.echo_loss is None


def test_stage_writes_zvp_sign_through_real_transferqueue(ray_session, echorl_cfg):
    """EchoPPOTrainerSync._compute_advantage with method.name=rl_zvp on a real TransferQueue: the stored
    ``zvp_sign`` is +1 / 0 / -1 / +1 for groups A (all success), B (mixed), C (all fail), D (all success)
    and 0 on verl's padding rows (two of them share a uid and a score: without the padding tags they
    would form a zero-variance group), and EchoRL's fields are still written."""
    import transfer_queue as tq

    from echorl.verl.methods import VerlMethod
    from echorl.verl.methods import configure as configure_method
    from echorl.verl.trainer import EchoPPOTrainerSync

    cfg = _cfg(echorl_cfg, "rl_zvp")
    with open_dict(cfg):
        cfg.actor_rollout_ref.rollout.n = G
        cfg.actor_rollout_ref.actor.ppo_mini_batch_size = 2
        cfg.transfer_queue.backend.SimpleStorage.num_data_storage_units = 1
    data, is_padding, padded, uids = make_batch(seed=7)
    assert sum(is_padding) == 2
    keys = [f"{u}_{i}_0" for i, u in enumerate(uids)]
    tq.init(cfg.transfer_queue)
    try:
        stored = data.exclude("advantages")
        stored["old_log_probs"] = torch.nested.as_nested_tensor(
            [torch.zeros(n) for n in data["responses"].offsets().diff().tolist()], layout=torch.jagged)
        batch = tq.kv_batch_put(keys=keys, partition_id="train", fields=stored,
                                tags=[{"is_padding": p} for p in is_padding])
        trainer = EchoPPOTrainerSync.__new__(EchoPPOTrainerSync)
        trainer.config, trainer.echo_cfg, trainer._echo_boundary_resolved, trainer.global_steps = \
            cfg, EchoConfig(boundary="fixed"), True, 1
        trainer.method = VerlMethod(configure_method(cfg))
        metrics: dict = {}
        out_meta = trainer._compute_advantage(batch, metrics)
        assert {"zvp_sign", "echo_mask", "echo_denom", "advantages"} <= set(out_meta.fields)
        got = tq.kv_batch_get(keys=out_meta.keys, partition_id="train", select_fields=["zvp_sign", "advantages"])
        assert got["zvp_sign"].tolist() == [1] * G + [0] * G + [-1] * G + [1] * G + [0, 0]
        # verl's GRPO advantages are left as they are: RL-ZVP shapes them in the loss
        torch.testing.assert_close(torch.nested.to_padded_tensor(got["advantages"], 0.0), padded["advantages"])
        assert metrics["echo/clips"] > 0
    finally:
        tq.close()


@pytest.mark.parametrize("method", ["rl_zvp", "forking"])
def test_one_micro_batch_gives_the_same_loss_on_both_hosts(monkeypatch, tmp_path, echorl_cfg, method):
    """The loss the verl driver sends to its workers and the loss the engine trains with, on one
    micro-batch laid out as verl stores it: the same loss and metrics."""
    from engine_support import base_overrides, make_model
    from test_entropy_methods import make_minibatch, run

    from echorl.local import load_config
    from echorl.local.trainer import LocalTrainer

    cfg = _cfg(echorl_cfg, method)
    trainer = _setup(monkeypatch, cfg, EchoConfig(boundary="fixed", enable=False))
    [verl_loss] = trainer.actor_rollout_wg.sent
    model, tok = make_model()
    local = LocalTrainer(load_config(base_overrides(tmp_path, steps=1, **{"method.name": method,
                                                                            "echorl.enable": False})),
                         model=model, tokenizer=tok)
    local.pool.close()
    assert isinstance(local.loss_fn, EntropyMethodLoss)
    rows, _, data = make_minibatch(2)  # kept tokens with non-zero advantages in every split
    for n_micro in (1, 2):
        got_verl, _ = run(verl_loss, data.clone(), rows, n_micro)
        got_local, _ = run(local.loss_fn, data.clone(), rows, n_micro)
        assert got_verl == got_local and got_verl != 0.0
