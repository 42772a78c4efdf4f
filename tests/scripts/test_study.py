"""scripts/study.py and echorl.study: arm configs, resume/skip planning, statistics, report, a real run."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from echorl.study.arms import ARMS, FULL, QUICK, compose, get_arms, run_overrides
from echorl.study.gradshare import grad_share
from echorl.study.report import arm_table, comparisons, eval_sampling_se, load_results, verdict, write_report
from echorl.study.runner import (
    SCHEMA,
    RunClock,
    estimate_left,
    first_window_diffs,
    plan_runs,
    replay_steps,
    result_path,
    run_one,
    run_wall_s,
    summarize_run,
)
from echorl.study.stats import mean_sd, paired_difference, t_quantile

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("study_script", ROOT / "scripts" / "study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------- arms -> engine configs
EXPECTED = {  # arm -> (echo enable, preset, scope, per, selector, mode, coef, estimator, filter, method)
    "grpo": (False, "paper", "success", "group", "peak", "loss", 1e-3, "grpo", False, "grpo"),
    "echorl": (True, "paper", "success", "group", "peak", "loss", 1e-3, "grpo", False, "grpo"),
    "degenerate": (True, "degenerate", "degenerate", "rollout", "peak", "loss", 1e-3, "grpo", False, "grpo"),
    "coef_1e-2": (True, "paper", "success", "group", "peak", "loss", 1e-2, "grpo", False, "grpo"),
    "coef_1e-1": (True, "paper", "success", "group", "peak", "loss", 1e-1, "grpo", False, "grpo"),
    "nll_success_full": (True, "paper", "success", "rollout", "full", "loss", 1e-3, "grpo", False, "grpo"),
    "sel_random_prefix": (True, "paper", "success", "group", "random_prefix", "loss", 1e-3, "grpo", False, "grpo"),
    "sel_full": (True, "paper", "success", "group", "full", "loss", 1e-3, "grpo", False, "grpo"),
    "sel_lowest": (True, "paper", "success", "group", "lowest", "loss", 1e-3, "grpo", False, "grpo"),
    "dapo": (False, "paper", "success", "group", "peak", "loss", 1e-3, "grpo", True, "grpo"),
    "dapo_echorl": (True, "paper", "success", "group", "peak", "loss", 1e-3, "grpo", True, "grpo"),
    "rloo": (False, "paper", "success", "group", "peak", "loss", 1e-3, "rloo", False, "grpo"),
    "rloo_echorl": (True, "paper", "success", "group", "peak", "loss", 1e-3, "rloo", False, "grpo"),
    "advantage": (True, "paper", "success", "group", "peak", "advantage", 1e-3, "grpo", False, "grpo"),
    "luffy": (False, "paper", "success", "group", "peak", "loss", 1e-3, "grpo", False, "luffy"),
    "luffy_echorl": (True, "paper", "success", "group", "peak", "loss", 1e-3, "grpo", False, "luffy"),
    "uft": (False, "paper", "success", "group", "peak", "loss", 1e-3, "grpo", False, "uft"),
    "uft_echorl": (True, "paper", "success", "group", "peak", "loss", 1e-3, "grpo", False, "uft"),
}


def test_arm_table_is_the_expected_one():
    assert [a.name for a in ARMS] == list(EXPECTED)
    for a in ARMS:
        assert a.seeds == (5 if a.name in ("grpo", "echorl") else 3)
        assert a.base is None or a.base in EXPECTED and EXPECTED[a.base][0] is False


@pytest.mark.parametrize("arm", [a.name for a in ARMS])
def test_every_arm_composes_into_a_valid_engine_config(arm, tmp_path):
    """Hydra composition of testbed.yaml + the arm, then every start-up check of LocalTrainer
    (verl actor/algorithm dataclasses, cross-key validation, EchoConfig, method, DAPO filter)."""
    from omegaconf import OmegaConf

    from echorl.eval.benchmarks import specs_from_config
    from echorl.local.config import (
        build_actor_config,
        build_algo_config,
        build_echo_config,
        build_method_config,
        validate,
    )
    from echorl.local.dynamic_sampling import filter_config

    a = get_arms([arm])[0]
    cfg = compose(a, 3, FULL, str(tmp_path / "run"))
    actor = build_actor_config(cfg)
    build_algo_config(cfg)
    validate(cfg, actor)
    echo = build_echo_config(cfg)
    method = build_method_config(cfg)
    filt = filter_config(cfg, echo, method.name != "grpo")
    got = (echo.enable, echo.preset, echo.scope, echo.per, echo.selector, echo.mode, echo.coef,
           str(cfg.algorithm.adv_estimator), filt.enable, method.name)
    assert got == EXPECTED[arm]
    assert cfg.model.name == "tiny-chain" and cfg.data.task == "chain"
    assert (cfg.seed, cfg.data.seed, cfg.trainer.total_training_steps) == (3, 3, FULL.steps)
    assert (cfg.data.train_batch_size, cfg.actor_rollout_ref.rollout.n) == (16, 8)  # same compute in every arm
    spec, = specs_from_config(OmegaConf.to_container(cfg.data.val_files), "data.val_files")
    assert (spec.name, spec.source, spec.num_rows, spec.task_kwargs) == ("dev", "chain", FULL.dev_rows, {"split": "dev"})
    if arm.startswith("dapo"):
        assert (actor.clip_ratio_low, actor.clip_ratio_high) == (0.2, 0.28)
    if arm.startswith("uft"):
        assert method.uft.hint_steps == FULL.steps
    assert f"output_dir={tmp_path / 'run'}" in run_overrides(a, 3, FULL, str(tmp_path / "run"))


def test_unknown_arm_is_an_error_naming_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown arm\(s\) \['nope'\]; valid arms: \['grpo'"):
        get_arms(["grpo", "nope"])


# ---------------------------------------------------------------- resume / skip / --seeds
def _fake(folder: Path, arm: str, seed: int, test: float = 0.5, ood: float = 0.3, **final):
    p = result_path(folder, arm, seed)
    p.parent.mkdir(parents=True, exist_ok=True)
    f = {"test_avg": test, "ood_avg": ood, "passk_avg": test, "pass@k": {"1": test, "8": 0.8, "64": 0.9},
         "entropy": 0.3, "all_success_frac": 0.2, "clips": 5.0, "s_per_step": 2.0, **final}
    p.write_text(json.dumps({"schema": SCHEMA, "arm": arm, "seed": seed, "final": f, "wall_s": 100.0, "threads": 1,
                             "s_per_step": 2.0, "load_avg": 3.0,
                             "curves": {"step": [10, 20], "reward": [0.4, 0.5], "entropy": [0.3, 0.2],
                                        "all_success_frac": [0.1, 0.2]},
                             "val": {"step": [0, 25], "dev": [0.4, test]}}))


def test_plan_skips_finished_runs_and_interleaves_pairs(tmp_path):
    arms = get_arms(["grpo", "echorl", "degenerate"])
    _fake(tmp_path, "grpo", 1)
    _fake(tmp_path, "echorl", 2)
    todo, done = plan_runs(arms, FULL, tmp_path)
    assert [(a.name, k) for a, k in done] == [("grpo", 1), ("echorl", 2)]
    assert [(a.name, k) for a, k in todo] == [
        ("echorl", 1), ("grpo", 2), ("grpo", 3), ("echorl", 3), ("grpo", 4), ("echorl", 4), ("grpo", 5),
        ("echorl", 5), ("degenerate", 1), ("degenerate", 2), ("degenerate", 3)]
    todo, done = plan_runs(arms, FULL, tmp_path, seeds=[2, 7])  # --seeds: other seeds for every selected arm
    assert [(a.name, k) for a, k in todo] == [("grpo", 2), ("grpo", 7), ("echorl", 7), ("degenerate", 2),
                                              ("degenerate", 7)]
    assert [(a.name, k) for a, k in done] == [("echorl", 2)]
    todo, _ = plan_runs(get_arms(["grpo", "echorl"]), QUICK, tmp_path)  # quick: one seed per arm
    assert [(a.name, k) for a, k in todo] == [("echorl", 1)]


def test_cli_dry_run_prints_the_plan(tmp_path, capsys):
    _fake(tmp_path, "grpo", 1)
    assert _script().main(["--dry-run", "--folder", str(tmp_path), "--arms", "grpo,echorl", "--seeds", "1,4"]) == 0
    out = capsys.readouterr().out
    assert "1 runs done, 3 to run: echorl/seed1, grpo/seed4, echorl/seed4" in out


# ---------------------------------------------------------------- statistics
def test_paired_difference_by_hand():
    a = {1: 0.5, 2: 0.6, 3: 0.7, 9: 0.1}
    b = {1: 0.4, 2: 0.55, 3: 0.5, 4: 0.9}
    d = paired_difference(a, b)
    # d = [0.1, 0.05, 0.2]; mean 0.116667; sd = sqrt((0.016667^2 + 0.066667^2 + 0.083333^2) / 2) = 0.0763763
    # t_{2, 0.975} = 4.302653; half-width = 4.302653 * 0.0763763 / sqrt(3) = 0.1897296
    assert d["n"] == 3 and d["seeds"] == [1, 2, 3]
    assert d["mean"] == pytest.approx(0.1166667, abs=1e-6)
    assert d["sd"] == pytest.approx(0.0763763, abs=1e-6)
    assert d["t_low"] == pytest.approx(0.1166667 - 0.1897296, abs=1e-5)
    assert d["t_high"] == pytest.approx(0.1166667 + 0.1897296, abs=1e-5)
    assert "boot_low" not in d  # no bootstrap: it under-covers at 3-5 seeds
    assert verdict(d) == "no detectable difference"
    # d = 0.10, 0.11, 0.12: sd 0.01, half-width 4.302653 * 0.01 / sqrt(3) = 0.0248 -> interval above 0
    assert verdict(paired_difference({1: 0.5, 2: 0.61, 3: 0.62}, {1: 0.4, 2: 0.5, 3: 0.5})) == "gain"
    assert verdict(paired_difference({1: 0.4, 2: 0.5, 3: 0.5}, {1: 0.5, 2: 0.61, 3: 0.62})) == "loss"
    assert verdict(paired_difference({1: 0.5, 2: 0.6}, {1: 0.4, 2: 0.45})) == "no detectable difference"  # t_1 = 12.7
    one = paired_difference({1: 0.5}, {1: 0.4})
    assert one["mean"] == pytest.approx(0.1) and math.isnan(one["t_low"]) and verdict(one) == "too few seeds"
    # with the Holm-adjusted p: an interval that excludes 0 is only nominal when Holm fails
    g = paired_difference({1: 0.5, 2: 0.61, 3: 0.62}, {1: 0.4, 2: 0.5, 3: 0.5})
    assert verdict(g, 0.2) == "nominal gain, not significant after Holm" and verdict(g, 0.04) == "gain"
    assert verdict(d, 0.01) == "gain"  # given a Holm-adjusted p, it decides


def test_comparisons_are_one_holm_family():
    """arm vs base on test and ood, ablations vs echorl on test; Holm over all of them."""
    rows = [{"arm": "echorl", "base": "grpo", "d_test_avg": paired_difference({1: .6, 2: .7, 3: .8}, {1: .5, 2: .62, 3: .7}),
             "d_ood_avg": paired_difference({1: .1, 2: .1}, {1: .1, 2: .1})},
            {"arm": "sel_full", "base": "grpo", "d_test_avg": paired_difference({1: .5}, {1: .4}),
             "d_test_avg_vs_echorl": paired_difference({1: .6, 2: .5, 3: .9}, {1: .6, 2: .7, 3: .8})}]
    cs = comparisons(rows)
    assert [(c["arm"], c["vs"], c["metric"]) for c in cs] == [
        ("echorl", "grpo", "test"), ("echorl", "grpo", "ood"), ("sel_full", "grpo", "test"), ("sel_full", "echorl", "test")]
    # d = .1, .08, .1: mean .093333, sd .011547, t = 14.0, df 2 -> p = 0.0050633 (scipy 2 * t.sf(14, 2));
    # ood: all differences 0 -> p = 1; sel_full vs grpo: one seed -> NaN (not in the family, m = 3)
    assert cs[0]["d"]["p"] == pytest.approx(0.005063, abs=1e-5)
    assert cs[0]["p_holm"] == pytest.approx(3 * cs[0]["d"]["p"])
    assert math.isnan(cs[2]["p_holm"]) and cs[2]["verdict"] == "too few seeds"
    assert cs[1]["p_holm"] == 1.0 and cs[1]["verdict"] == "no detectable difference"
    assert cs[0]["verdict"] == "gain"


def test_eval_sampling_se_by_hand():
    # counts of 4: phat 1, 0.5, 0.25 -> variances 0, 0.25 / 3, 0.1875 / 3; sqrt(0.4375 / 3) / 3
    assert eval_sampling_se([4, 2, 1], 4) == pytest.approx(math.sqrt(0.4375 / 3) / 3)
    assert math.isnan(eval_sampling_se([1, 0], 1))


@pytest.mark.parametrize("df,q", [(1, 12.706205), (2, 4.302653), (4, 2.776445), (10, 2.228139), (29, 2.045230)])
def test_t_quantile_matches_tables(df, q):
    assert t_quantile(0.975, df) == pytest.approx(q, abs=2e-6)


def test_mean_sd():
    assert mean_sd([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2
                                                                        + (4 - 7 / 3) ** 2) / 2), 3))
    m, sd, n = mean_sd([0.5])
    assert (m, n) == (0.5, 1) and math.isnan(sd)


def test_report_from_fake_results(tmp_path):
    for seed, (g, e) in enumerate([(0.50, 0.55), (0.40, 0.50), (0.45, 0.47)], start=1):
        _fake(tmp_path, "grpo", seed, test=g)
        _fake(tmp_path, "echorl", seed, test=e)
    _fake(tmp_path, "echorl", 4, test=0.9)  # unpaired: not in the difference
    rows = {r["arm"]: r for r in arm_table(load_results(tmp_path))}
    d = rows["echorl"]["d_test_avg"]
    assert d["n"] == 3 and d["mean"] == pytest.approx((0.05 + 0.10 + 0.02) / 3)
    md = write_report(tmp_path, FULL, tmp_path / "results.md", tmp_path / "img", command="python scripts/study.py --report")
    assert "| echorl | 4 | 60.5 ± 19.9 |" in md  # mean/sd of 0.55, 0.50, 0.47, 0.90 in %
    # d = .05, .10, .02: mean .056667, sd .040415, 95% t half-width 4.302653 * .040415 / sqrt 3 = .100396
    assert "| echorl | grpo | test | 3 | +5.7 [-4.4, +15.7] |" in md
    assert "2 paired comparisons" in md and "bootstrap" not in md
    assert "| degenerate | 0/3 | `python scripts/study.py --arms degenerate` |" in md
    assert "| grpo | 3/5 | `python scripts/study.py --arms grpo --seeds 4,5` |" in md
    assert (tmp_path / "img" / "results_main.png").stat().st_size > 1000


def test_echo_grad_share_per_run_is_the_median_of_its_measurements():
    """One micro-batch without RL gradient gives share 1.0; the per-run value is the median of the
    measured points (None: a step without a measurement), not the mean the run file stores."""
    from echorl.study.report import _vals

    runs = {1: {"final": {"grad_echo_share": 0.2525, "test_avg": 0.5},
                "curves": {"grad_echo_share": [0.002, None, 0.004, 1.0, 0.003]}},
            2: {"final": {"grad_echo_share": 0.01}, "curves": {}}}  # no curve: the stored value
    assert _vals(runs, "grad_echo_share") == {1: pytest.approx(0.0035), 2: 0.01}
    assert _vals(runs, "test_avg") == {1: 0.5}


# ---------------------------------------------------------------- measurements
def test_grad_share_by_hand():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    x = torch.tensor([1.0, 0.0])
    rl, echo = (w * x).sum(), 0.5 * (w * w).sum()  # grad rl = x = [1, 0]; grad echo = w = [3, 4]
    m = grad_share(rl, echo, [w])
    assert m["study/grad_norm_rl"] == pytest.approx(1.0) and m["study/grad_norm_echo"] == pytest.approx(5.0)
    assert m["study/grad_echo_share"] == pytest.approx(5.0 / 6.0) and m["study/grad_cos"] == pytest.approx(0.6)
    assert w.grad is None  # measured with autograd.grad: the update's .grad is untouched
    (rl + echo).backward()  # the graph is kept for the update's own backward
    assert torch.equal(w.grad, torch.tensor([4.0, 4.0]))


def test_summarize_run_windows_and_validation():
    rows = [{"step": 0, "val-core/dev/reward/mean@2": 0.25}]
    rows += [{"step": s, "reward/mean": float(s), "timing/step": 1.0, **({"study/grad_echo_share": 0.5 * s} if s % 2 == 0 else {})}
             for s in range(1, 6)]
    rows[-1]["val-core/dev/reward/mean@2"] = 0.5
    out = summarize_run(rows, window=2, tail=2)
    assert out["curves"]["step"] == [2, 4, 5] and out["curves"]["reward"] == [1.5, 3.5, 5.0]
    assert out["curves"]["grad_echo_share"] == [1.0, 2.0, None]
    assert out["val"] == {"step": [0, 5], "dev": [0.25, 0.5]}
    assert out["final"]["reward"] == 4.5 and out["final"]["grad_echo_share"] == 1.5  # last 2 steps / every measurement
    assert (out["final"]["dev_start"], out["final"]["dev_avg"]) == (0.25, 0.5)


def test_split_record_is_fixed_and_disjoint():
    from echorl.study.splits import split_record

    rec = split_record(QUICK, [1, 2], 512)
    assert rec["train_overlap"] == {"1": {"dev": 0, "test": 0, "ood": 0}, "2": {"dev": 0, "test": 0, "ood": 0}}
    assert rec["sets"]["ood"]["num_ops"] == [6] and rec["sets"]["test"]["num_ops"] == [4]
    committed = ROOT / FULL.folder / "splits.json"
    if committed.exists():  # the sets the study ran on are still the ones the task generates
        full = split_record(FULL, [1], 64)
        assert {k: v["sha256"] for k, v in json.loads(committed.read_text())["sets"].items()} == \
            {k: v["sha256"] for k, v in full["sets"].items()}


TINY = dataclasses.replace(
    QUICK, steps=2, test_freq=1, dev_rows=4, dev_n=1, test_rows=6, ood_rows=4, eval_n=2, passk_rows=3, passk_n=4,
    grad_share_every=1, eval_batch_size=64, model="tiny",
    extra=("data.task=arithmetic", "+data.task_kwargs.levels=[1]", "data.num_rows=64",
           "data.train_batch_size=4", "actor_rollout_ref.rollout.n=4", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
           "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8", "actor_rollout_ref.actor.optim.lr_warmup_steps=0",
           "reward.num_workers=1"))


def test_run_clock_keeps_a_killed_attempts_time(tmp_path):
    """An attempt killed with SIGKILL leaves its time on disk (to within the clock's period); the next
    attempt adds its own to it."""
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "run" / "run_time.json"
    code = ("import sys, time; from echorl.study.runner import RunClock; "
            f"c = RunClock({str(path)!r}, every=0.1).__enter__(); print('up', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "up"
    t0 = time.time()
    time.sleep(1.0)
    p.send_signal(signal.SIGKILL)
    p.wait()
    lived = time.time() - t0
    (killed,) = json.loads(path.read_text())["attempts"]
    assert lived - 0.35 <= killed <= lived + 0.35
    with RunClock(path, every=0.05) as clock:
        time.sleep(0.3)
        # while the attempt runs, its entry grows beside the killed one's
        assert json.loads(path.read_text())["attempts"][0] == killed
        assert 0.1 <= json.loads(path.read_text())["attempts"][1] <= 0.35
    assert clock.attempts == 2
    first, second = json.loads(path.read_text())["attempts"]
    assert first == killed and 0.3 <= second < 0.6
    assert clock.total() == pytest.approx(killed + second, abs=0.15)


def test_first_window_diffs_by_hand():
    committed = {"curves": {"step": [2], "reward": [0.5], "entropy": [0.25], "s_per_step": [9.0], "clips": [None]},
                 "val": {"step": [0, 2], "dev": [0.4, 0.6]}}
    rows = [{"step": 0, "val-core/dev/reward/mean@2": 0.4},
            {"step": 1, "reward/mean": 0.25, "actor/entropy": 0.25, "timing_s/step": 1.0},
            {"step": 2, "reward/mean": 0.75, "actor/entropy": 0.35, "timing_s/step": 3.0}]
    got = {d["key"]: d for d in first_window_diffs(committed, rows, window=2)}
    assert set(got) == {"reward", "entropy", "val dev @0"}  # timings and keys the replay lacks are left out
    assert got["reward"]["now"] == 0.5 and got["reward"]["abs_diff"] == 0.0
    assert got["entropy"]["now"] == pytest.approx(0.3) and got["entropy"]["abs_diff"] == pytest.approx(0.05)
    assert got["val dev @0"]["abs_diff"] == 0.0


def test_estimate_left_by_hand(tmp_path):
    s = dataclasses.replace(QUICK, steps=150)
    a, b = get_arms(["grpo", "echorl"])
    for k, wall in ((1, 100.0), (2, 300.0)):  # finished: median 200 s (one of them timed over two attempts)
        p = result_path(tmp_path / "res", "grpo", k)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"wall_s": 50.0, "wall_s_attempts": wall} if k == 2 else {"wall_s": wall}))
    ck = tmp_path / "runs" / "echorl" / "seed1" / "checkpoints"
    ck.mkdir(parents=True)
    (ck / "latest_checkpointed_iteration.txt").write_text("75\n")  # half done
    est = estimate_left([(b, 1), (b, 2), (a, 3)], [(a, 1), (a, 2)], s, tmp_path / "res", tmp_path / "runs")
    assert est == {"median_s": 200.0, "runs_left": 3.0, "partly_done": 1.0, "seconds_left": 2.5 * 200.0}
    assert math.isnan(estimate_left([(a, 3)], [], s, tmp_path / "res", tmp_path / "runs")["seconds_left"])


def test_run_wall_s_prefers_every_attempts_time():
    assert run_wall_s({"wall_s": 10.0, "wall_s_attempts": 25.5}) == 25.5
    assert run_wall_s({"wall_s": 10.0, "wall_s_attempts": None}) == 10.0  # resumed before the clock existed
    assert run_wall_s({"wall_s": 10.0}) == 10.0


@pytest.mark.slow
def test_real_two_step_run_writes_the_result_file(tmp_path):
    """Two real training steps of the `echorl` arm (tiny model on level-1 arithmetic, where groups
    succeed, so EchoClips exist), engine validation on chain dev, final evaluation, result file."""
    res = run_one(get_arms(["echorl"])[0], 1, TINY, tmp_path / "res", tmp_path / "runs", window=1)
    on_disk = json.loads(result_path(tmp_path / "res", "echorl", 1).read_text())
    assert on_disk == json.loads(json.dumps(res))
    assert {"schema", "arm", "seed", "overrides", "settings", "git_commit", "steps", "wall_s", "train_s", "eval_s",
            "s_per_step", "final", "curves", "val", "eval", "per_problem"} <= set(res)
    assert (res["schema"], res["arm"], res["seed"], res["steps"]) == (SCHEMA, "echorl", 1, 2)
    import torch
    assert res["machine"]["torch"] == torch.__version__
    assert res["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability() != ""
    assert res["machine"]["cpu"]  # the processor's name
    # one attempt: its time is the run's, to within the clock's last write after the result was built
    assert res["attempts"] == 1 and res["resumed"] is False
    assert res["wall_s"] <= res["wall_s_attempts"] <= res["wall_s"] + 5
    assert json.loads((tmp_path / "runs/echorl/seed1/run_time.json").read_text())["attempts"][0] >= res["wall_s_attempts"]
    assert res["val"]["step"] == [0, 1, 2] and res["curves"]["step"] == [1, 2]
    f = res["final"]
    for k in ("test_avg", "ood_avg", "dev_avg", "entropy", "all_success_frac", "clips", "grad_echo_share", "s_per_step"):
        assert isinstance(f[k], float), k
    assert set(f["pass@k"]) == {"1", "2", "4"}
    assert len(res["per_problem"]["test"]) == 6 and max(res["per_problem"]["passk"]) <= 4
    assert res["eval"]["test"]["n"] == 2 and res["eval"]["ood"]["group"] == "ood"
    assert f["clips"] > 0 and 0 < f["grad_echo_share"] < 1 and f["grad_norm_echo"] > 0
    metrics = [json.loads(x) for x in (tmp_path / "runs/echorl/seed1/metrics.jsonl").read_text().splitlines()]
    assert [m["study/grad_norm_echo"] > 0 for m in metrics if "study/grad_norm_echo" in m] == [True, True]
    assert res["curves"]["clips"] == [m["echo/clips"] for m in metrics if m["step"] >= 1]
    # the same two steps replayed (scripts/study_reproduce.py) give every curve and validation exactly,
    # validations after each step included (TINY validates at every step)
    rows = replay_steps(get_arms(["echorl"])[0], 1, TINY, tmp_path / "replay", 2)
    assert [r["step"] for r in rows] == [0, 1, 2]
    diffs = first_window_diffs(res, rows, window=1)
    assert {d["key"] for d in diffs} >= {"reward", "entropy", "clips", "grad_norm", "echo_loss", "val dev @0"}
    assert [d["key"] for d in diffs if d["abs_diff"] != 0.0] == []
    assert summarize_run(rows, window=1)["val"]["dev"] == res["val"]["dev"]


@pytest.mark.slow
def test_jobs_runs_two_at_once_commits_each_and_resumes(tmp_path, capsys):
    """``--jobs 2`` on two tiny runs (2 steps, test/ood also at step 1): each run in its own process
    with one torch thread, both started before either finished, each result committed on its own into
    the repository that holds the results folder, and a second call finds nothing left to run."""
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    for a in (["init", "-q"], ["config", "user.email", "t@t"], ["config", "user.name", "t"]):
        subprocess.run(["git", *a], cwd=repo, check=True)
    s = dataclasses.replace(TINY, name="tiny", folder=str(repo / "res"), eval_steps=(1,))
    spec = tmp_path / "settings.json"
    spec.write_text(json.dumps(s.to_dict()))
    argv = ["--settings-json", str(spec), "--arms", "grpo,echorl", "--seeds", "1", "--jobs", "2", "--commit",
            "--runs-dir", str(tmp_path / "runs")]
    assert _script().main(argv) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("=== ")]
    assert [ln.split(" (")[0] for ln in lines[:2]] == ["=== grpo seed 1 started", "=== echorl seed 1 started"]
    for arm in ("grpo", "echorl"):
        res = json.loads(result_path(repo / "res", arm, 1).read_text())
        assert res["threads"] == 1 and res["steps"] == 2
        ck = res["checkpoints"]
        assert ck["step"] == [1, 2] and ck["test_avg"][-1] == res["final"]["test_avg"]
        assert res["final"]["test_ckpt"] == pytest.approx(sum(ck["test_avg"]) / 2)
        assert (tmp_path / "runs" / arm / "seed1.log").exists()
    log = subprocess.run(["git", "log", "--format=%s"], cwd=repo, capture_output=True, text=True).stdout
    assert sum("study (tiny): grpo seed 1:" in x for x in log.splitlines()) == 1
    assert sum("study (tiny): echorl seed 1:" in x for x in log.splitlines()) == 1
    assert (repo / "res" / "report.md").exists()
    assert _script().main(argv) == 0
    assert "2 runs done, 0 to run" in capsys.readouterr().out
