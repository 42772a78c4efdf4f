"""Run several CPU training configs of verl's V1 loop in ONE driver process and ONE Ray session.

    python tests/verl/e2e/driver.py SPEC.json

SPEC: ``{"out": folder, "num_gpus": N, "runs": [{"name", "entry", "overrides": [...]}, ...]}``.
``entry`` is how the run is launched, each exactly as its module's ``main`` does it:

* ``echorl``: ``python -m echorl.main`` (compose ``echorl_trainer``, ``prepare``, ``run_ppo`` with
  ``EchoTaskRunner``);
* ``verl``: ``python -m verl.trainer.main_ppo`` (compose verl's ``ppo_trainer`` with
  ``hydra.searchpath=[pkg://echorl.config]`` for ``+cpu=cpu``, ``auto_set_device``, verl's
  ``validate_config``, ``run_ppo`` with ``TaskRunnerV1``);
* ``echorl_verl_loss``: ``echorl`` whose trainer sends verl's own ``ppo_loss`` to the workers
  instead of EchoLoss (a worker that never reports ``echo/loss``).

Ray is started once with ``num_gpus`` logical GPUs and the runtime environment ``run_ppo`` would
build (plus ``VERL_FILE_LOGGER_ROOT=<out>/logs``: verl's file logger writes
``<out>/logs/<project>/<experiment>.jsonl``); every later ``run_ppo`` reuses it. Writes
``<out>/results.json``: per run ``ok``, ``error`` (type and message) and ``wall_s``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ["VERL_PLATFORM"] = "cpu"  # before `import verl`: the EchoRL plugin installs verl on CPU

from scenarios import compose  # noqa: E402

from echorl.main import EchoTaskRunner  # noqa: E402  (imports verl first)


class VerlLossTaskRunner(EchoTaskRunner):
    """EchoRL's task runner whose trainer installs verl's own ppo_loss (no echo/loss reported)."""

    def run(self, config):
        from functools import partial

        from verl.utils.config import omega_conf_to_dataclass
        from verl.workers.utils.losses import ppo_loss

        from echorl.verl.trainer import EchoPPOTrainerSync

        def install_verl_loss(trainer, method=False):
            actor_config = omega_conf_to_dataclass(trainer.config.actor_rollout_ref.actor)
            trainer.actor_rollout_wg.set_loss_fn(partial(ppo_loss, config=actor_config))
            return "verl ppo_loss"

        EchoPPOTrainerSync.install_echo_loss = install_verl_loss
        return super().run(config)


def init_ray(config, num_gpus: int, out: Path) -> None:
    import ray
    from omegaconf import OmegaConf
    from verl.trainer.constants_ppo import get_ppo_ray_runtime_env

    rollout = config.actor_rollout_ref.rollout
    if rollout.full_determinism:  # as run_ppo does before ray.init
        os.environ.update(VERL_FULL_DETERMINISM="1", VLLM_BATCH_INVARIANT="1", PYTHONHASHSEED=str(rollout.seed))
    env = get_ppo_ray_runtime_env(config)
    env = OmegaConf.to_container(OmegaConf.merge(env, config.ray_kwargs.ray_init.runtime_env))
    env["env_vars"].update(TRANSFER_QUEUE_ENABLE="1", VERL_FILE_LOGGER_ROOT=str(out / "logs"))
    for attempt in (1, 2):  # a busy machine can miss Ray's node start-up deadline once
        try:
            ray.init(num_cpus=int(config.ray_kwargs.ray_init.num_cpus), num_gpus=num_gpus, runtime_env=env,
                     include_dashboard=False)
            return
        except Exception:
            if attempt == 2:
                raise
            traceback.print_exc()
            ray.shutdown()


def launch(entry: str, config) -> None:
    import ray
    from verl.trainer.main_ppo import run_ppo

    if entry == "verl":
        from verl.trainer.main_ppo import TaskRunnerV1
        from verl.trainer.ppo.utils import need_critic, need_reference_policy
        from verl.utils.config import validate_config
        from verl.utils.device import auto_set_device

        auto_set_device(config)
        validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
        run_ppo(config, task_runner_class=TaskRunnerV1)
        return
    from echorl.main import EchoTaskRunnerActor, prepare

    prepare(config)
    runner = EchoTaskRunnerActor if entry == "echorl" else ray.remote(VerlLossTaskRunner)
    run_ppo(config, task_runner_class=runner)


def release_placement_groups(timeout_s: float = 120.0) -> None:
    """Remove the placement groups a finished run left (verl names its pool's group the same in every
    run; removing a group also ends the actors placed in it)."""
    from ray.util import placement_group_table
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    live = [pid for pid, info in placement_group_table().items() if info["state"] != "REMOVED"]
    for pid in live:
        remove_placement_group(PlacementGroup(ray_pg_id(pid)))
    deadline = time.time() + timeout_s
    while time.time() < deadline and any(placement_group_table()[p]["state"] != "REMOVED" for p in live):
        time.sleep(0.5)


def ray_pg_id(hex_id: str):
    from ray._raylet import PlacementGroupID

    return PlacementGroupID(bytes.fromhex(hex_id))


def main(spec_path: str) -> int:
    import ray

    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    results: dict[str, dict] = {}
    for run in spec["runs"]:
        t0 = time.perf_counter()
        print(f"=== e2e driver: run {run['name']} ({run['entry']})", flush=True)
        try:
            config = compose(run["entry"], run["overrides"])
            if not ray.is_initialized():
                init_ray(config, int(spec["num_gpus"]), out)
            launch(run["entry"], config)
            results[run["name"]] = {"ok": True}
        except Exception as e:  # recorded for the tests; the traceback goes to the log
            traceback.print_exc()
            results[run["name"]] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        if ray.is_initialized():
            release_placement_groups()
        results[run["name"]]["wall_s"] = time.perf_counter() - t0
        (out / "results.json").write_text(json.dumps(results, indent=1))
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
