"""echorl/config/keys.py: a mistyped override key names the nearest valid key, on both hosts' configs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from echorl.config.keys import UnknownKeyError, compose_config
from echorl.local.config import load_config


def test_engine_config_names_the_nearest_key():
    with pytest.raises(UnknownKeyError, match=r"unknown config key 'echorl\.cof': 'echorl' has no 'cof'; "
                                              r"did you mean 'echorl\.coef'\?.*'\+echorl\.cof=\.\.\.'"):
        load_config(["echorl.cof=0.1"])


def test_deeper_node_and_other_overrides_kept():
    with pytest.raises(UnknownKeyError, match=r"'trainer' has no 'total_trainig_steps'; did you mean "
                                              r"'trainer\.total_training_steps'\?"):
        load_config(["echorl.coef=0.01", "trainer.total_trainig_steps=3"])


def test_no_close_key_lists_the_node():
    with pytest.raises(UnknownKeyError, match=r"'echorl' has no 'zzzz'; its keys are \[.*'coef'"):
        compose_config("echorl.config", "echorl_trainer", ["echorl.zzzz=1"])


def test_valid_overrides_compose_and_other_errors_pass_through():
    cfg = compose_config("echorl.config", "echorl_trainer", ["echorl.coef=0.01"])
    assert cfg.echorl.coef == 0.01
    with pytest.raises(Exception) as err:  # a malformed override is Hydra's own parse error, not a key hint
        compose_config("echorl.config", "echorl_trainer", ["echorl.coef=[1,"])
    assert not isinstance(err.value, UnknownKeyError)


def test_verl_entry_point_names_the_nearest_key():
    """``python -m echorl.main echorl.cof=0.1``: exit 2 and one line before Ray starts."""
    out = subprocess.run([sys.executable, "-m", "echorl.main", "echorl.cof=0.1"], capture_output=True, text=True,
                         timeout=300, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2, out.stderr[-2000:]
    assert "did you mean 'echorl.coef'?" in out.stderr
