"""The verl.plugins entry point: verl loads it in the driver and inside a real Ray worker; the entry
point's wiring check passes here and fails loudly when verl is told not to load plugins."""

from __future__ import annotations

import os
import subprocess
import sys

from echorl.verl import plugin


def test_plugin_loads_inside_a_ray_worker(ray_session):
    """A fresh Ray worker imports ``echorl.main`` (which imports verl first): verl's own import
    must have loaded and registered the plugin there, and the full wiring check must pass."""
    from echorl.main import check_wiring

    assert plugin.declared_entry_point() == "echorl.verl.plugin:register"
    remote = ray_session.remote(num_cpus=1)(check_wiring)
    found = ray_session.get(remote.remote(), timeout=180)
    assert found["loaded_by_verl"] is True
    assert found["entry_point"] == "echorl.verl.plugin:register"
    assert found["verl_version"] == "0.9.1"


def test_wiring_check_passes_in_the_driver():
    from echorl.main import check_wiring

    found = check_wiring()
    assert found["loaded_by_verl"] is True
    assert found["trainer"] == "echorl.verl.trainer.EchoPPOTrainerSync"


def test_wiring_check_fails_loudly_without_plugins():
    code = ("import echorl.main as m\n"
            "try:\n    m.check_wiring()\nexcept m.WiringError as e:\n    print('REFUSED', e)\n")
    env = {**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "none"}
    env.pop("VERL_USE_EXTERNAL_MODULES", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-2000:]
    assert last.startswith("REFUSED verl did not load EchoRL's plugin"), last
    assert "VERL_USE_EXTERNAL_MODULES=echorl.verl.plugin" in last
    # the documented fallback works
    env["VERL_USE_EXTERNAL_MODULES"] = "echorl.verl.plugin"
    code_ok = "import echorl.main as m\nprint('OK', m.check_wiring()['loaded_by_verl'])\n"
    out = subprocess.run([sys.executable, "-c", code_ok], capture_output=True, text=True, timeout=180, env=env)
    assert out.stdout.strip().splitlines()[-1] == "OK True", out.stderr[-2000:]


def test_task_runner_is_verls_with_echorl_trainer():
    from verl.trainer.main_ppo import TaskRunnerV1

    from echorl.main import EchoTaskRunner, EchoTaskRunnerActor

    assert issubclass(EchoTaskRunner, TaskRunnerV1.__ray_actor_class__)
    assert EchoTaskRunner.init_agent_loop_manager is TaskRunnerV1.__ray_actor_class__.init_agent_loop_manager
    assert hasattr(EchoTaskRunnerActor, "remote")


def test_echorl_config_launched_with_verls_main_ppo_is_refused():
    """verl's own entry point with EchoRL on would train plain verl: the plugin's guard stops it
    before Ray starts, naming the fix."""
    proc = subprocess.run(
        [sys.executable, "-m", "verl.trainer.main_ppo", "hydra.searchpath=[pkg://echorl.config]", "+echorl.enable=true"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )
    assert proc.returncode != 0
    assert "PlainVerlLaunchError" in proc.stderr and "python -m echorl.main" in proc.stderr, proc.stderr[-2000:]
    assert "ray init kwargs" not in proc.stdout  # refused before Ray


def test_guard_wraps_verls_auto_set_device_and_lets_echorls_launcher_through(echorl_cfg):
    import copy

    import pytest
    from verl.utils import device

    assert plugin.guard_status() == "ok" and getattr(device.auto_set_device, "__echorl__", False)
    cfg = copy.deepcopy(echorl_cfg)
    with pytest.raises(plugin.PlainVerlLaunchError, match=r"echorl\.enable=true.*main_ppo.*echorl\.enable=false"):
        device.auto_set_device(cfg)
    with plugin.echorl_launch():
        device.auto_set_device(cfg)  # verl's own function ran
    cfg.echorl.enable = False
    device.auto_set_device(cfg)  # the base method may use verl's entry point
