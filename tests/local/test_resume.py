"""Resume: a run killed with SIGKILL mid-way and resumed (resume=auto) reaches the same final
weights, bit for bit, as an uninterrupted run (model, optimizer, scheduler, RNG, data position)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from engine_support import HERE, base_overrides, make_model

from echorl.checkpoints import latest_checkpoint, load_checkpoint
from echorl.local import load_config
from echorl.local.trainer import LocalTrainer

ROOT = Path(HERE).parents[1]
STEPS = 5


def _overrides(model_dir, out):
    return base_overrides(out, steps=STEPS, **{
        "model.name": str(model_dir), "resume": "auto", "trainer.save_freq": 1,
        "reward.score_fn": "local_scorers:len_mod4", "trainer.make_report": True,
        "actor_rollout_ref.actor.optim.lr_warmup_steps": 3})  # the scheduler state matters too


def _launch(args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "echorl.local", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    model, tok = make_model()
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)

    # uninterrupted reference, in-process
    ref = LocalTrainer(load_config(_overrides(model_dir, tmp_path / "ref")))
    summary = ref.train()
    assert summary["steps"] == STEPS

    # killed run: SIGKILL as soon as step 2's checkpoint exists (mid-way through step 3)
    out = tmp_path / "killed"
    proc = _launch(_overrides(model_dir, out))
    deadline = time.time() + 240
    while latest_checkpoint(out / "checkpoints") is None or latest_checkpoint(out / "checkpoints").name != "global_step_2":
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = int(latest_checkpoint(out / "checkpoints").name.split("_")[-1])
    assert done < STEPS, "the run finished before it was killed"

    # resume through the CLI path (python -m echorl.local)
    proc = _launch(_overrides(model_dir, out))
    log, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, log
    assert "resumed from" in log and f"done: {STEPS} steps" in log

    a = load_checkpoint(latest_checkpoint(tmp_path / "ref" / "checkpoints"))
    b = load_checkpoint(latest_checkpoint(out / "checkpoints"))
    assert a["step"] == b["step"] == STEPS
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    init = model.state_dict()
    assert not all(torch.equal(v, init[k]) for k, v in a["model"].items())  # training moved the weights
    assert a["scheduler"] == b["scheduler"]
    # metrics.jsonl holds each step once, equal to the reference's per-step rewards
    ra = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in rb] == list(range(1, STEPS + 1))
    assert [m["reward/mean"] for m in ra] == [m["reward/mean"] for m in rb]
    assert (out / "metrics.png").exists() and (out / "echo_clips.html").exists()
    from echorl.cli import main

    (out / "metrics.png").unlink()
    assert main(["analyze", str(out)]) == 0  # `echorl analyze RUN_DIR` rebuilds the figure and the page
    assert (out / "metrics.png").stat().st_size > 0


def test_train_until_step_is_the_first_part_of_the_run(tmp_path):
    """``train(until_step=2)`` stops after step 2 with a checkpoint there (save_freq 4 would not write
    one), its metric rows are the full run's first two, and ``train()`` then resumes to the same final
    weights as an uninterrupted run."""
    model, tok = make_model()
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)

    def config(out):
        return load_config(base_overrides(out, steps=STEPS, **{
            "model.name": str(model_dir), "resume": "auto", "trainer.save_freq": 4,
            "reward.score_fn": "local_scorers:len_mod4", "actor_rollout_ref.actor.optim.lr_warmup_steps": 3}))

    LocalTrainer(config(tmp_path / "ref")).train()
    out = tmp_path / "part"
    part = LocalTrainer(config(out))
    with pytest.raises(ValueError, match="until_step=6"):
        part.train(until_step=STEPS + 1)
    summary = part.train(until_step=2)
    assert summary["steps"] == part.global_step == 2
    assert latest_checkpoint(out / "checkpoints").name == "global_step_2"
    ra = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in rb] == [1, 2]
    assert [m["reward/mean"] for m in rb] == [m["reward/mean"] for m in ra[:2]]

    rest = LocalTrainer(config(out))
    assert rest.global_step == 2
    assert rest.train()["steps"] == STEPS
    a = load_checkpoint(latest_checkpoint(tmp_path / "ref" / "checkpoints"))
    b = load_checkpoint(latest_checkpoint(out / "checkpoints"))
    assert a["step"] == b["step"] == STEPS
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
