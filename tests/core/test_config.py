"""Tests of echorl/core/config.py: EchoConfig defaults, validation, from_dict, auto boundary ids.

Run: ``.venv/bin/python -m pytest -q tests/core/test_config.py``.
"""

from __future__ import annotations

import dataclasses

import pytest

from echorl import EchoConfig

from .test_steps import byte_level_tokenizer


def test_defaults_are_the_papers_setting():
    cfg = EchoConfig()
    assert cfg.enable is True and cfg.boundary == "auto"
    assert cfg.boundary_token_ids == ()  # filled in from the run's tokenizer by cfg.resolve_boundary(tok)
    assert EchoConfig(boundary="fixed").boundary_token_ids == (198, 271)  # the authors' literal flags
    assert (cfg.success_threshold, cfg.tol, cfg.coef) == (1.0, 1e-6, 1e-3)
    assert (cfg.preset, cfg.scope, cfg.per, cfg.step_agg, cfg.selector, cfg.mode, cfg.loss_agg) == (
        "paper", "success", "group", "mean", "peak", "loss", "clip_mean")
    assert cfg.min_step_tokens == 1 and cfg.active and cfg.keep_filtered is False


def test_presets_fill_unset_keys_and_explicit_keys_win():
    deg = EchoConfig(preset="degenerate")
    assert (deg.scope, deg.per, deg.loss_agg) == ("degenerate", "rollout", "clip_token_mean")
    assert EchoConfig.from_preset("degenerate") == deg
    assert EchoConfig.from_dict({"preset": "degenerate"}) == deg
    # null keys (as the YAML nodes ship them) take the preset's values
    assert EchoConfig.from_dict({"preset": "degenerate", "scope": None, "per": None, "loss_agg": None}) == deg
    mixed = EchoConfig.from_dict({"preset": "degenerate", "per": "group"})
    assert (mixed.scope, mixed.per, mixed.loss_agg) == ("degenerate", "group", "clip_token_mean")
    paper = EchoConfig.from_dict({"scope": "degenerate"})
    assert (paper.preset, paper.scope, paper.per, paper.loss_agg) == ("paper", "degenerate", "group", "clip_mean")
    assert EchoConfig.from_dict(deg.to_dict()) == deg
    with pytest.raises(ValueError, match=r"^echorl.preset must be one of \['paper', 'degenerate', 'positive_nll'\], got 'abstract'"):
        EchoConfig.from_dict({"preset": "abstract"})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"boundary_token_ids": "198"}, "EchoConfig.boundary_token_ids must be a sequence"),
        ({"boundary_token_ids": 198}, "EchoConfig.boundary_token_ids must be a sequence"),
        ({"boundary_token_ids": ["a"]}, "EchoConfig.boundary_token_ids must hold integers"),
        ({"boundary_token_ids": (198, -1)}, "EchoConfig.boundary_token_ids must be >= 0"),
        ({"boundary": "fixed", "boundary_token_ids": ()}, "EchoConfig.boundary_token_ids is empty with boundary='fixed'"),
        ({"boundary": "newline"}, r"EchoConfig.boundary must be one of \['auto', 'fixed'\], got 'newline'"),
        ({"scope": "all"}, r"EchoConfig.scope must be one of \['degenerate', 'success'\], got 'all'"),
        ({"per": "batch"}, r"EchoConfig.per must be one of \['rollout', 'group'\]"),
        ({"mode": "sft"}, r"EchoConfig.mode must be one of \['loss', 'advantage'\]"),
        ({"step_agg": "median"}, r"EchoConfig.step_agg must be one of \['max', 'mean', 'sum'\]"),
        ({"selector": "best"}, r"EchoConfig.selector must be one of \['full', 'lowest', 'peak', 'random_prefix'\]"),
        ({"loss_agg": "seq_mean"}, r"EchoConfig.loss_agg must be one of \['clip_mean', 'clip_token_mean', 'token_mean'\]"),
        ({"preset": "grpo"}, r"EchoConfig.preset must be one of \['paper', 'degenerate', 'positive_nll'\], got 'grpo'"),
        ({"keep_filtered": "yes"}, "EchoConfig.keep_filtered must be a bool"),
        ({"enable": 1}, "EchoConfig.enable must be a bool"),
        ({"min_step_tokens": 0}, "EchoConfig.min_step_tokens must be >= 1"),
        ({"min_step_tokens": 1.5}, "EchoConfig.min_step_tokens must be an int"),
        ({"min_step_tokens": True}, "EchoConfig.min_step_tokens must be an int"),
        ({"seed": "0"}, "EchoConfig.seed must be an int"),
        ({"success_threshold": float("nan")}, "EchoConfig.success_threshold must be a finite number"),
        ({"success_threshold": "1"}, "EchoConfig.success_threshold must be a finite number"),
        ({"tol": -1e-6}, "EchoConfig.tol must be >= 0"),
        ({"tol": float("inf")}, "EchoConfig.tol must be a finite number"),
        ({"coef": -0.1}, "EchoConfig.coef must be >= 0"),
        ({"coef": True}, "EchoConfig.coef must be a finite number"),
        ({"adv_coef": float("-inf")}, "EchoConfig.adv_coef must be a finite number"),
    ],
)
def test_bad_fields_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EchoConfig(**kwargs)


def test_field_normalisation():
    cfg = EchoConfig(boundary_token_ids=[198, "271"], success_threshold=1, coef=0)
    assert cfg.boundary_token_ids == (198, 271) and isinstance(cfg.coef, float) and cfg.success_threshold == 1.0
    assert EchoConfig(boundary_token_ids=range(3, 5)).boundary_token_ids == (3, 4)
    assert EchoConfig(boundary_token_ids={7}).boundary_token_ids == (7,)  # any iterable (e.g. a ListConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        EchoConfig().coef = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs, active",
    [({}, True), ({"enable": False}, False), ({"coef": 0.0}, False), ({"mode": "advantage", "coef": 0.0}, True),
     ({"mode": "advantage", "adv_coef": 0.0}, False), ({"mode": "advantage", "enable": False}, False)],
)
def test_active(kwargs, active):
    assert EchoConfig(**kwargs).active is active


def test_from_dict_and_to_dict_round_trip():
    d = {"scope": "success", "per": "group", "boundary": "fixed", "boundary_token_ids": [13], "coef": 0.01,
         "min_step_tokens": 2}
    cfg = EchoConfig.from_dict(d)
    assert (cfg.scope, cfg.per, cfg.boundary_token_ids, cfg.coef, cfg.min_step_tokens) == ("success", "group", (13,), 0.01, 2)
    assert EchoConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["boundary_token_ids"] == [13]
    assert EchoConfig.from_dict(None) == EchoConfig() == EchoConfig.from_dict({"boundary_token_ids": None})


def test_from_dict_unknown_key_names_the_dotted_key():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['echorl.coeff'\]; valid keys: \[.*'coef'"):
        EchoConfig.from_dict({"coeff": 0.1})
    with pytest.raises(ValueError, match=r"\['algorithm.echorl.bogus', 'algorithm.echorl.zz'\]"):
        EchoConfig.from_dict({"zz": 1, "bogus": 2, "coef": 0.1}, prefix="algorithm.echorl")


def test_from_dict_bad_value_names_the_dotted_key():
    with pytest.raises(ValueError, match=r"^echorl.scope must be one of"):
        EchoConfig.from_dict({"scope": "everything"})
    with pytest.raises(ValueError, match=r"^trainer.echo.tol must be >= 0"):
        EchoConfig.from_dict({"tol": -1.0}, prefix="trainer.echo")


def test_from_dict_auto_boundary():
    for d in ({"boundary_token_ids": "auto"}, {"boundary": "auto"}, {"boundary": "auto", "boundary_token_ids": None},
              {}, {"boundary": "fixed", "boundary_token_ids": "auto"}, {"boundary_token_ids": []}):
        cfg = EchoConfig.from_dict(d)
        assert cfg.boundary == "auto" and cfg.boundary_token_ids == (), d
    assert EchoConfig.from_dict({"boundary": "fixed"}).boundary_token_ids == (198, 271)
    assert EchoConfig.from_dict({"boundary": "fixed", "boundary_token_ids": None}).boundary_token_ids == (198, 271)


@pytest.mark.parametrize("d", [{"boundary_token_ids": [5, 7]}, {"boundary": "auto", "boundary_token_ids": (5, 7)}])
def test_from_dict_refuses_ids_that_auto_would_replace(d):
    with pytest.raises(ValueError, match=r"^trainer\.echo\.boundary_token_ids=\[5, 7\] is given while "
                                         r"trainer\.echo\.boundary=auto derives the ids from the tokenizer.*"
                                         r"set trainer\.echo\.boundary=fixed"):
        EchoConfig.from_dict(d, prefix="trainer.echo")
    assert EchoConfig.from_dict({**d, "boundary": "fixed"}).boundary_token_ids == (5, 7)


def test_resolve_boundary_auto_with_a_real_tokenizer():
    tok = byte_level_tokenizer()
    cfg = EchoConfig.from_dict({"boundary": "auto", "coef": 0.5})
    resolved = cfg.resolve_boundary(tok)
    assert resolved.boundary_token_ids == (4, 5, 6, 7, 8, 13)  # "\n" "\n\n" ".\n\n" "a\n" " \n" ")\n\n"
    assert resolved.coef == 0.5 and resolved.boundary == "auto"
    assert cfg.boundary_token_ids == ()  # the original is unchanged (frozen)
    assert EchoConfig().resolve_boundary(tok).boundary_token_ids == resolved.boundary_token_ids  # auto is the default
    fixed = EchoConfig(boundary="fixed")
    assert fixed.resolve_boundary(tok) is fixed  # boundary='fixed' keeps its ids


def test_help_table_documents_every_field():
    table = EchoConfig.help_table()
    assert [row[0] for row in table] == [f.name for f in dataclasses.fields(EchoConfig)]
    defaults = EchoConfig()
    for name, typ, default, text in table:
        assert len(text) > 20, name
        assert default == (None if name == "boundary_token_ids" else getattr(defaults, name)), name
        assert typ


def test_every_field_is_documented_in_method_md():
    from pathlib import Path

    from echorl.config.generate import method_table

    doc = (Path(__file__).resolve().parents[2] / "docs" / "method.md").read_text()
    rows = {r.split(" | ")[0]: r for r in method_table()[2:]}
    for name, _typ, _default, text in EchoConfig.help_table():
        row = rows[f"| `{name}`"]
        assert row in doc and row.endswith(f" | {text} |"), name
