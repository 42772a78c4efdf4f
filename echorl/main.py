"""``python -m echorl.main <hydra overrides>``: EchoRL on verl 0.9 (docs/verl.md).

Composes ``echorl/config/echorl_trainer.yaml`` (verl's ``ppo_trainer`` + ``echorl:``), validates it
(:func:`echorl.verl.config_checks.validate_config`, then verl's own ``validate_config``), checks that
EchoRL is really wired into verl (:func:`check_wiring`) and launches through verl's
``run_ppo(config, task_runner_class=EchoTaskRunner)``. The task runner is verl's ``TaskRunnerV1``
with one change: it builds :class:`echorl.verl.trainer.EchoPPOTrainerSync` instead of looking the
trainer up by mode name (the mode stays ``sync``). The trainer installs ``EchoLoss`` on the actor
workers after they are built.

Example (one node, 8 GPUs; needs vLLM, so a GPU machine)::

    python -m echorl.main data.train_files=$HOME/data/math/train.parquet \\
        data.val_files=$HOME/data/math/test.parquet \\
        actor_rollout_ref.model.path=Qwen/Qwen2.5-Math-7B trainer.n_gpus_per_node=8 echorl.coef=0.001
"""

from __future__ import annotations

import pickle
import sys

import verl  # noqa: F401  (first: verl's import loads the verl.plugins entry points, EchoRL's included)

_PLUGIN_LOADED_BY_VERL = "echorl.verl.plugin" in sys.modules

import hydra  # noqa: E402
import ray  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from verl.trainer.main_ppo import TaskRunnerV1, run_ppo  # noqa: E402

from echorl.config.keys import UnknownKeyError, compose_config  # noqa: E402
from echorl.core.config import EchoConfig  # noqa: E402
from echorl.errors import bad_settings_exit  # noqa: E402
from echorl.loss import EchoLoss  # noqa: E402
from echorl.verl import plugin  # noqa: E402
from echorl.verl.config_checks import check_model_context, validate_config  # noqa: E402
from echorl.verl.internals import not_overridden  # noqa: E402
from echorl.verl.launch_env import wandb_offline_fallback  # noqa: E402


class WiringError(RuntimeError):
    """EchoRL is installed but not wired into verl: training would silently be plain verl."""


def check_wiring(echo_cfg=None) -> dict[str, object]:
    """Verify, in this process, that EchoRL is really plugged into verl; raise :class:`WiringError`.

    Checks: the ``verl.plugins`` entry point is installed with the right target; verl imported the
    plugin (entry point or ``VERL_USE_EXTERNAL_MODULES``) and it registered; the trainer subclass
    overrides the verl methods it relies on (``echorl.verl.internals.TRAINER_OVERRIDES``); the loss
    callable survives pickling (it is shipped to the workers by Ray). Returns what it found (for
    logs and tests).
    """
    from verl.trainer.ppo.v1 import PPOTrainerSync, get_trainer_cls

    # imports verl's engines (seconds, and their warnings): a bad setting is refused before
    from echorl.verl.trainer import EchoPPOTrainerSync

    declared = plugin.declared_entry_point()
    if declared != plugin.ENTRY_POINT_VALUE:
        raise WiringError(
            f"EchoRL's verl plugin entry point is {declared!r}, expected {plugin.ENTRY_POINT_VALUE!r} in group "
            f"{plugin.ENTRY_POINT_GROUP!r}: the echorl package metadata is missing or stale. Fix: `pip install -e .` "
            "in the EchoRL checkout (or `make install`)."
        )
    if not (_PLUGIN_LOADED_BY_VERL or "echorl.verl.plugin" in _external_modules()):
        raise WiringError(
            "verl did not load EchoRL's plugin when it was imported (VERL_USE_EXTERNAL_PLUGINS="
            f"{_env('VERL_USE_EXTERNAL_PLUGINS')!r}; a plugin error is only logged at debug level). Fix: unset "
            "VERL_USE_EXTERNAL_PLUGINS or add echorl to it, or set VERL_USE_EXTERNAL_MODULES=echorl.verl.plugin."
        )
    if not plugin.is_registered():
        raise WiringError("EchoRL's verl plugin is imported but not registered in this process")
    if plugin.guard_status() != "ok":
        raise WiringError(f"EchoRL's guard on verl's main_ppo is not installed: {plugin.guard_status()}")
    if get_trainer_cls("sync") is not PPOTrainerSync or not issubclass(EchoPPOTrainerSync, PPOTrainerSync):
        raise WiringError("verl's 'sync' trainer is not PPOTrainerSync: EchoRL's trainer subclass would not match it")
    if not_overridden(EchoPPOTrainerSync):
        raise WiringError(f"EchoPPOTrainerSync does not override verl's {not_overridden(EchoPPOTrainerSync)}: the EchoRL "
                          "stage would not run")
    probe = EchoLoss(actor_config=None, echo_cfg=echo_cfg or EchoConfig())
    if pickle.loads(pickle.dumps(probe)).echo_cfg != probe.echo_cfg:
        raise WiringError("EchoLoss does not survive pickling: Ray could not ship it to the actor workers")
    return {
        "entry_point": declared,
        "loaded_by_verl": _PLUGIN_LOADED_BY_VERL,
        "verl_version": plugin._STATE["verl_version"],
        "trainer": f"{EchoPPOTrainerSync.__module__}.{EchoPPOTrainerSync.__qualname__}",
    }


def _env(name: str) -> str | None:
    import os

    return os.environ.get(name)


def _external_modules() -> list[str]:
    return [m.strip() for m in (_env("VERL_USE_EXTERNAL_MODULES") or "").split(",") if m.strip()]


class EchoTaskRunner(TaskRunnerV1.__ray_actor_class__):
    """verl's ``TaskRunnerV1`` (a Ray actor) building :class:`EchoPPOTrainerSync` (mode ``sync``)."""

    def run(self, config: DictConfig):
        """verl's ``TaskRunnerV1.run`` with the trainer class fixed to EchoRL's and a wiring check
        in this (remote) process."""
        import transfer_queue as tq
        from verl.utils.logging_utils import configure_verl_logging

        from echorl.verl.trainer import EchoPPOTrainerSync  # verl's engines: loaded in the Ray task runner

        configure_verl_logging()
        config.transfer_queue.enable = True
        OmegaConf.resolve(config)
        self.config = config
        echo_cfg = validate_config(config)
        wiring = check_wiring(echo_cfg)
        print(f"EchoRL: {echo_cfg}\nEchoRL wiring: {wiring}")

        tq.init(config.transfer_queue)
        succeeded = False
        try:
            self.trainer = EchoPPOTrainerSync(config=config)
            self.trainer.init()
            self.init_agent_loop_manager()
            self.trainer.fit(self.agent_loop_manager)
            succeeded = True
        finally:
            try:
                tracking = getattr(self.trainer, "logger", None)
                if tracking is not None:
                    tracking.finish(exit_code=0 if succeeded else 1)
            finally:
                tq.close()


EchoTaskRunnerActor = ray.remote(EchoTaskRunner)


def prepare(config: DictConfig):
    """Everything ``main`` does before Ray: EchoRL's refusals, the model's context length
    (:func:`~echorl.verl.config_checks.check_model_context`), verl's own config validation, the wiring
    check, and wandb's offline fallback when no credentials are set
    (:func:`~echorl.verl.launch_env.wandb_offline_fallback`). Returns the parsed :class:`EchoConfig`."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config as verl_validate_config
    from verl.utils.device import auto_set_device

    echo_cfg = validate_config(config)
    check_model_context(config)
    wandb_offline_fallback(config)
    with plugin.echorl_launch():  # the plugin's guard refuses EchoRL configs launched through verl's main_ppo
        auto_set_device(config)  # also selects verl's cpu platform for +cpu=cpu (echorl.verl.cpu)
    verl_validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    check_wiring(echo_cfg)
    return echo_cfg


@hydra.main(config_path="config", config_name="echorl_trainer", version_base=None)
def main(config: DictConfig) -> None:
    with bad_settings_exit("echorl.main"):  # a bad setting: one line, exit 2 (ECHORL_DEBUG=1: traceback)
        prepare(config)
    run_ppo(config, task_runner_class=EchoTaskRunnerActor)


def check_override_keys(argv: list[str]) -> None:
    """Compose the config Hydra is about to compose, so that a mistyped key fails with the nearest
    valid key named (:func:`echorl.config.keys.compose_config`) instead of Hydra's "not in struct".
    Skipped when Hydra's own flags (``--config-name``, ``--multirun``, ...) are given."""
    if any(a.startswith("-") for a in argv):
        return
    with bad_settings_exit("echorl.main"):
        try:
            compose_config("echorl.config", "echorl_trainer", argv)
        except UnknownKeyError:
            raise
        except Exception:  # any other composition error: Hydra reports it itself, as usual
            return


if __name__ == "__main__":
    check_override_keys(sys.argv[1:])
    main()
