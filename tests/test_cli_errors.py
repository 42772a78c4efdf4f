"""A bad setting ends `echorl train` and `python -m echorl.main` with exit code 2 and one line on
stderr naming the key, the value and the fix (echorl/errors.py); ECHORL_DEBUG=1 shows the traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args, tmp_path, **env):
    e = {k: v for k, v in os.environ.items() if k != "ECHORL_DEBUG"}
    e.update({"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **env})
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=e, capture_output=True, text=True, timeout=600)


def test_echorl_train_bad_setting_is_one_line_exit_2(tmp_path):
    p = _run(["-m", "echorl.cli", "train", "algorithm.adv_estimator=nope", f"output_dir={tmp_path / 'o'}"], tmp_path)
    assert p.returncode == 2, p.stderr
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("echorl train: error: algorithm.adv_estimator='nope' is not a registered advantage")
    assert "grpo, " in lines[0] and "rloo" in lines[0] and "Traceback" not in p.stderr


def test_echorl_train_unknown_key_and_debug_traceback(tmp_path):
    p = _run(["-m", "echorl.cli", "train", "echorl.coef=abc"], tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "echorl train: error: echorl.coef must be a finite number, got 'abc' (ECHORL_DEBUG=1 shows the traceback)"]
    d = _run(["-m", "echorl.cli", "train", "--debug", "echorl.coef=abc"], tmp_path)
    assert d.returncode == 1 and "Traceback" in d.stderr and "echorl.coef must be a finite number" in d.stderr


def test_verl_launcher_bad_setting_is_one_line_exit_2(tmp_path):
    p = _run(["-m", "echorl.main", "actor_rollout_ref.rollout.n=1", f"hydra.run.dir={tmp_path / 'h'}"], tmp_path)
    assert p.returncode == 2, p.stderr[-3000:]
    # verl logs its accelerator probe (WARNING:...) on import; the error itself is one line, no traceback
    lines = [x for x in p.stderr.splitlines() if x.strip() and not x.startswith("WARNING:")]
    assert len(lines) == 1, p.stderr[-3000:]
    assert lines[0].startswith("echorl.main: error: actor_rollout_ref.rollout.n=1 leaves algorithm.adv_estimator=grpo "
                               "no group to compare") and "Traceback" not in p.stderr
