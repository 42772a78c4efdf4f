"""The zero-variance competitors' addendum (results/confirm/PLAN_competitors.md): its arm table, the
56 planned runs, the engine's start-up checks of every arm, and the report's families by hand."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from echorl.study.arms import (
    COMPETITOR_ARMS,
    COMPETITOR_SHARED,
    COMPETITORS,
    CONFIRM,
    CONFIRM_ARMS,
    CONFIRM_SEEDS,
    STUDIES,
    arms_of,
    compose,
    get_arms,
)
from echorl.study.competitors import criteria_lines, family_rows, write_competitors_report, zero_variance_share
from echorl.study.report import load_results
from echorl.study.runner import SCHEMA, plan_runs, result_path

ROOT = Path(__file__).resolve().parents[2]

EXPECTED = {  # arm -> (echorl enable, coef, keep_filtered, filter_groups, clip high, method, method option)
    "dapo": (False, 1e-3, False, True, 0.28, "grpo", None),
    "dapo_echorl_kf": (True, 0.03, True, True, 0.28, "grpo", None),
    "rl_zvp": (False, 1e-3, False, False, 0.2, "rl_zvp", 0.1),
    "forking": (False, 1e-3, False, False, 0.2, "forking", 0.2),
}


def test_table_settings_and_the_56_planned_runs():
    assert [a.name for a in COMPETITOR_ARMS] == list(EXPECTED) and arms_of(COMPETITORS) == COMPETITOR_ARMS
    assert STUDIES["competitors"] == COMPETITORS
    assert {**COMPETITORS.to_dict(), "name": "confirm"} == CONFIRM.to_dict()  # the confirmatory settings and folder
    assert all(a.seeds == len(CONFIRM_SEEDS) for a in COMPETITOR_ARMS)
    confirm_names = {a.name for a in CONFIRM_ARMS}
    assert set(COMPETITOR_SHARED.values()) <= confirm_names and not confirm_names & set(EXPECTED)
    todo, done = plan_runs(COMPETITOR_ARMS, COMPETITORS, "/nonexistent")
    assert done == [] and len(todo) == 56
    got = [(a.name, k) for a, k in todo]
    assert got[:4] == [("dapo", 101), ("dapo_echorl_kf", 101), ("dapo", 102), ("dapo_echorl_kf", 102)]
    assert got[28:30] == [("rl_zvp", 101), ("forking", 101)] and got[-1] == ("forking", 114)


def test_shared_arms_are_the_confirmatory_configs():
    """positive_nll = rule_nll_full: the preset with the plan's coef composes to the same EchoConfig."""
    from echorl.local.config import build_echo_config, load_config

    rule = get_arms(["rule_nll_full"], CONFIRM_ARMS)[0]
    a = build_echo_config(compose(rule, 101, CONFIRM, "/tmp/x"))
    b = build_echo_config(load_config(["echorl.preset=positive_nll", "echorl.coef=0.11"], config_name="testbed"))
    assert (a.scope, a.per, a.selector, a.loss_agg, a.coef) == (b.scope, b.per, b.selector, b.loss_agg, b.coef)


@pytest.mark.parametrize("arm", list(EXPECTED))
def test_every_arm_passes_the_engines_startup_checks(arm, tmp_path):
    from echorl.local.config import (
        build_actor_config,
        build_algo_config,
        build_echo_config,
        build_method_config,
        validate,
    )
    from echorl.local.dynamic_sampling import filter_config
    from echorl.methods.config import check_combination

    a = get_arms([arm], COMPETITOR_ARMS)[0]
    cfg = compose(a, 101, COMPETITORS, str(tmp_path / "run"))
    actor = build_actor_config(cfg)
    build_algo_config(cfg)
    validate(cfg, actor)
    echo = build_echo_config(cfg)
    method = build_method_config(cfg)
    filt = filter_config(cfg, echo, method.uses_expert_data)
    check_combination(method, echo, filter_groups=filt.enable, entropy_in_update=True, actor=actor)
    option = {"rl_zvp": method.rl_zvp.alpha, "forking": method.forking.rho}.get(method.name)
    got = (echo.enable, echo.coef, echo.keep_filtered, filt.enable, actor.clip_ratio_high, method.name, option)
    assert got == EXPECTED[arm]
    assert (cfg.seed, cfg.data.seed, cfg.trainer.total_training_steps) == (101, 101, 150)
    assert (cfg.data.train_batch_size, cfg.actor_rollout_ref.rollout.n, cfg.actor_rollout_ref.rollout.temperature) \
        == (16, 8, 1.0)


@pytest.mark.parametrize("arm", ["rl_zvp", "forking"])
def test_the_entropy_arms_train_a_step_as_the_study_runs_them(arm, tmp_path):
    """The study wraps the engine's loss to measure gradient shares: the wrapper must still have the
    update forward compute the token entropy RL-ZVP and the forking rule read (one step, measured)."""
    import dataclasses

    from echorl.study.runner import study_trainer

    s = dataclasses.replace(COMPETITORS, steps=1, eval_steps=(), grad_share_every=1)
    tr, _ = study_trainer(get_arms([arm], COMPETITOR_ARMS)[0], 101, s, tmp_path / "run")
    try:
        assert tr.method.cfg.needs_entropy is True and type(tr.loss_fn.inner).__name__ == "EntropyMethodLoss"
        m = tr.step()
    finally:
        tr.pool.close()
    key = {"rl_zvp": "actor/rl_zvp/pos_frac", "forking": "actor/forking/kept_frac"}[arm]
    assert key in m and 0.0 <= m[key] <= 1.0
    assert m["actor/pg_loss"] == m["actor/pg_loss"]  # a number, not NaN


def test_cli_dry_run_lists_the_56_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("study_script", ROOT / "scripts" / "study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--study", "competitors", "--dry-run", "--folder", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("0 runs done, 56 to run: dapo/seed101, dapo_echorl_kf/seed101, dapo/seed102")


def _fake(folder: Path, arm: str, seed: int, test_ckpt: float):
    p = result_path(folder, arm, seed)
    p.parent.mkdir(parents=True, exist_ok=True)
    f = {"test_avg": test_ckpt, "ood_avg": 0.3, "test_ckpt": test_ckpt, "ood_ckpt": 0.3, "pass@k": {"1": 0.5},
         "s_per_step": 1.0}
    p.write_text(json.dumps({"schema": SCHEMA, "arm": arm, "seed": seed, "final": f, "wall_s": 100.0, "threads": 1}))


def test_report_families_by_hand(tmp_path):
    g = {101: 0.80, 102: 0.82, 103: 0.84}
    for k, v in g.items():
        _fake(tmp_path, "grpo", k, v)
        _fake(tmp_path, "coef_3e-2", k, v + 0.02)
        _fake(tmp_path, "rule_nll_full", k, v + 0.01)  # the plan's positive_nll
        _fake(tmp_path, "rl_zvp", k, v + {101: .01, 102: .03, 103: .02}[k])  # d vs grpo = 1, 3, 2 points
    results = load_results(tmp_path)
    comp = family_rows(results, "competitors", "test_ckpt")
    assert [(c["arm"], c["vs"]) for c in comp] == [("rl_zvp", "grpo"), ("positive_nll", "grpo")]  # no forking runs
    # rl_zvp: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 3.4641, df 2 -> p = 0.0741799; positive_nll: d = 1, 1, 1 -> p 0;
    # Holm m = 2: 2 * 0 and 1 * 0.0742
    assert comp[0]["d"]["mean"] == pytest.approx(0.02) and comp[0]["d"]["p"] == pytest.approx(0.07417990022744853)
    assert comp[0]["p_holm"] == pytest.approx(0.07417990022744853) and comp[1]["p_holm"] == 0.0
    assert [c["verdict"] for c in comp] == ["no detectable difference", "gain"]
    h2h = family_rows(results, "head_to_head", "test_ckpt")
    assert [(c["arm"], c["vs"]) for c in h2h] == [("coef_3e-2", "rl_zvp"), ("coef_3e-2", "positive_nll")]
    assert h2h[1]["d"]["mean"] == pytest.approx(0.01)  # coef_3e-2 - rule_nll_full = 2 - 1 points (as fractions)
    assert family_rows(results, "dapo", "test_ckpt") == []
    md = write_competitors_report(tmp_path, tmp_path / "report_competitors.md")
    assert "| positive_nll | 3/14 | 104,105,106,107,108,109,110,111,112,113,114 |" in md
    assert "| forking | 0/14 |" in md and "`positive_nll` = `rule_nll_full`" in md
    # 12 of the plan's 4 new + 4 shared arms x 14 seeds: the comparisons give no verdict yet
    assert "**Interim: 12 of 112 planned runs are in.**" in md
    # compute counts only the new arms' runs (rl_zvp's 3 x 100 s); the shared arms' is the confirmatory report's
    assert "Compute of the new arms (the shared arms' is the confirmatory report's): 3 runs, 0.08 h" in md
    assert "| rl_zvp | grpo | 3 | +2.0 [-0.5, +4.5] | 0.074 | 0.074 | interim: 3 of 14 pairs, no verdict |" in md
    # observed paired SD: competitors d = [1,3,2] (rl_zvp) and [1,1,1] (positive_nll) -> ss 2 / df 4 -> 0.71;
    # head_to_head d = [1,-1,0] and [1,1,1] -> 0.71; m = 3 in both
    assert "| competitors | 2 | 0.71 | 4 | 0.0167 |" in md and "| head_to_head | 2 | 0.71 | 4 | 0.0167 |" in md
    assert "## The plan's criteria\n\nRead once every planned run is in." in md


def test_report_reads_the_plans_criteria_once_complete(tmp_path):
    """Every planned run in: rl_zvp is +1 point over GRPO on every seed, every other arm equals GRPO."""
    from echorl.study.runner import seeds_for
    for a in CONFIRM_ARMS + COMPETITOR_ARMS:
        for k in seeds_for(a, CONFIRM):
            _fake(tmp_path, a.name, k, 0.80 + (k % 3) / 100 + (0.01 if a.name == "rl_zvp" else 0.0))
    md = write_competitors_report(tmp_path, tmp_path / "report_competitors.md")
    assert "Interim" not in md
    assert "- **`rl_zvp` over GRPO** (+1.0 [+1.0, +1.0]): a Holm-significant gain over GRPO." in md
    assert "- **`forking` over GRPO** (+0.0 [+0.0, +0.0]): no gain of 2 points or more over GRPO on this testbed." in md
    assert "- **Against EchoRL's premise**: holds: `rl_zvp` (-1.0 [-1.0, -1.0]) Holm-significantly better than " \
           "`coef_3e-2`." in md
    assert "- **For EchoRL over a competitor** (`coef_3e-2` Holm-significantly better): none." in md
    assert "`head_to_head` (`coef_3e-2 - positive_nll`) +0.0 [+0.0, +0.0], no detectable difference; PLAN.md's " \
           "`rule` (`rule_nll_full - coef_3e-2`) +0.0 [+0.0, +0.0], no detectable difference." in md
    assert "- **DAPO** (`dapo_echorl_kf - dapo`, +0.0 [+0.0, +0.0]): no effect of 2 points" in md
    assert "![The primary endpoint's paired differences](images/competitors_primary.png)" in md
    assert (tmp_path / "images" / "competitors_primary.png").read_bytes()[:4] == b"\x89PNG"


def _row(arm: str, vs: str, mean: float, lo: float, hi: float, verdict: str) -> dict:
    return {"arm": arm, "vs": vs, "d": {"n": 14, "mean": mean, "t_low": lo, "t_high": hi}, "verdict": verdict}


def test_plan_criteria_by_hand():
    nd = "no detectable difference"
    fams = {"competitors": [_row("rl_zvp", "grpo", 0.01, -0.01, 0.03, nd),
                            _row("forking", "grpo", -0.03, -0.05, -0.01, "loss"),
                            _row("positive_nll", "grpo", 0.0, -0.01, 0.01, nd)],
            "head_to_head": [_row("coef_3e-2", r, 0.0, -0.015, 0.015, nd) for r in ("rl_zvp", "forking", "positive_nll")],
            "dapo": [_row("dapo_echorl_kf", "dapo", 0.03, 0.01, 0.05, "gain")]}
    dose = [_row(a, "grpo", 0.0, -0.01, 0.01, nd) for a in ("coef_1e-3", "coef_3e-3", "coef_1e-2", "coef_3e-2")]

    def read(dose):
        return "\n".join(criteria_lines(fams, dose, []))

    md = read(dose)
    assert "- **`rl_zvp` over GRPO** (+1.0 [-1.0, +3.0]): no significant gain, inconclusive at 2 points" in md
    assert "- **`forking` over GRPO** (-3.0 [-5.0, -1.0]): no gain of 2 points or more over GRPO on this testbed " \
           "(a Holm-significant loss)." in md
    # every head-to-head interval inside (-2, +2) and no EchoRL gain in the dose family
    assert "- **Against EchoRL's premise**: holds: every head-to-head interval lies inside (-2, +2) and PLAN.md's " \
           "dose family finds no EchoRL gain" in md
    assert "Positive NLL" not in md  # PLAN.md's rule family has no row
    assert "+3.0 [+1.0, +5.0]): counts for EchoRL on all-success groups under dynamic sampling" in md
    dose[3] = _row("coef_3e-2", "grpo", 0.03, 0.01, 0.05, "gain")
    assert "does not hold: no competitor is better than `coef_3e-2`, and PLAN.md's dose family finds an EchoRL " \
           "gain." in read(dose)
    dose[3] = _row("coef_3e-2", "grpo", 0.03, 0.01, 0.05, "interim: 9 of 14 pairs, no verdict")
    assert "the reading waits for PLAN.md's dose family" in read(dose)
    fams["head_to_head"][2] = _row("coef_3e-2", "positive_nll", 0.03, 0.01, 0.05, "gain")
    fams["dapo"] = [_row("dapo_echorl_kf", "dapo", -0.03, -0.05, -0.01, "loss")]
    md = read(dose)
    assert "- **For EchoRL over a competitor** (`coef_3e-2` Holm-significantly better): `positive_nll` " \
           "(+3.0 [+1.0, +5.0])." in md
    assert "does not hold: no competitor is better than `coef_3e-2`, and not every head-to-head interval" in md
    assert "counts against using `keep_filtered` (a Holm-significant loss)." in md
    fams["dapo"] = [_row("dapo_echorl_kf", "dapo", 0.01, -0.01, 0.03, nd)]
    assert "no significant difference, inconclusive at 2 points." in read(dose)


def test_plan_criteria_read_family_by_family():
    """The DAPO pairs run first: their criterion is read while the other families are still incomplete;
    a family with a comparison still interim (or missing) is not read; none complete, nothing is read."""
    nd = "no detectable difference"
    interim = "interim: 9 of 14 pairs, no verdict"
    fams = {"competitors": [_row(a, "grpo", 0.0, -0.01, 0.01, interim) for a in ("rl_zvp", "forking", "positive_nll")],
            "head_to_head": [_row("coef_3e-2", "rl_zvp", 0.0, -0.01, 0.01, nd)],  # two comparisons missing
            "dapo": [_row("dapo_echorl_kf", "dapo", 0.005, -0.01, 0.015, nd)]}
    md = "\n".join(criteria_lines(fams, [], []))
    assert "Read once every planned run is in." not in md
    assert "- **DAPO** (`dapo_echorl_kf - dapo`, +0.5 [-1.0, +1.5]): no effect of 2 points" in md
    assert "- Each competitor over GRPO: read once the `competitors` family's planned runs are all in." in md
    assert "- EchoRL's premise and EchoRL over a competitor: read once the `head_to_head` family's" in md
    assert "over GRPO** (" not in md and "Against EchoRL's premise**" not in md
    fams["dapo"][0]["verdict"] = interim
    assert criteria_lines(fams, [], []) == ["## The plan's criteria", "", "Read once every planned run is in.", ""]


def test_zero_variance_share_by_hand(tmp_path):
    run = {"curves": {"all_success_frac": [0.5, 0.25, None], "all_fail_frac": [0.1, 0.15, 0.2]}}
    assert zero_variance_share(run) == pytest.approx((0.6 + 0.4) / 2)  # the window without both is left out
    assert zero_variance_share({"curves": {}}) is None
    # in the report: DAPO's generation batches per step, 1 for an arm without dynamic sampling
    for k, (zv, gen) in {101: (0.5, 1.5), 102: (0.7, 2.5)}.items():
        _fake(tmp_path, "dapo", k, 0.8)
        p = result_path(tmp_path, "dapo", k)
        r = json.loads(p.read_text())
        r["curves"] = {"all_success_frac": [zv / 2, zv / 2], "all_fail_frac": [zv / 2, zv / 2]}
        r["final"]["gen_batches"] = gen
        p.write_text(json.dumps(r))
        _fake(tmp_path, "grpo", k, 0.8)
    md = write_competitors_report(tmp_path, tmp_path / "r.md")
    assert "| dapo | 2 | 80.0 ± 0.0 | 80.0 ± 0.0 | 30.0 ± 0.0 | 60.0 ± 14.1 | 2.00 ± 0.71 | 1.00 ± 0.00 |" in md
    assert "| grpo | 2 | 80.0 ± 0.0 | 80.0 ± 0.0 | 30.0 ± 0.0 | - | 1 | 1.00 ± 0.00 |" in md
