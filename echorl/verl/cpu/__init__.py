"""verl's real V1 training loop on CPU: platform, engine, rollout and settings (docs/verl.md, "Try your config on CPU").

    python -m echorl.main +cpu=cpu actor_rollout_ref.model.path=... data.train_files=... data.val_files=...

``+cpu=cpu`` selects ``echorl/config/cpu/cpu.yaml``, which sets every CPU setting (listed there)
and ``VERL_PLATFORM=cpu`` for every Ray process; ``python -m echorl.main`` sets it for the driver.
With ``VERL_PLATFORM=cpu``, EchoRL's verl plugin (loaded by ``import verl`` in every process)
calls :func:`activate`, which installs (:mod:`echorl.verl.cpu.internals`):

* verl platform ``cpu`` (:mod:`echorl.verl.cpu.platform`): device ``cpu``, backend ``gloo``, Ray
  resource ``GPU`` (logical GPUs, one per trainer rank), ``torch.cuda``-like shims;
* verl's own ``FSDPEngineWithLMHead`` for device ``cpu`` (``actor.strategy=fsdp2``: FSDP2
  ``fully_shard`` over gloo);
* the ``hf_cpu`` rollout (:mod:`echorl.verl.cpu.rollout`): a transformers-``generate`` server
  behind verl's ``RolloutReplicaRegistry`` and the worker-side adapter in verl's ``_ROLLOUT_REGISTRY``;
* the process-group fix (verl's ``"cpu:gloo,cpu:gloo"`` backend string becomes ``gloo``).

Still GPU-only: vLLM/SGLang, FSDP1, Megatron, fused kernels. Packed sequences
(``use_remove_padding=true``) run on CPU through verl's pure-torch unpad/pad fallbacks and sdpa's
block-causal mask for packed ``position_ids`` (docs/verl.md, "Try your config on CPU");
``+cpu=cpu`` turns them off, an override turns them back on.
``python -m echorl.verl.cpu.smoke`` (``make verl-smoke``) runs 2 GRPO + EchoRL steps with the
shipped tiny model.
"""

from __future__ import annotations

import os

ENV = "VERL_PLATFORM"
PLATFORM = "cpu"

__all__ = ["CPU_SETTINGS", "ENV", "PLATFORM", "activate", "config_selects_cpu", "select_from_config", "selected"]


def selected() -> bool:
    """True when this process runs verl on the CPU platform (``VERL_PLATFORM=cpu``)."""
    return os.environ.get(ENV, "").strip().lower() == PLATFORM


def activate() -> None:
    """Install the CPU platform, engine, rollout and process-group fix in this process (idempotent).

    Modules verl has not imported yet are patched when it imports them; call before verl's
    engine workers are imported (the plugin does, from ``import verl``).
    """
    from echorl.verl.cpu.internals import install_all  # imports verl, which imports this package (plugin)

    install_all()


CPU_SETTINGS = {  # key -> value the CPU run needs (set by echorl/config/cpu/cpu.yaml)
    "trainer.device": "cpu",
    "actor_rollout_ref.rollout.name": "hf_cpu",
    "actor_rollout_ref.rollout.tensor_model_parallel_size": 1,
    "actor_rollout_ref.actor.strategy": "fsdp2",
}


def config_selects_cpu(config) -> bool:
    """True when the composed config runs on CPU (``+cpu=cpu`` puts ``VERL_PLATFORM=cpu`` in the
    Ray runtime environment)."""
    from omegaconf import OmegaConf

    value = OmegaConf.select(config, "ray_kwargs.ray_init.runtime_env.env_vars.VERL_PLATFORM", default=None)
    return str(value or "").strip().lower() == PLATFORM


def select_from_config(config) -> bool:
    """Driver side of a CPU run, before verl reads the platform: if the config (``+cpu=cpu``) or
    the environment (``VERL_PLATFORM=cpu``) asks for CPU, select verl's ``cpu`` platform in this
    process, check and install the verl internals it needs, and check the CPU settings.

    Returns True for a CPU run. Raises ``ValueError`` naming the key, its value and the fix when a
    setting of :data:`CPU_SETTINGS` contradicts a CPU run, and
    :class:`~echorl.verl.cpu.internals.VerlInternalsError` when verl moved an internal.
    """
    from omegaconf import OmegaConf

    if not (config_selects_cpu(config) or selected()):
        return False
    wrong = {k: OmegaConf.select(config, k, default=None) for k, v in CPU_SETTINGS.items()
             if OmegaConf.select(config, k, default=None) != v}
    if wrong:
        raise ValueError(
            "a CPU run (VERL_PLATFORM=cpu) needs " + ", ".join(f"{k}={CPU_SETTINGS[k]!r} (got {v!r})" for k, v in wrong.items())
            + ". Fix: add the override +cpu=cpu (echorl/config/cpu/cpu.yaml sets every CPU setting), and with verl's "
            "own main_ppo also hydra.searchpath=[pkg://echorl.config]."
        )
    os.environ[ENV] = PLATFORM
    activate()
    from echorl.verl.cpu.internals import check_internals  # imports verl, which imports this package (plugin)

    check_internals()
    from verl.plugin.platform import PlatformRegistry, get_platform, set_platform

    if get_platform().device_name != PLATFORM:  # resolved before the environment said cpu
        set_platform(PlatformRegistry.get(PLATFORM)())
    return True
