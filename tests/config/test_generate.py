"""echorl.config.generate: the YAML `echorl:` nodes, the docs' option tables and `echorl train
--help` come from EchoConfig; a stale generated block fails here."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import yaml

from echorl.config import generate as gen
from echorl.core.config import EchoConfig


def test_no_generated_block_is_stale():
    assert gen.stale() == [], f"run {gen.COMMAND}"


@pytest.mark.parametrize("target", gen.TARGETS, ids=lambda t: t.path)
def test_a_stale_block_is_found(target, tmp_path):
    text = (gen.ROOT / target.path).read_text()
    i = text.index(target.begin()) + len(target.begin())
    body_end = text.index(target.end(), i)
    (tmp_path / target.path).parent.mkdir(parents=True, exist_ok=True)
    for t in gen.TARGETS:  # a copy of the repo's generated files, one of them edited by hand
        (tmp_path / t.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / t.path).write_text((gen.ROOT / t.path).read_text())
    (tmp_path / target.path).write_text(text[:i] + text[i:body_end].replace("0.001", "0.002", 1) + text[body_end:])
    assert gen.stale(tmp_path) == [target.path]
    assert gen.write(tmp_path) == [target.path] and gen.stale(tmp_path) == []
    assert (tmp_path / target.path).read_text() == text


def test_missing_markers_are_named():
    t = gen.TARGETS[0]
    with pytest.raises(ValueError, match="marker lines .* are missing"):
        gen.regenerate("echorl:\n  coef: 0.001\n", t)


@pytest.mark.parametrize("path", ["echorl/config/echorl_trainer.yaml", "echorl/config/local.yaml"])
def test_yaml_nodes_hold_every_field_with_its_default(path):
    node = yaml.safe_load((gen.ROOT / path).read_text())["echorl"]
    assert node == {f.name: f.default for f in dataclasses.fields(EchoConfig)}
    assert (node["boundary"], node["boundary_token_ids"]) == ("auto", None)  # both hosts: steps from the tokenizer
    cfg = EchoConfig.from_dict(node)
    assert cfg == EchoConfig() and (cfg.boundary, cfg.boundary_token_ids, cfg.coef) == ("auto", (), 0.001)
    # the authors' literal flags are one override away
    assert EchoConfig.from_dict({**node, "boundary": "fixed"}).boundary_token_ids == (198, 271)


def test_markdown_tables_escape_the_union_type():
    row = next(r for r in gen.method_table() if r.startswith("| `boundary_token_ids`"))
    assert row.startswith("| `boundary_token_ids` | `tuple[int, ...] \\| None` | `None` | ")
    assert all(r.count(" | ") == 3 for r in gen.method_table()[2:] + gen.verl_table()[2:])


def test_yaml_value_floats_stay_floats():
    assert gen._yaml_value(1e-06) == "1.0e-06" and yaml.safe_load(gen._yaml_value(1e-06)) == 1e-06
    assert gen._yaml_value(0.001) == "0.001" and gen._yaml_value(None) == "null"
    assert gen._yaml_value((198, 271)) == "[198, 271]" and gen._yaml_value(False) == "false"


def test_train_help_lists_every_option():
    res = subprocess.run([sys.executable, "-m", "echorl.cli", "train", "--help"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    for f in dataclasses.fields(EchoConfig):
        assert f"  echorl.{f.name} (default " in res.stdout
    assert "Weight of the EchoRL NLL term in mode='loss'" in res.stdout
    assert "  echorl.boundary (default auto)" in res.stdout
    assert "  echorl.boundary_token_ids (default null)" in res.stdout
