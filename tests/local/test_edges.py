"""Edges of the engine's run folder: resume=disable in a reused folder, checkpoint pruning, and the
config check of resume=auto (echorl/local/resume.py, echorl/checkpoints.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from engine_support import HERE, base_overrides, make_model

from echorl.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from echorl.local import load_config
from echorl.local.logger import read_metrics
from echorl.local.resume import ResumeWarning, config_changes
from echorl.local.trainer import LocalTrainer

ROOT = Path(HERE).parents[1]


def test_prune_keeps_the_checkpoint_just_written_and_drops_stale_higher_ones(tmp_path):
    root = tmp_path / "ck"
    for s in (5, 6, 7):  # a previous run's checkpoints, higher steps than the new run's
        (root / f"global_step_{s}").mkdir(parents=True)
    save_checkpoint(root, 1, {"x": 1}, max_keep=2)
    assert sorted(p.name for p in root.glob("global_step_*")) == ["global_step_1"]
    save_checkpoint(root, 2, {"x": 2}, max_keep=2)
    save_checkpoint(root, 3, {"x": 3}, max_keep=2)
    assert sorted(p.name for p in root.glob("global_step_*")) == ["global_step_2", "global_step_3"]
    assert latest_checkpoint(root).name == "global_step_3" and load_checkpoint(latest_checkpoint(root))["x"] == 3
    save_checkpoint(root, 4, {"x": 4}, max_keep=1)
    assert [p.name for p in root.glob("global_step_*")] == ["global_step_4"]


def _save_model(tmp_path):
    model, tok = make_model()
    d = tmp_path / "model"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _ov(model_dir, out, resume, steps=4):
    return base_overrides(out, steps=steps, **{"model.name": str(model_dir), "resume": resume, "trainer.save_freq": 1,
                                               "trainer.max_ckpt_to_keep": 2, "reward.score_fn": "local_scorers:len_mod4"})


def _launch(args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "echorl.local", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_resume_disable_in_a_reused_folder_then_sigkill_then_resume_auto(tmp_path):
    model_dir, out = _save_model(tmp_path), tmp_path / "run"
    first = LocalTrainer(load_config(_ov(model_dir, out, "disable")))
    first.train()  # previous run: checkpoints 3 and 4, metrics of steps 1..4
    old_metrics = read_metrics(out / "metrics.jsonl")
    assert [m["step"] for m in old_metrics] == [1, 2, 3, 4]

    # the new run (resume=disable, same folder) is killed right after its first checkpoint
    proc = _launch(_ov(model_dir, out, "disable"))
    deadline = time.time() + 300
    while True:
        ck = latest_checkpoint(out / "checkpoints")
        if ck is not None and ck.name == "global_step_1" and (out / "previous_runs").exists():
            break
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    log1 = proc.communicate()[0]
    assert "resume=disable: moved the previous run's checkpoints, metrics.jsonl" in log1
    ck = latest_checkpoint(out / "checkpoints")
    assert ck is not None and int(ck.name.split("_")[-1]) < 4  # the new run's own checkpoint, not the old 3/4
    done = int(ck.name.split("_")[-1])
    aside = next((out / "previous_runs").iterdir())
    assert read_metrics(aside / "metrics.jsonl") == old_metrics  # the previous run's metrics kept, not truncated
    assert sorted(p.name for p in (aside / "checkpoints").glob("global_step_*")) == ["global_step_3", "global_step_4"]

    proc = _launch(_ov(model_dir, out, "auto"))
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    assert f"resumed from {out / 'checkpoints' / f'global_step_{done}'} (step {done})" in log and "done: 4 steps" in log
    assert [m["step"] for m in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]
    assert load_checkpoint(latest_checkpoint(out / "checkpoints"))["step"] == 4


def test_resume_refuses_an_algorithm_change_and_warns_on_harmless_ones(tmp_path):
    out = tmp_path / "run"
    model, tok = make_model()
    tr = LocalTrainer(load_config(base_overrides(out, steps=1, **{"reward.score_fn": "local_scorers:len_mod4",
                                                                  "reward.in_process": True})), model=model, tokenizer=tok)
    tr.train()

    def again(**extra):
        m, t = make_model()
        ov = {"reward.score_fn": "local_scorers:len_mod4", "reward.in_process": True, "resume": "auto", **extra}
        return LocalTrainer(load_config(base_overrides(out, steps=3, **ov)), model=m, tokenizer=t)

    with pytest.raises(ValueError, match=r"resume=auto: the checkpoint .*global_step_1 was trained with other settings "
                                         r"that change the algorithm \(actor_rollout_ref\.actor\.optim\.lr: 0\.001 -> "
                                         r"0\.002; algorithm\.adv_estimator: 'grpo' -> 'rloo'; echorl\.coef: 0\.001 -> "
                                         r"0\.5; seed: 3 -> 4\).*resume=disable"):
        again(**{"actor_rollout_ref.actor.optim.lr": 2e-3, "algorithm.adv_estimator": "rloo", "echorl.coef": 0.5,
                 "seed": 4})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ok = again(**{"trainer.save_freq": 5})
    msgs = [str(x.message) for x in w if issubclass(x.category, ResumeWarning)]
    assert len(msgs) == 1 and "resume: 'disable' -> 'auto'" in msgs[0] and "trainer.save_freq: -1 -> 5" in msgs[0]
    assert "trainer.total_training_steps: 1 -> 3" in msgs[0]
    assert ok.global_step == 1
    ok.pool.close()


def test_config_changes_splits_refused_and_harmless_keys():
    saved = {"seed": 1, "data": {"train_batch_size": 8, "val_batch_size": 64}, "trainer": {"logger": ["console"]},
             "actor_rollout_ref": {"rollout": {"n": 4, "val_kwargs": {"n": 1}}}}
    cur = {"seed": 1, "data": {"train_batch_size": 16, "val_batch_size": 8}, "trainer": {"logger": []},
           "actor_rollout_ref": {"rollout": {"n": 8, "val_kwargs": {"n": 4}}}, "model": {"name": "x"}}
    refused, harmless = config_changes(saved, cur)
    assert refused == [("actor_rollout_ref.rollout.n", 4, 8), ("data.train_batch_size", 8, 16),
                       ("model", "<absent>", {"name": "x"})] or refused == [
        ("actor_rollout_ref.rollout.n", 4, 8), ("data.train_batch_size", 8, 16), ("model.name", "<absent>", "x")]
    assert harmless == [("actor_rollout_ref.rollout.val_kwargs.n", 1, 4), ("data.val_batch_size", 64, 8),
                        ("trainer.logger", ["console"], [])]


def test_key_added_since_the_checkpoint_is_harmless_only_at_its_earlier_behaviour():
    saved = {"echorl": {"coef": 0.001}}
    refused, harmless = config_changes(saved, {"echorl": {"coef": 0.001, "follow_rl_agg": False}})
    assert refused == [] and harmless == [("echorl.follow_rl_agg", "<absent>", False)]
    refused, harmless = config_changes(saved, {"echorl": {"coef": 0.001, "follow_rl_agg": True}})
    assert refused == [("echorl.follow_rl_agg", "<absent>", True)] and harmless == []
    refused, _ = config_changes({"echorl": {"coef": 0.001, "follow_rl_agg": True}},
                                {"echorl": {"coef": 0.001, "follow_rl_agg": False}})
    assert refused == [("echorl.follow_rl_agg", True, False)]  # present in both: an ordinary change


def test_boundary_ids_with_boundary_auto_are_refused_and_used_with_fixed(tmp_path):
    model, tok = make_model()
    nl = tok("\n", add_special_tokens=False)["input_ids"]
    ov = {"reward.score_fn": "local_scorers:len_mod4", "reward.in_process": True, "echorl.boundary_token_ids": "[5,7]"}
    with pytest.raises(ValueError, match=r"echorl\.boundary_token_ids=\[5, 7\] is given while echorl\.boundary=auto "
                                         r"derives the ids.*echorl\.boundary=fixed"):
        LocalTrainer(load_config(base_overrides(tmp_path, **ov)), model=model, tokenizer=tok)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 5 and 7 never occur in the solutions: EchoBoundaryWarning
        fixed = LocalTrainer(load_config(base_overrides(tmp_path, **ov, **{"echorl.boundary": "fixed"})),
                             model=model, tokenizer=tok)
    assert fixed.echo_cfg.boundary_token_ids == (5, 7)
    auto = LocalTrainer(load_config(base_overrides(tmp_path, **{k: v for k, v in ov.items() if "boundary" not in k})),
                        model=model, tokenizer=tok)
    assert list(auto.echo_cfg.boundary_token_ids) == nl
    fixed.pool.close()
    auto.pool.close()
