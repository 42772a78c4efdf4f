"""echorl/local/logger.py: metrics reach metrics.jsonl, tensorboard and wandb (offline) intact."""

from __future__ import annotations

import json

from echorl.local.logger import RunLogger, read_metrics

STEPS = [{"reward/mean": 0.25, "echo/clips": 3.0, "echo/loss": 0.5}, {"reward/mean": 0.75, "echo/clips": 0.0}]


def test_jsonl_tensorboard_and_offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = RunLogger(tmp_path, ["tensorboard", "wandb"], total_steps=2, start_step=0,
                    config={"trainer": {"project_name": "echorl-test"}}, project="echorl-test", experiment="t")
    for step, m in enumerate(STEPS, start=1):
        log.log(step, m)
    log.close()

    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert rows == [{"step": 1, **STEPS[0]}, {"step": 2, **STEPS[1]}]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, "no tensorboard event file written"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("reward/mean")] == [(1, 0.25), (2, 0.75)]
    assert [(e.step, e.value) for e in acc.Scalars("echo/loss")] == [(1, 0.5)]

    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline wandb run, found {runs}"
    assert list(runs[0].glob("*.wandb")), "offline run has no .wandb data file"


def test_resume_keeps_only_steps_up_to_the_checkpoint(tmp_path):
    # A run killed after writing step 3 but checkpointed at step 2 resumes at 2: step 3 is dropped
    # so that metrics.jsonl holds every step once.
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in (1, 2, 3)))
    log = RunLogger(tmp_path, [], total_steps=5, start_step=2, config={"trainer": {}})
    log.log(3, {"x": 30.0})
    log.close()
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "x": 1}, {"step": 2, "x": 2}, {"step": 3, "x": 30.0}]
