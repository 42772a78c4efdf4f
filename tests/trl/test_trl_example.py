"""scripts/trl_grpo_chain.py: EchoGRPOTrainer on the chain testbed writes the echo/* metrics through
TRL's own TensorBoard logging (2 optimizer steps of 16 rollouts; about 10 s)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "trl_grpo_chain.py"
ECHO_TAGS = ("echo/loss", "echo/clips", "echo/clip_tokens", "echo/groups_all_success_frac", "echo/peak_h",
             "echo/grad_token_frac_echo", "echo/entropy_pass", "echo/entropy_from_generation",
             "timing_s/echo")


def test_example_logs_echo_metrics_to_tensorboard(tmp_path):
    spec = importlib.util.spec_from_file_location("trl_grpo_chain", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tr = mod.main(["--output_dir", str(tmp_path), "--max_steps", "2", "--per_device_train_batch_size", "8",
                   "--num_generations", "4", "--max_completion_length", "48", "--rows", "64"])
    assert tr.args.steps_per_generation == 2 and tr.args.report_to == ["tensorboard"]
    (event_file,) = tmp_path.glob("runs/*/events.out.tfevents.*")
    acc = EventAccumulator(str(event_file.parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    missing = [t for t in ECHO_TAGS if f"train/{t}" not in tags]
    assert not missing, sorted(tags)
    # the values TensorBoard holds are the trainer's logs (step 1: the generation step)
    first = tr.state.log_history[0]
    for t in ("echo/clips", "echo/loss", "echo/entropy_pass"):
        (ev, *_) = acc.Scalars(f"train/{t}")
        assert ev.step == 1 and ev.value == pytest.approx(first[t], rel=1e-6)
    # steps_per_generation=2: TRL's old-policy pass gave the entropies
    assert first["echo/entropy_pass"] == first["echo/entropy_from_generation"] == 0.0
