"""EchoGRPOConfig: TRL's GRPOConfig plus one echorl_<field> per EchoConfig field, generated from it."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import HfArgumentParser
from trl import GRPOConfig

from echorl.core.config import EchoConfig
from echorl.trl import EchoGRPOConfig


def _fields():
    return {f.name: f for f in dataclasses.fields(EchoGRPOConfig)}


def test_one_field_per_echo_config_field_with_its_help_and_default():
    ours = _fields()
    echo = dataclasses.fields(EchoConfig)
    assert [n for n in ours if n.startswith("echorl_")] == [f"echorl_{f.name}" for f in echo]  # in EchoConfig's order
    assert len(echo) >= 16
    for f in echo:
        g = ours[f"echorl_{f.name}"]
        assert g.metadata["help"] == f.metadata["help"]
        default = g.default_factory() if g.default is dataclasses.MISSING else g.default
        assert default == (list(f.default) if isinstance(f.default, tuple) else f.default)
    # and every GRPOConfig field is still there
    assert {f.name for f in dataclasses.fields(GRPOConfig)} <= set(ours)
    assert issubclass(EchoGRPOConfig, GRPOConfig)


def test_defaults_give_echo_configs_defaults(tmp_path):
    assert EchoGRPOConfig(output_dir=str(tmp_path), use_cpu=True).echo_config() == EchoConfig()


def test_command_line(tmp_path):
    (args,) = HfArgumentParser(EchoGRPOConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--use_cpu", "true", "--echorl_coef", "0.01", "--echorl_scope", "degenerate", "--echorl_boundary",
         "fixed", "--echorl_boundary_token_ids", "3", "7", "--echorl_enable", "false", "--num_generations", "4"])
    cfg = args.echo_config()
    assert (cfg.coef, cfg.scope, cfg.boundary, cfg.boundary_token_ids, cfg.enable) == (0.01, "degenerate", "fixed",
                                                                                       (3, 7), False)
    assert cfg.per == "group" and cfg.loss_agg == "clip_mean"  # the preset fills what was not given
    assert args.num_generations == 4


def test_help_shows_echo_configs_text():
    text = HfArgumentParser(EchoGRPOConfig).format_help()
    assert "--echorl_coef" in text and "Weight of the EchoRL NLL term" in text


@pytest.mark.parametrize("kw,match", [
    (dict(echorl_coef=-1.0), r"echorl_coef must be >= 0"),
    (dict(echorl_selector="middle"), r"echorl_selector must be one of \[.*'peak'.*\], got 'middle'"),
    (dict(echorl_boundary="fixed", echorl_boundary_token_ids=[]), r"echorl_boundary_token_ids is empty"),
])
def test_bad_values_fail_at_construction_naming_the_field(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        EchoGRPOConfig(output_dir=str(tmp_path), use_cpu=True, **kw)
