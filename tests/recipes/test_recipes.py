"""Every YAML of recipes/ and echorl/config/ composes with real Hydra and instantiates verl's real
config dataclasses; every shell script parses; every launch script's command has the right overrides."""

from __future__ import annotations

import copy
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
CONFIG = ROOT / "echorl" / "config"
METHODS = ["cispo", "dapo", "drgrpo", "forking", "grpo", "gspo", "luffy", "positive_nll", "reinforce_pp", "rl_zvp",
           "rloo", "uft"]
ECHO_REFUSED = {"forking"}  # recipes whose method is not combined with EchoRL (refused at start-up)
# recipes that set EchoRL options of their own (the rest keep EchoConfig's defaults)
ECHO_OPTIONS = {"positive_nll": {"preset": "positive_nll", "loss_agg": "clip_token_mean", "coef": 0.1}}
SEARCHPATH = f"hydra.searchpath=[pkg://verl.trainer.config,file://{RECIPES}]"

# What each recipe must set: dotted key -> value, checked on the composed config and, for actor
# keys, on verl's instantiated actor dataclass.
PAPER = {
    "data.train_batch_size": 128, "actor_rollout_ref.rollout.n": 8, "data.max_prompt_length": 1024,
    "data.max_response_length": 8192, "actor_rollout_ref.actor.optim.lr": 1e-6,
    "actor_rollout_ref.actor.use_kl_loss": False, "algorithm.use_kl_in_reward": False,
    "actor_rollout_ref.rollout.temperature": 1.0, "actor_rollout_ref.rollout.val_kwargs.temperature": 0.6,
    "actor_rollout_ref.model.path": "Qwen/Qwen2.5-Math-7B", "actor_rollout_ref.actor.entropy_coeff": 0,
    "reward.custom_reward_function.path": "pkg://echorl.rewards.math",
    "reward.custom_reward_function.name": "compute_score",
    "algorithm.filter_groups.enable": False,
}
CLIP = {"actor_rollout_ref.actor.clip_ratio_low": 0.2, "actor_rollout_ref.actor.clip_ratio_high": 0.2}
VANILLA = {"actor_rollout_ref.actor.policy_loss.loss_mode": "vanilla",
           "actor_rollout_ref.actor.loss_agg_mode": "token-mean"}
EXPECTED = {
    "grpo": {**CLIP, **VANILLA, "algorithm.adv_estimator": "grpo", "algorithm.norm_adv_by_std_in_grpo": True},
    "drgrpo": {**CLIP, "algorithm.adv_estimator": "grpo", "algorithm.norm_adv_by_std_in_grpo": False,
               "actor_rollout_ref.actor.policy_loss.loss_mode": "vanilla",
               "actor_rollout_ref.actor.loss_agg_mode": "seq-mean-token-sum-norm",
               "actor_rollout_ref.actor.loss_scale_factor": 8192},
    "dapo": {**VANILLA, "algorithm.adv_estimator": "grpo", "actor_rollout_ref.actor.clip_ratio_low": 0.2,
             "actor_rollout_ref.actor.clip_ratio_high": 0.28, "reward.reward_manager.name": "dapo",
             "reward.reward_kwargs.max_resp_len": 8192, "reward.reward_kwargs.overlong_buffer_cfg.enable": True,
             "reward.reward_kwargs.overlong_buffer_cfg.len": 1024,
             "algorithm.filter_groups.enable": True, "algorithm.filter_groups.metric": "acc"},
    "gspo": {"algorithm.adv_estimator": "grpo", "actor_rollout_ref.actor.policy_loss.loss_mode": "gspo",
             "actor_rollout_ref.actor.loss_agg_mode": "seq-mean-token-mean",
             "actor_rollout_ref.actor.clip_ratio_low": 3e-4, "actor_rollout_ref.actor.clip_ratio_high": 4e-4},
    "rloo": {**CLIP, **VANILLA, "algorithm.adv_estimator": "rloo"},
    "reinforce_pp": {**CLIP, **VANILLA, "algorithm.adv_estimator": "reinforce_plus_plus_baseline"},
    "luffy": {**CLIP, "algorithm.adv_estimator": "grpo", "algorithm.norm_adv_by_std_in_grpo": False,
              "actor_rollout_ref.actor.policy_loss.loss_mode": "vanilla",
              "actor_rollout_ref.actor.loss_agg_mode": "seq-mean-token-sum-norm",
              "actor_rollout_ref.actor.loss_scale_factor": 128, "actor_rollout_ref.actor.entropy_coeff": 0.001,
              "actor_rollout_ref.rollout.agent.default_agent_loop": "luffy_agent", "method.name": "luffy",
              "method.luffy.num_off_policy": 1, "method.luffy.gamma": 0.1, "method.luffy.max_target_length": 8192},
    "uft": {**CLIP, **VANILLA, "algorithm.adv_estimator": "grpo", "algorithm.norm_adv_by_std_in_grpo": True,
            "actor_rollout_ref.rollout.agent.default_agent_loop": "uft_agent", "method.name": "uft",
            "method.uft.hint_steps": 300, "method.uft.lower_prob": 0.05, "method.uft.upper_prob": 0.95,
            "method.uft.max_segments": 5, "method.uft.coef": 0.001, "method.uft.segments": "uft",
            "method.uft.score_hint": False, "actor_rollout_ref.actor.use_kl_loss": True,
            "actor_rollout_ref.actor.kl_loss_coef": 0.001, "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",
            "actor_rollout_ref.actor.entropy_coeff": 0.001},
    "rl_zvp": {**CLIP, **VANILLA, "algorithm.adv_estimator": "grpo", "algorithm.norm_adv_by_std_in_grpo": True,
               "actor_rollout_ref.actor.calculate_entropy": True, "method.name": "rl_zvp", "method.rl_zvp.alpha": 0.1,
               "method.rl_zvp.positive_above": 0.0},
    "forking": {**CLIP, **VANILLA, "algorithm.adv_estimator": "grpo", "algorithm.norm_adv_by_std_in_grpo": True,
                "actor_rollout_ref.actor.calculate_entropy": True, "method.name": "forking", "method.forking.rho": 0.2},
    "positive_nll": {**CLIP, **VANILLA, "algorithm.adv_estimator": "grpo", "algorithm.norm_adv_by_std_in_grpo": True,
                     "echorl.preset": "positive_nll", "echorl.loss_agg": "clip_token_mean", "echorl.coef": 0.1},
    "cispo": {"algorithm.adv_estimator": "grpo", "actor_rollout_ref.actor.policy_loss.loss_mode": "cispo",
              "actor_rollout_ref.actor.loss_agg_mode": "token-mean",
              "actor_rollout_ref.actor.clip_ratio_low": 1.0, "actor_rollout_ref.actor.clip_ratio_high": 0.2},
}


def _compose(config_name: str, overrides: list[str]):
    with initialize_config_module(config_module="echorl.config", version_base=None):
        return compose(config_name=config_name, overrides=overrides)


def compose_recipe(method: str, echo: str = "on", extra: list[str] | None = None):
    """The recipe's config exactly as scripts/launch_common.sh composes it."""
    return _compose("echorl_trainer", [SEARCHPATH, f"+{method}={method}",
                                       f"echorl.enable={'true' if echo == 'on' else 'false'}", *(extra or [])])


def _yamls_on_disk() -> set[Path]:
    found = set()
    for base in (RECIPES, CONFIG):
        for dirpath, _dirs, files in os.walk(base):
            found |= {Path(dirpath) / f for f in files if f.endswith((".yaml", ".yml"))}
    return found


def test_every_yaml_is_covered():
    """Glob both ways: every YAML on disk is a recipe, the shared setting or a package config."""
    globbed = set(RECIPES.rglob("*.yaml")) | set(RECIPES.rglob("*.yml")) | set(CONFIG.rglob("*.yaml")) \
        | set(CONFIG.rglob("*.yml"))
    walked = _yamls_on_disk()
    assert globbed == walked
    covered = {RECIPES / m / f"{m}.yaml" for m in METHODS} | {RECIPES / "paper_setting.yaml"} \
        | {CONFIG / "echorl_trainer.yaml", CONFIG / "local.yaml"} \
        | {CONFIG / "cpu" / "cpu.yaml",  # composed and run in tests/verl/cpu/test_config.py
           CONFIG / "testbed.yaml"}  # composed with every study arm in tests/scripts/test_study.py
    assert walked == covered, f"untested YAMLs: {sorted(map(str, walked - covered))}; " \
                              f"missing: {sorted(map(str, covered - walked))}"
    assert sorted(p.name for p in RECIPES.iterdir() if p.is_dir()) == METHODS
    for m in METHODS:  # one config and one launch script per recipe
        assert sorted(p.name for p in (RECIPES / m).iterdir()) == sorted([f"{m}.yaml", "run.sh"])


def test_launcher_keeps_the_base_configs_search_path():
    """The launcher overrides hydra.searchpath: it must keep every entry echorl_trainer.yaml lists."""
    base = yaml.safe_load((CONFIG / "echorl_trainer.yaml").read_text())["hydra"]["searchpath"]
    launched = SEARCHPATH.split("=", 1)[1].strip("[]").split(",")
    assert set(base) <= set(launched)
    assert f"file://{RECIPES}" in launched


@pytest.mark.parametrize("method", METHODS)
def test_recipe_composes_and_instantiates_verl_dataclasses(method):
    from verl.trainer.config import AlgoConfig
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config import FSDPActorConfig, RolloutConfig

    from echorl import EchoConfig
    from echorl.verl.config_checks import validate_config

    for echo in ("on", "off"):
        cfg = compose_recipe(method, echo)
        assert cfg.echorl.enable is (echo == "on")
        actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
        assert isinstance(actor, FSDPActorConfig)
        assert isinstance(omega_conf_to_dataclass(cfg.algorithm), AlgoConfig)
        assert isinstance(omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout), RolloutConfig)
        for key, want in {**PAPER, **EXPECTED[method]}.items():
            assert OmegaConf.select(cfg, key) == want, (method, key)
            if key.startswith("actor_rollout_ref.actor."):
                obj = actor
                for part in key.split(".")[2:]:
                    obj = getattr(obj, part)
                assert obj == want, (method, key, "dataclass")
        # EchoRL's startup checks accept every recipe, with EchoRL on and off (on: refused where not combined)
        if method in ECHO_REFUSED and echo == "on":
            with pytest.raises(ValueError, match="set echorl.enable=false"):
                validate_config(cfg)
            continue
        assert validate_config(cfg) == EchoConfig(enable=echo == "on", **ECHO_OPTIONS.get(method, {}))


def test_recipes_pass_verl_validation_and_wiring_check():
    """verl's own validate_config (batch sizes vs GPUs etc.) and EchoRL's wiring check, per recipe."""
    from echorl.main import prepare

    for method in METHODS:
        echo = "off" if method in ECHO_REFUSED else "on"
        assert prepare(compose_recipe(method, echo)).enable is (echo == "on")


def test_dapo_reward_manager_reads_the_overlong_settings():
    """verl's DAPO reward manager finds the overlong buffer where the recipe puts it."""
    from verl.experimental.reward_loop.reward_manager.dapo import DAPORewardManager

    cfg = compose_recipe("dapo")
    manager = DAPORewardManager(cfg, tokenizer=None, compute_score=None)
    assert manager.max_resp_len == 8192
    assert manager.overlong_buffer_cfg.enable is True and manager.overlong_buffer_cfg.len == 1024
    assert manager.overlong_buffer_cfg.penalty_factor == 1.0


def test_echo_and_refusal_overrides_reach_the_config():
    cfg = compose_recipe("grpo", "on", ["echorl.coef=0.01", "echorl.selector=full"])
    assert (cfg.echorl.coef, cfg.echorl.selector) == (0.01, "full")
    from echorl.verl.config_checks import validate_config

    assert validate_config(copy.deepcopy(compose_recipe("dapo", "on"))).scope == "success"  # DAPO + EchoRL
    bad = compose_recipe("dapo", "on", ["echorl.preset=degenerate"])
    with pytest.raises(ValueError, match=r"filter_groups\.enable=true with echorl\.scope=degenerate would select nothing"):
        validate_config(copy.deepcopy(bad))


def test_package_configs_compose():
    """echorl/config YAMLs: the verl one (covered above through every recipe) and the local engine's."""
    for echo in ("true", "false"):
        cfg = _compose("echorl_trainer", [f"echorl.enable={echo}"])
        assert cfg.echorl.enable is (echo == "true")
        cfg = _compose("local", [f"echorl.enable={echo}"])
        assert cfg.echorl.enable is (echo == "true")
        assert OmegaConf.select(cfg, "algorithm.adv_estimator") is not None


# ---------------------------------------------------------------------------- shell scripts
def _shell_scripts() -> list[Path]:
    return sorted(set((ROOT / "scripts").rglob("*.sh")) | set(RECIPES.rglob("*.sh"))
                  | set((ROOT / "scripts").rglob("*.sbatch")))


def test_every_shell_script_parses():
    scripts = _shell_scripts()
    assert len([s for s in scripts if s.name == "run.sh"]) == len(METHODS)
    for script in scripts:
        r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, f"{script}: {r.stderr}"


def _dry_run(script: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("ECHO", "DATA_DIR", "TRAIN_FILES", "VAL_FILES",
                                                              "MODEL_PATH", "NNODES", "N_GPUS_PER_NODE",
                                                              "EXPERIMENT", "PROJECT", "PYTHON", "CKPT_DIR",
                                                              "CKPT_KEEP")}
    full.update({"DRY_RUN": "1", "HOME": "/home/u", **env})
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=full, timeout=60)


@pytest.mark.parametrize("method", METHODS)
def test_launch_script_dry_run(method):
    script = RECIPES / method / "run.sh"
    assert os.access(script, os.X_OK)
    for echo, flag in (("on", "true"), ("off", "false")):
        r = _dry_run(script, {"ECHO": echo}, "trainer.total_epochs=1", "echorl.coef=0.002")
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == [
            "python", "-m", "echorl.main", SEARCHPATH, f"+{method}={method}", f"echorl.enable={flag}",
            "data.train_files=/home/u/data/echorl/openr1_math_46k.parquet",
            "data.val_files=/home/u/data/echorl/math500.parquet",
            "actor_rollout_ref.model.path=Qwen/Qwen2.5-Math-7B", "trainer.nnodes=1", "trainer.n_gpus_per_node=8",
            "trainer.project_name=echorl", f"trainer.experiment_name={method}-echo_{echo}",
            f"trainer.default_local_dir=/home/u/checkpoints/echorl/echorl/{method}-echo_{echo}",
            "trainer.max_actor_ckpt_to_keep=3", "trainer.max_critic_ckpt_to_keep=3",
            "trainer.total_epochs=1", "echorl.coef=0.002"]


def test_launch_environment_overrides_and_errors():
    script = RECIPES / "gspo" / "run.sh"
    r = _dry_run(script, {"ECHO": "off", "DATA_DIR": "/d", "VAL_FILES": "/v.parquet", "MODEL_PATH": "/m",
                          "NNODES": "4", "N_GPUS_PER_NODE": "4", "EXPERIMENT": "x", "PYTHON": "/py"})
    lines = r.stdout.splitlines()
    assert lines[0] == "/py"
    for want in ("data.train_files=/d/openr1_math_46k.parquet", "data.val_files=/v.parquet",
                 "actor_rollout_ref.model.path=/m", "trainer.nnodes=4", "trainer.n_gpus_per_node=4",
                 "trainer.experiment_name=x", "echorl.enable=false"):
        assert want in lines
    r = _dry_run(script, {"ECHO": "yes"})
    assert r.returncode == 2 and "ECHO must be 'on' or 'off', got 'yes'" in r.stderr


def test_launch_command_composes_through_hydra_main():
    """The dry-run command, actually run with Hydra's --cfg (composes via @hydra.main, no training)."""
    r = _dry_run(RECIPES / "dapo" / "run.sh", {"ECHO": "off"})
    cmd = r.stdout.splitlines()
    cmd[0] = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else "python"
    out = subprocess.run([*cmd, "--cfg", "job", "-p", "actor_rollout_ref.actor"], capture_output=True, text=True,
                         cwd="/", timeout=240, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    actor = yaml.safe_load(out.stdout.split("\n", 1)[1])  # drop the "# @package" line
    assert actor["clip_ratio_high"] == 0.28 and actor["loss_agg_mode"] == "token-mean"
    assert actor["policy_loss"]["loss_mode"] == "vanilla"
    assert shlex.join(cmd)  # printable as one shell line


def test_ray_submit_dry_run():
    import json

    script = ROOT / "scripts" / "ray_submit.sh"
    r = _dry_run(script, {"RECIPE": "rloo", "ECHO": "off", "MODEL_PATH": "/m", "RAY_ADDRESS": "http://h:8265",
                          "NO_WAIT": "1"}, "trainer.total_epochs=2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:5] == ["ray", "job", "submit", "--address", "http://h:8265"]
    runtime_env = json.loads(lines[lines.index("# runtime env (secrets redacted):") + 1])
    assert runtime_env["working_dir"] == str(ROOT)
    assert runtime_env["env_vars"]["ECHO"] == "off" and runtime_env["env_vars"]["MODEL_PATH"] == "/m"
    command = lines[:lines.index("# runtime env (secrets redacted):")]
    assert "--no-wait" in command and "--runtime-env" in command
    assert command[command.index("--") + 1:] == ["bash", "recipes/rloo/run.sh", "trainer.total_epochs=2"]
    r = _dry_run(script, {"RECIPE": "ppo"})
    assert r.returncode == 2 and "unknown recipe 'ppo'" in r.stderr


def test_forking_launch_defaults_to_echorl_off():
    """EchoRL is refused with the forking rule, so its launcher's default is ECHO=off."""
    r = _dry_run(RECIPES / "forking" / "run.sh", {})
    assert r.returncode == 0, r.stderr
    assert "echorl.enable=false" in r.stdout.splitlines() and "+forking=forking" in r.stdout.splitlines()
