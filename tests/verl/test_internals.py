"""echorl/verl/internals.py: the verl internals EchoRL's trainer relies on, checked at start-up."""

from __future__ import annotations

import logging
import types

import pytest
from verl.trainer.ppo.v1 import trainer_base
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from echorl.verl import internals
from echorl.verl.internals import VerlInternalsError, check_trainer_internals
from echorl.verl.keep_filtered import KeepFilteredReplayBuffer
from echorl.verl.trainer import EchoPPOTrainerSync


def test_the_installed_verl_has_every_internal():
    found = check_trainer_internals(keep_filtered=True)
    assert set(found.values()) == {"ok"}
    assert {f"PPOTrainerSync.{m}" for m in internals.TRAINER_OVERRIDES} <= set(found)
    assert {f"ReplayBuffer.{m}" for m in internals.REPLAY_BUFFER_METHODS} <= set(found)
    assert found["verl.trainer.ppo.v1.trainer_base.tq"] == "ok"


def test_every_override_of_the_trainer_and_the_buffer_is_listed():
    """The check covers exactly the private methods EchoRL's classes override."""
    def overrides(cls, parent):
        return {n for n, v in vars(cls).items() if callable(v) and n.startswith("_") and not n.startswith("__")
                and hasattr(parent, n)}

    assert overrides(EchoPPOTrainerSync, PPOTrainerSync) == set(internals.TRAINER_OVERRIDES)
    buffer = overrides(KeepFilteredReplayBuffer, ReplayBuffer)
    assert buffer <= set(internals.REPLAY_BUFFER_METHODS)


def test_a_missing_override_target_names_the_verl_version_and_the_internal(monkeypatch):
    monkeypatch.delattr(trainer_base.PPOTrainer, "_balance_batch")
    with pytest.raises(VerlInternalsError, match=r"`PPOTrainerSync\._balance_batch`, which is missing in the installed "
                                                  r"verl 0\.9\.1 \(checked against verl 0\.9\.1\)"):
        check_trainer_internals()


def test_a_changed_signature_is_refused(monkeypatch):
    monkeypatch.setattr(trainer_base.PPOTrainer, "_compute_advantage", lambda self, batch: batch)
    with pytest.raises(VerlInternalsError, match=r"`PPOTrainerSync\._compute_advantage`, which takes \('self', 'batch'\) "
                                                  r"instead of \('self', 'batch', 'metrics'\)"):
        check_trainer_internals()


def test_the_buffer_internals_are_checked_only_with_keep_filtered(monkeypatch):
    monkeypatch.delattr(ReplayBuffer, "_clear_groups")
    check_trainer_internals(keep_filtered=False)
    with pytest.raises(VerlInternalsError, match=r"`ReplayBuffer\._clear_groups`, which is missing"):
        check_trainer_internals(keep_filtered=True)


def test_without_the_tq_global_the_stage_is_only_slower_and_says_so(monkeypatch, caplog):
    monkeypatch.delitem(trainer_base.__dict__, "tq")
    with caplog.at_level(logging.WARNING, logger="echorl.verl.internals"):
        found = check_trainer_internals()
    assert found["verl.trainer.ppo.v1.trainer_base.tq"] == "missing"
    assert "without a module global `tq`" in caplog.text and "verl 0.9.1" in caplog.text


def test_the_trainer_checks_before_verl_builds_anything(monkeypatch, echorl_cfg):
    monkeypatch.delattr(trainer_base.PPOTrainer, "_compute_old_log_prob")
    monkeypatch.setattr(PPOTrainerSync, "__init__", lambda self, config: pytest.fail("verl's __init__ ran"))
    with pytest.raises(VerlInternalsError, match=r"`PPOTrainerSync\._compute_old_log_prob`, which is missing"):
        EchoPPOTrainerSync(echorl_cfg)


def test_actor_dp_size_reads_and_fills_verls_dispatch_table():
    queried = []
    wg = types.SimpleNamespace(_dispatch_info={}, _query_dispatch_info=lambda mesh: queried.append(mesh) or [0, 1, 0, 1])
    assert internals.actor_dp_size(wg) == 2 and queried == ["actor"]
    assert internals.actor_dp_size(wg) == 2 and queried == ["actor"]  # filled once, as verl's dispatch does


def test_tq_global_replaced_restores_verls_module():
    real = trainer_base.tq
    with internals.tq_global_replaced(PPOTrainerSync._compute_advantage, lambda tq: ("wrapped", tq)) as got:
        assert got == ("wrapped", real) and trainer_base.tq is got
    assert trainer_base.tq is real
    with internals.tq_global_replaced(len, lambda tq: pytest.fail("no tq global to replace")) as got:
        assert got is None
