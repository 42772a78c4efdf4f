"""wandb without credentials: offline with a warning, in the driver and in verl's Ray workers; wandb's
files under the run's output folder (WANDB_DIR for every Ray worker)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from echorl.verl.launch_env import WandbOfflineWarning, netrc_has_login, wandb_dir_of_run, wandb_offline_fallback

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_wandb_login(monkeypatch, tmp_path):
    """A machine nobody logged into: no key, no mode, no WANDB_DIR, an empty HOME (also the working directory)."""
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "NETRC", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


OUT = "/shared/runs/p/exp"  # the run's output folder (trainer.default_local_dir)


def _cfg(echorl_cfg, logger, out=OUT):
    c = copy.deepcopy(echorl_cfg)
    with open_dict(c):
        c.trainer.logger = logger
        c.trainer.default_local_dir = out
    return c


def test_no_credentials_goes_offline_for_driver_and_workers(echorl_cfg, no_wandb_login):
    cfg = _cfg(echorl_cfg, ["console", "wandb"])
    assert OmegaConf.select(cfg, "ray_kwargs.ray_init.runtime_env.env_vars") is None
    with pytest.warns(WandbOfflineWarning, match=r"no WANDB_API_KEY, no WANDB_MODE and no wandb login "
                                                 r"\(api\.wandb\.ai in ~/\.netrc\).*OFFLINE.*"
                                                 r"/shared/runs/p/exp/wandb/offline-run-\*.*wandb sync"):
        assert wandb_offline_fallback(cfg) == "offline"
    assert os.environ["WANDB_MODE"] == "offline"
    assert OmegaConf.to_container(cfg.ray_kwargs.ray_init.runtime_env) == {
        "py_executable": None, "env_vars": {"WANDB_DIR": OUT, "WANDB_MODE": "offline"}}
    # a logger given as one string counts too
    os.environ.pop("WANDB_MODE")
    with pytest.warns(WandbOfflineWarning):
        assert wandb_offline_fallback(_cfg(echorl_cfg, "wandb")) == "offline"


def test_existing_worker_env_vars_are_kept(echorl_cfg, no_wandb_login):
    cfg = _cfg(echorl_cfg, ["wandb"])
    with open_dict(cfg):
        cfg.ray_kwargs.ray_init.runtime_env.env_vars = {"HF_HOME": "/shared/hf"}
    with pytest.warns(WandbOfflineWarning):
        wandb_offline_fallback(cfg)
    assert dict(cfg.ray_kwargs.ray_init.runtime_env.env_vars) == {"HF_HOME": "/shared/hf", "WANDB_DIR": OUT,
                                                                  "WANDB_MODE": "offline"}


@pytest.mark.parametrize("env", [{"WANDB_API_KEY": "k" * 40}, {"WANDB_MODE": "online"}, {"WANDB_MODE": "disabled"}])
def test_credentials_or_explicit_mode_change_nothing(echorl_cfg, no_wandb_login, monkeypatch, env, recwarn):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = _cfg(echorl_cfg, ["console", "wandb"])
    assert wandb_offline_fallback(cfg) is None
    assert os.environ.get("WANDB_MODE") == env.get("WANDB_MODE")
    # the mode is the user's; wandb's files still go under the run's output folder
    assert dict(cfg.ray_kwargs.ray_init.runtime_env.env_vars) == {"WANDB_DIR": OUT}
    assert not [w for w in recwarn if issubclass(w.category, WandbOfflineWarning)]


def test_wandb_dir_is_the_run_folder_unless_the_user_set_one(echorl_cfg, no_wandb_login, monkeypatch):
    """A relative output folder is made absolute against the driver's working directory (a Ray worker's
    would differ); a WANDB_DIR of the user's wins and is forwarded too (workers on other nodes do not
    inherit the driver's environment); nothing is created before wandb.init runs."""
    cfg = _cfg(echorl_cfg, ["wandb"], out="checkpoints/p/exp")
    assert wandb_dir_of_run(cfg) == str(no_wandb_login / "checkpoints" / "p" / "exp")
    assert cfg.ray_kwargs.ray_init.runtime_env.env_vars.WANDB_DIR == str(no_wandb_login / "checkpoints" / "p" / "exp")
    assert not (no_wandb_login / "checkpoints").exists() and "WANDB_DIR" not in os.environ
    monkeypatch.setenv("WANDB_DIR", "/scratch/wandb-files")
    cfg = _cfg(echorl_cfg, ["console", "wandb"])
    assert wandb_dir_of_run(cfg) == "/scratch/wandb-files"
    assert cfg.ray_kwargs.ray_init.runtime_env.env_vars.WANDB_DIR == "/scratch/wandb-files"
    assert wandb_dir_of_run(_cfg(echorl_cfg, ["console"])) is None
    with pytest.raises(ValueError, match="trainer.default_local_dir is empty.*or set WANDB_DIR"):
        monkeypatch.delenv("WANDB_DIR")
        wandb_dir_of_run(_cfg(echorl_cfg, ["wandb"], out=""))


def test_netrc_login_counts_for_its_host_only(echorl_cfg, no_wandb_login, monkeypatch):
    netrc = no_wandb_login / ".netrc"
    netrc.write_text("machine github.com login u password p\n")
    netrc.chmod(0o600)
    assert not netrc_has_login("api.wandb.ai")
    with pytest.warns(WandbOfflineWarning):
        assert wandb_offline_fallback(_cfg(echorl_cfg, ["wandb"])) == "offline"
    monkeypatch.delenv("WANDB_MODE")
    netrc.write_text("machine github.com login u password p\nmachine api.wandb.ai\n  login user\n  password abc123\n")
    assert netrc_has_login("api.wandb.ai")
    assert wandb_offline_fallback(_cfg(echorl_cfg, ["wandb"])) is None and "WANDB_MODE" not in os.environ
    # a self-hosted server: the login must be for WANDB_BASE_URL's host
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org:8443")
    with pytest.warns(WandbOfflineWarning, match=r"wandb\.example\.org in ~/\.netrc"):
        assert wandb_offline_fallback(_cfg(echorl_cfg, ["wandb"])) == "offline"


def test_without_wandb_logger_nothing_happens(echorl_cfg, no_wandb_login):
    cfg = _cfg(echorl_cfg, ["console", "tensorboard"])
    assert wandb_offline_fallback(cfg) is None and "WANDB_MODE" not in os.environ


def test_prepare_applies_the_fallback(echorl_cfg, no_wandb_login):
    from echorl.main import prepare

    cfg = _cfg(echorl_cfg, ["console", "wandb"])
    with pytest.warns(WandbOfflineWarning):
        prepare(cfg)
    assert os.environ["WANDB_MODE"] == "offline"
    assert cfg.ray_kwargs.ray_init.runtime_env.env_vars.WANDB_MODE == "offline"
    assert cfg.ray_kwargs.ray_init.runtime_env.env_vars.WANDB_DIR == OUT


PROBE = textwrap.dedent("""
    import json, os, sys, warnings
    import ray
    from hydra import compose, initialize_config_module
    from verl.trainer.main_ppo import run_ppo
    from echorl.verl.launch_env import wandb_offline_fallback

    OUT, RUN = sys.argv[1], sys.argv[2]  # pickled with the class (the worker's own argv differs)
    with initialize_config_module(config_module="echorl.config", version_base=None):
        cfg = compose(config_name="echorl_trainer", overrides=[
            "trainer.logger=[console,wandb]", "ray_kwargs.ray_init.num_cpus=1", f"trainer.default_local_dir={RUN}",
            "trainer.project_name=p", "trainer.experiment_name=e", "+ray_kwargs.ray_init.include_dashboard=false"])
    warnings.simplefilter("ignore")
    assert wandb_offline_fallback(cfg) == "offline"
    del os.environ["WANDB_MODE"]  # only the runtime env can carry it to the workers now

    @ray.remote(num_cpus=0)
    class Probe:
        def run(self, config):
            from omegaconf import OmegaConf
            from verl.utils.tracking import Tracking

            os.chdir(os.path.dirname(OUT))  # a working directory of its own, as a job's temporary folder
            tracker = Tracking("p", "e", default_backend=["wandb"], config=OmegaConf.to_container(config))
            tracker.log({"x": 1.0}, step=1)
            tracker.finish()
            with open(OUT, "w") as f:
                json.dump({k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_DIR")}, f)

    run_ppo(cfg, task_runner_class=Probe)
    ray.shutdown()
""")


@pytest.mark.slow
def test_offline_mode_reaches_the_task_runner_through_verls_run_ppo(tmp_path):
    """verl's own run_ppo starts Ray with the runtime env; the task runner (where verl's Tracking calls
    wandb.init) sees WANDB_MODE=offline although the driver's variable was removed, and verl's Tracking
    writes the offline run under the run's output folder, not under the runner's working directory."""
    out, run, cwd = tmp_path / "job" / "probe.json", tmp_path / "runs" / "p" / "e", tmp_path / "job"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k not in ("NETRC", "RAY_ADDRESS")}
    env.update(HOME=str(tmp_path), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", PROBE, str(out), str(run)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(out.read_text()) == {"WANDB_MODE": "offline", "WANDB_DIR": str(run)}
    runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb")), sorted(p.name for p in run.rglob("*"))
    assert not (cwd / "wandb").exists() and not (tmp_path / "wandb").exists()
