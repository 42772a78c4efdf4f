"""The verl internals the CPU run relies on, each checked and installed in one place.

verl 0.9.1 has public registries for platforms (``PlatformRegistry``), training engines
(``EngineRegistry``) and rollout replicas (``RolloutReplicaRegistry``), but a CPU run also needs
two internals that verl does not expose:

* ``verl.workers.rollout.base._ROLLOUT_REGISTRY`` (private dict ``(name, mode) -> "module.Class"``):
  where the worker looks up the rollout adapter of ``rollout.name``;
* ``verl.utils.distributed.initialize_global_process_group_ray``: builds the backend string
  ``"cpu:gloo,<device>:<backend>"``, which on CPU is ``"cpu:gloo,cpu:gloo"`` and torch refuses
  ("Duplicate device type cpu"); it is wrapped to use plain ``gloo``;
* the name ``CPUOffloadPolicy`` in verl's FSDP engine module: verl offloads a forward-only model
  (the KL reference) with ``pin_memory=True``, which needs an accelerator; on CPU it is unpinned.

Everything is installed lazily, when verl imports the module that holds it (a ``sys.meta_path``
hook runs the installer right after the module body), so a process that never builds an engine
or a rollout does not import them. A module already imported is handled at once. Each installer
checks the internal first and raises :class:`~echorl.verl.internals.VerlInternalsError` naming the installed verl version
and the internal that moved; :func:`check_internals` imports them all and runs every check (the
launcher calls it at start-up).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import inspect
import sys
from collections.abc import Callable

from echorl.verl.cpu.platform import PLATFORM_NAME, make_platform_class
from echorl.verl.internals import VerlInternalsError, moved

ROLLOUT_NAME = "hf_cpu"  # actor_rollout_ref.rollout.name of the transformers-generate CPU rollout
ADAPTER_FQN = "echorl.verl.cpu.rollout.HFServerAdapter"
PG_MODULE = "verl.utils.distributed"
ENGINE_MODULE = "verl.workers.engine.fsdp.transformer_impl"
ROLLOUT_BASE_MODULE = "verl.workers.rollout.base"
REPLICA_MODULE = "verl.workers.rollout.replica"
PLATFORM_MODULE = "verl.plugin.platform.platform_manager"
MONKEY_PATCH_MODULE = "verl.models.transformers.monkey_patch"


def _moved(internal: str, detail: str) -> VerlInternalsError:
    return moved(internal, detail, what="EchoRL's CPU run (VERL_PLATFORM=cpu, +cpu=cpu)",
                 where="echorl/verl/cpu/internals.py")


def _need(module, name: str, what: str):
    if not hasattr(module, name):
        raise _moved(f"{module.__name__}.{name}", f"is missing ({what})")
    return getattr(module, name)


# ---------------------------------------------------------------- installers (one per internal)


def install_platform(module=None) -> None:
    """Register :class:`~echorl.verl.cpu.platform` ``PlatformCPU`` as verl platform ``cpu``."""
    module = module or importlib.import_module(PLATFORM_MODULE)
    registry = _need(module, "PlatformRegistry", "verl's platform registry")
    from verl.plugin.platform.platform_base import PlatformBase

    for attr in ("register", "get", "registered_names"):
        _need(registry, attr, "PlatformRegistry API")
    existing = registry.get(PLATFORM_NAME)
    if existing is not None and getattr(existing, "__echorl__", False):
        return
    cls = make_platform_class(PlatformBase)
    cls.__echorl__ = True
    registry.register(platform=PLATFORM_NAME)(cls)


def install_process_group_fix(module=None) -> None:
    """Wrap ``initialize_global_process_group_ray`` so the CPU backend string becomes ``gloo``."""
    module = module or importlib.import_module(PG_MODULE)
    fn = _need(module, "initialize_global_process_group_ray", "the process-group initialiser of verl's workers")
    if getattr(fn, "__echorl__", False):
        return
    params = list(inspect.signature(fn).parameters)
    if params[:2] != ["timeout_second", "backend"]:
        raise _moved(f"{PG_MODULE}.initialize_global_process_group_ray",
                     f"changed its signature to {params} (expected timeout_second, backend)")
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        if backend is None or set(backend.replace(" ", "").split(",")) <= {"gloo", "cpu:gloo"}:
            backend = "gloo"  # torch refuses "cpu:gloo,cpu:gloo" (duplicate device type)
        return fn(timeout_second=timeout_second, backend=backend)

    initialize_global_process_group_ray.__echorl__ = True
    initialize_global_process_group_ray.__wrapped__ = fn
    module.initialize_global_process_group_ray = initialize_global_process_group_ray
    workers = sys.modules.get("verl.workers.engine_workers")  # imported the name before the fix: rebind it
    if workers is not None and getattr(workers, "initialize_global_process_group_ray", None) is fn:
        workers.initialize_global_process_group_ray = initialize_global_process_group_ray


def install_engine(module=None) -> None:
    """Register verl's own ``FSDPEngineWithLMHead`` for device ``cpu`` (backends fsdp, fsdp2), and
    make the engine's FSDP2 ``CPUOffloadPolicy`` unpinned: verl gives every forward-only model (the
    KL reference) ``CPUOffloadPolicy(pin_memory=True)``, and pinning needs an accelerator ("Cannot
    access accelerator device when none is available"); on CPU the parameters already live in host
    memory, so nothing is lost."""
    module = module or importlib.import_module(ENGINE_MODULE)
    engine_cls = _need(module, "FSDPEngineWithLMHead", "verl's FSDP language-model engine")
    policy = _need(module, "CPUOffloadPolicy", "FSDP2's CPU offload policy as verl's FSDP engine names it")
    if not getattr(policy, "echorl_unpinned", False):
        class UnpinnedCPUOffloadPolicy(policy):
            """FSDP2's ``CPUOffloadPolicy`` with ``pin_memory`` always False (CPU runs)."""

            echorl_unpinned = True

            def __init__(self, pin_memory: bool = True):
                super().__init__(pin_memory=False)

        module.CPUOffloadPolicy = UnpinnedCPUOffloadPolicy
    registry = _need(module, "EngineRegistry", "verl's engine registry")
    engines = getattr(registry, "_engines", None)
    if not isinstance(engines, dict) or "language_model" not in engines or "fsdp2" not in engines["language_model"]:
        raise _moved("verl.workers.engine.base.EngineRegistry", "no longer lists language_model/fsdp2")
    if "cpu" in engines["language_model"]["fsdp2"]:
        return
    registry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device="cpu")(engine_cls)


def install_rollout_adapter(module=None) -> None:
    """Point verl's private ``_ROLLOUT_REGISTRY[(hf_cpu, async)]`` at the CPU rollout adapter."""
    module = module or importlib.import_module(ROLLOUT_BASE_MODULE)
    table = _need(module, "_ROLLOUT_REGISTRY", "the worker-side rollout adapter table")
    if not isinstance(table, dict) or ("vllm", "async") not in table:
        raise _moved(f"{ROLLOUT_BASE_MODULE}._ROLLOUT_REGISTRY", "is no longer a dict keyed by (name, mode)")
    _need(module, "get_rollout_class", "the adapter lookup")
    table[(ROLLOUT_NAME, "async")] = ADAPTER_FQN


def install_replica(module=None) -> None:
    """Register the CPU rollout replica in verl's ``RolloutReplicaRegistry`` under ``hf_cpu``."""
    module = module or importlib.import_module(REPLICA_MODULE)
    registry = _need(module, "RolloutReplicaRegistry", "verl's rollout replica registry")
    _need(module, "RolloutReplica", "the replica base class")
    _need(module, "TokenOutput", "the generate() result type")

    def _load():
        from echorl.verl.cpu.rollout import HFReplica  # ray + verl's rollout: loaded when verl asks for hf_cpu

        return HFReplica

    registry.register(ROLLOUT_NAME, _load)


def _trl_has_value_head() -> bool:
    import importlib.util

    if importlib.util.find_spec("trl") is None:
        return False
    for name in ("trl.experimental.ppo", "trl"):
        try:
            if hasattr(importlib.import_module(name), "AutoModelForCausalLMWithValueHead"):
                return True
        except ImportError:
            continue
    return False


def install_trl_fix(module=None) -> None:
    """verl's ``apply_monkey_patch`` imports trl's ``AutoModelForCausalLMWithValueHead`` whenever trl
    is installed, and trl >= 1.16 no longer ships it (ImportError while building any FSDP model).
    With such a trl, the module's ``is_trl_available`` answers False: verl then skips a patch that
    only concerns trl value-head models, which EchoRL does not use."""
    module = module or importlib.import_module(MONKEY_PATCH_MODULE)
    fn = _need(module, "is_trl_available", "the trl probe of apply_monkey_patch")
    if getattr(fn, "__echorl__", False):
        return
    _need(module, "apply_monkey_patch", "verl's model patching entry")

    def is_trl_available() -> bool:
        return fn() and _trl_has_value_head()

    is_trl_available.__echorl__ = True
    module.is_trl_available = is_trl_available


INSTALLERS: dict[str, Callable] = {
    PLATFORM_MODULE: install_platform,
    PG_MODULE: install_process_group_fix,
    ENGINE_MODULE: install_engine,
    ROLLOUT_BASE_MODULE: install_rollout_adapter,
    REPLICA_MODULE: install_replica,
    MONKEY_PATCH_MODULE: install_trl_fix,
}


# ---------------------------------------------------------------- post-import hook


class _InstallAfterImport(importlib.abc.MetaPathFinder):
    """Runs ``INSTALLERS[name](module)`` right after verl executes module ``name``."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in INSTALLERS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _Loader(spec.loader, INSTALLERS[fullname])
        return spec


class _Loader(importlib.abc.Loader):
    def __init__(self, inner, install: Callable):
        self.inner, self.install = inner, install

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        self.install(module)

    def __getattr__(self, name):  # get_source, get_filename, ... of the real loader
        return getattr(self.inner, name)


_HOOK = _InstallAfterImport()


def install_all() -> None:
    """Install every CPU internal: at once for modules already imported, on import for the others."""
    if _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
    for name, installer in INSTALLERS.items():
        if name in sys.modules:
            installer(sys.modules[name])


def check_internals() -> dict[str, str]:
    """Import every module holding a CPU internal and run its check and install (start-up check).

    Returns ``{internal: status}``; raises :class:`VerlInternalsError` naming the verl version and
    the internal that moved.
    """
    install_all()
    found = {}
    for name, installer in INSTALLERS.items():
        installer(importlib.import_module(name))
        found[name] = "ok"
    from verl.plugin.platform import PlatformRegistry
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    if PlatformRegistry.get("cpu") is None or "cpu" not in EngineRegistry._engines["language_model"]["fsdp2"] \
            or _ROLLOUT_REGISTRY.get((ROLLOUT_NAME, "async")) != ADAPTER_FQN \
            or ROLLOUT_NAME not in RolloutReplicaRegistry._registry:
        raise _moved("verl registries", "did not keep EchoRL's CPU registrations")
    return found
