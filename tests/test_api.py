"""The public API of ``echorl`` (SPEC 3, docs/architecture.md): ``__all__`` is exact and importable.

Run: ``.venv/bin/python -m pytest -q tests/test_api.py``.
"""

from __future__ import annotations

import importlib
import inspect

import echorl
import echorl.core

PUBLIC = {
    "EchoConfig", "EchoSelection", "EchoStageOutput", "apply_echo_advantage", "auto_boundary_token_ids",
    "echo_loss_term", "echo_normalizer", "echo_row_denominators", "run_echo_stage", "segment_steps", "select_echo_clips", "step_aggregates",
}


def test_all_is_exactly_the_public_api():
    assert sorted(echorl.__all__) == sorted(PUBLIC)
    assert len(echorl.__all__) == len(set(echorl.__all__))
    assert set(echorl.core.__all__) == PUBLIC - {"EchoStageOutput", "run_echo_stage"}


def test_every_public_name_imports():
    for name in echorl.__all__:
        assert getattr(importlib.import_module("echorl"), name) is getattr(echorl, name)
    ns: dict = {}
    exec("from echorl import *", ns)
    assert PUBLIC <= set(ns)


def test_spec_signatures():
    params = list(inspect.signature(echorl.select_echo_clips).parameters)
    assert params == ["responses", "response_mask", "entropy", "scores", "group_ids", "cfg", "generator"]
    params = inspect.signature(echorl.run_echo_stage).parameters
    assert list(params)[:6] == ["responses", "response_mask", "entropy", "scores", "group_ids", "cfg"]
    assert {"advantages", "num_minibatches", "step"} <= set(params)
    assert list(inspect.signature(echorl.echo_loss_term).parameters) == ["log_prob", "echo_mask", "normalizer"]
    assert list(inspect.signature(echorl.segment_steps).parameters) == ["responses", "valid", "boundary_ids"]


def test_core_imports_no_host_code():
    import subprocess
    import sys

    code = "import sys, echorl.core; bad = [m for m in sys.modules if m.split('.')[0] in ('verl', 'hydra', 'ray')]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
