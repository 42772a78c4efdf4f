"""echorl_trainer.yaml composes verl's full config; the startup refusals fire with their messages."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from omegaconf import OmegaConf, open_dict
from verl.utils.config import omega_conf_to_dataclass
from verl_cfg_helpers import with_keys

from echorl import EchoConfig
from echorl.verl.config_checks import validate_config


def test_echorl_node_is_exactly_echoconfig_with_defaults(echorl_cfg):
    node = OmegaConf.to_container(echorl_cfg.echorl, resolve=True)
    defaults = EchoConfig().to_dict()
    assert list(node) == [f.name for f in dataclasses.fields(EchoConfig)]
    # the keys a preset fills ship as null, so `echorl.preset=degenerate` switches them all
    assert node == {**defaults, "scope": None, "per": None, "selector": None, "loss_agg": None}
    assert EchoConfig.from_dict(node) == EchoConfig()


def test_composes_verl_and_instantiates_its_dataclasses(echorl_cfg, actor_config):
    from verl.trainer.config import AlgoConfig
    from verl.workers.config import FSDPActorConfig, RolloutConfig

    assert isinstance(actor_config, FSDPActorConfig)
    assert isinstance(omega_conf_to_dataclass(echorl_cfg.algorithm), AlgoConfig)
    assert isinstance(omega_conf_to_dataclass(echorl_cfg.actor_rollout_ref.rollout), RolloutConfig)
    assert echorl_cfg.actor_rollout_ref.rollout.name == "vllm"
    assert echorl_cfg.trainer.use_v1 is True and echorl_cfg.trainer.v1.trainer_mode == "sync"
    assert echorl_cfg.algorithm.adv_estimator == "grpo"
    # verl's own keys are all there (the full ppo_trainer config, not a subset)
    for key in ("data.train_batch_size", "critic.strategy", "reward", "transfer_queue", "algorithm.filter_groups"):
        assert OmegaConf.select(echorl_cfg, key) is not None, key
    assert validate_config(echorl_cfg) == EchoConfig()


def test_megatron_engine_composes(compose):
    from verl.workers.config import McoreActorConfig

    cfg = compose(["model_engine=megatron", "echorl.coef=0.01"])
    assert cfg.actor_rollout_ref.actor.strategy == "megatron"
    assert isinstance(omega_conf_to_dataclass(cfg.actor_rollout_ref.actor), McoreActorConfig)
    assert validate_config(cfg).coef == 0.01


def test_verl_validation_passes(echorl_cfg):
    from echorl.main import prepare

    assert prepare(copy.deepcopy(echorl_cfg)) == EchoConfig()


REFUSALS = [
    ({"algorithm.rollout_correction.bypass_mode": True}, r"algorithm\.rollout_correction\.bypass_mode=true.*entropy.*bypass_mode=false"),
    ({"algorithm.filter_groups.enable": True, "echorl.scope": "degenerate"},
     r"algorithm\.filter_groups\.enable=true with echorl\.scope=degenerate would select nothing.*echorl\.scope=success"),
    ({"algorithm.filter_groups.enable": True, "echorl.preset": "degenerate"}, r"echorl\.scope=degenerate would select"),
    ({"echorl.keep_filtered": True}, r"echorl\.keep_filtered=true keeps the groups.*filter_groups\.enable=false"),
    ({"algorithm.filter_groups.enable": True, "echorl.keep_filtered": True, "actor_rollout_ref.actor.shuffle": True},
     r"keep_filtered=true places the kept rows.*actor\.shuffle=false"),
    ({"algorithm.filter_groups.enable": True, "echorl.keep_filtered": True,
      "trainer.v1.sampler.custom_sampler.path": "my.py"}, r"custom_sampler\.path='my\.py'.*drop the custom sampler"),
    ({"algorithm.filter_groups.enable": True, "echorl.keep_filtered": True, "algorithm.adv_estimator": "gae"},
     r"keep_filtered=true with algorithm\.adv_estimator=gae.*critic"),
    ({"algorithm.filter_groups.enable": True, "echorl.keep_filtered": True, "echorl.mode": "advantage"},
     r"keep_filtered=true with echorl\.mode='advantage'.*echorl\.mode=loss"),
    ({"algorithm.filter_groups.enable": True, "echorl.keep_filtered": True, "method.name": "uft"},
     r"keep_filtered=true is not supported with method\.name='uft' \(UFT lays out its own hinted rows\)\. Fix: "
     r"echorl\.keep_filtered=false"),
    ({"echorl.preset": "abstract"}, r"echorl\.preset must be one of \['paper', 'degenerate', 'positive_nll'\], got 'abstract'"),
    ({"trainer.v1.trainer_mode": "colocate_async"}, r"trainer\.v1\.trainer_mode='colocate_async'.*trainer_mode=sync"),
    ({"trainer.v1.trainer_mode": "separate_async"}, r"trainer_mode='separate_async'"),
    ({"trainer.use_v1": False}, r"trainer\.use_v1=false.*entropy.*trainer\.use_v1=true"),
    ({"distillation.enabled": True}, r"distillation\.enabled=true.*echorl\.mode=advantage"),
    ({"echorl.colour": 1}, r"unknown key\(s\) \['echorl\.colour'\]; valid keys"),
    ({"echorl.selector": "best"}, r"echorl\.selector must be one of"),
    ({"echorl.coef": -1.0}, r"echorl\.coef must be >= 0"),
]


@pytest.mark.parametrize("updates,message", REFUSALS, ids=[next(iter(u)) + "=" + str(next(iter(u.values()))) for u, _ in REFUSALS])
def test_refusals_name_the_key_and_the_fix(echorl_cfg, updates, message):
    with pytest.raises(ValueError, match=message):
        validate_config(with_keys(echorl_cfg, **updates))


def test_missing_echorl_node_is_refused(echorl_cfg):
    c = copy.deepcopy(echorl_cfg)
    with open_dict(c):
        del c["echorl"]
    with pytest.raises(ValueError, match=r"no `echorl:` node.*echorl_trainer"):
        validate_config(c)


def test_baselines_that_only_conflict_with_echorl_on_are_allowed(echorl_cfg):
    # DAPO dynamic sampling as the EchoRL-off baseline (any scope), distillation with the advantage variant
    assert validate_config(with_keys(echorl_cfg, **{"algorithm.filter_groups.enable": True, "echorl.enable": False,
                                                "echorl.scope": "degenerate"})).enable is False
    # DAPO + EchoRL with the paper's scope=success: clips from the mixed groups that survive
    assert validate_config(with_keys(echorl_cfg, **{"algorithm.filter_groups.enable": True})).scope == "success"
    # ... and with the dropped all-success groups kept for the EchoRL term, any scope
    for scope in ("success", "degenerate"):
        kept = with_keys(echorl_cfg, **{"algorithm.filter_groups.enable": True, "echorl.keep_filtered": True,
                                        "echorl.scope": scope})
        assert validate_config(kept).keep_filtered is True
    assert validate_config(with_keys(echorl_cfg, **{"distillation.enabled": True, "echorl.mode": "advantage"})).mode == "advantage"


def test_docs_table_lists_every_echorl_key_with_its_default():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "verl.md").read_text()
    for name, typ, default, help_text in EchoConfig.help_table():
        shown = list(default) if isinstance(default, tuple) else default
        typ = typ.replace("|", "\\|")  # escaped in a Markdown cell
        assert f"| `echorl.{name}` | `{typ}` | `{shown}` | {help_text} |" in doc, name
