"""The verl internals of the CPU run: checked against the installed verl, installed on import, and a
moved internal fails with the verl version and its name. Runs in fresh interpreters where it
changes verl's global state (platform, process-group function)."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

from echorl.verl.cpu import internals


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


def test_every_internal_is_installed_on_import_when_verl_platform_is_cpu():
    """`import verl` with VERL_PLATFORM=cpu: the plugin registers the platform at once; verl's own
    imports of the engine, rollout and process-group modules install the rest."""
    proc = _python(
        "import verl\n"
        "from verl.plugin.platform import get_platform\n"
        "p = get_platform()\n"
        "print(p.device_name, p.communication_backend_name(), p.ray_resource_name())\n"
        "import verl.workers.engine_workers as w, verl.utils.distributed as d\n"
        "from verl.workers.engine.base import EngineRegistry\n"
        "from verl.workers.rollout.base import _ROLLOUT_REGISTRY, get_rollout_class\n"
        "from verl.workers.rollout.replica import get_rollout_replica_class\n"
        "from verl.utils.device import get_torch_device\n"
        "print(EngineRegistry.get_engine_cls('language_model', 'fsdp2').__name__)\n"
        "print(get_rollout_class('hf_cpu', 'async').__name__, get_rollout_replica_class('hf_cpu').__name__)\n"
        "print(w.initialize_global_process_group_ray is d.initialize_global_process_group_ray, "
        "getattr(d.initialize_global_process_group_ray, '__echorl__', False))\n"
        "print(get_torch_device().current_device(), get_torch_device().memory_allocated())\n",
        VERL_PLATFORM="cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:5] == ["cpu gloo GPU", "FSDPEngineWithLMHead", "HFServerAdapter HFReplica",
                                           "True True", "cpu 0"]


def test_nothing_is_installed_without_verl_platform_cpu():
    proc = _python("import verl, sys\nfrom verl.plugin.platform import PlatformRegistry\n"
                   "print(PlatformRegistry.get('cpu'), 'echorl.verl.cpu.internals' in sys.modules)", VERL_PLATFORM="")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "None False"


def test_check_internals_passes_on_the_installed_verl():
    proc = _python("from echorl.verl.cpu.internals import check_internals\nprint(sorted(check_internals().values()))")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(["ok"] * len(internals.INSTALLERS))


def test_process_group_fix_turns_the_duplicate_cpu_backend_into_gloo():
    """verl's own initialiser, wrapped, builds a real gloo process group (world size 1); unwrapped it
    passes torch the string "cpu:gloo,cpu:gloo"."""
    code = (
        "import os, torch.distributed as dist\n"
        "os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT='29517', RANK='0', WORLD_SIZE='1')\n"
        "import verl.utils.distributed as d\n"
        "from echorl.verl.cpu.internals import install_process_group_fix\n"
        "seen = []\n"
        "orig = dist.init_process_group\n"
        "dist.init_process_group = lambda backend=None, **kw: (seen.append(backend), orig(backend=backend, **kw))[1]\n"
        "install_process_group_fix(d)\n"
        "d.initialize_global_process_group_ray(timeout_second=60, backend='cpu:gloo,cpu:gloo')\n"
        "print(seen, dist.get_backend(), dist.get_world_size())\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "['gloo'] gloo 1"


def test_forward_only_models_offload_unpinned_on_cpu():
    """verl gives a forward-only model (the KL reference) FSDP2's CPUOffloadPolicy(pin_memory=True):
    real fully_shard over gloo on CPU fails on the pinning; after install_engine the engine module's
    policy is an unpinned subclass and the same call shards and runs the module."""
    code = (
        "import os, torch, torch.distributed as dist\n"
        "os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT='29518', RANK='0', WORLD_SIZE='1')\n"
        "dist.init_process_group('gloo')\n"
        "from torch.distributed.device_mesh import init_device_mesh\n"
        "from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard\n"
        "import verl.workers.engine.fsdp.transformer_impl as t\n"
        "mesh = init_device_mesh('cpu', (1,))\n"
        "try:\n"
        "    fully_shard(torch.nn.Linear(4, 4), mesh=mesh, offload_policy=t.CPUOffloadPolicy(pin_memory=True))\n"
        "    print('pinned ran')\n"
        "except RuntimeError as e:\n"
        "    print('pinned failed:', 'accelerator' in str(e))\n"
        "from echorl.verl.cpu.internals import install_engine\n"
        "install_engine(t)\n"
        "policy = t.CPUOffloadPolicy(pin_memory=True)\n"
        "torch.manual_seed(0)\n"
        "lin = torch.nn.Linear(4, 4)\n"
        "want = lin(torch.ones(1, 4)).detach()\n"
        "m = fully_shard(lin, mesh=mesh, offload_policy=policy)\n"
        "print(isinstance(policy, CPUOffloadPolicy), policy.pin_memory, torch.equal(m(torch.ones(1, 4)).detach(), want))\n"
    )
    proc = _python(code, VERL_PLATFORM="")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines() == ["pinned failed: True", "True False True"]


@pytest.mark.parametrize("installer,module,internal", [
    (internals.install_rollout_adapter, types.ModuleType("verl.workers.rollout.base"), "_ROLLOUT_REGISTRY"),
    (internals.install_process_group_fix, types.ModuleType("verl.utils.distributed"), "initialize_global_process_group_ray"),
    (internals.install_engine, types.ModuleType("verl.workers.engine.fsdp.transformer_impl"), "FSDPEngineWithLMHead"),
    (internals.install_replica, types.ModuleType("verl.workers.rollout.replica"), "RolloutReplicaRegistry"),
    (internals.install_trl_fix, types.ModuleType("verl.models.transformers.monkey_patch"), "is_trl_available"),
])
def test_a_moved_internal_names_the_verl_version_and_the_internal(installer, module, internal):
    """A verl whose module lacks the internal (an empty module of the same name stands for it)."""
    with pytest.raises(internals.VerlInternalsError, match=rf"`{module.__name__}\.{internal}`.*installed verl 0\.9\.1"):
        installer(module)


def test_a_changed_signature_is_refused():
    module = types.ModuleType("verl.utils.distributed")
    module.initialize_global_process_group_ray = lambda backend=None, timeout_second=None: None
    with pytest.raises(internals.VerlInternalsError, match=r"signature.*\['backend', 'timeout_second'\]"):
        internals.install_process_group_fix(module)
