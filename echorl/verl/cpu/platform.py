"""verl's platform abstraction on CPU: :class:`PlatformCPU` and the ``torch.cuda``-like device module.

verl reaches the accelerator through ``verl.plugin.platform.get_platform()`` (device name, backend,
Ray resource) and ``get_torch_device()`` (the ``torch.<device>`` module). ``torch.cpu`` lacks most
of what verl calls on it (``empty_cache``, ``memory_*``, ``mem_get_info``, ``get_rng_state``,
``set_per_process_memory_fraction``, ``get_device_name``, ...): :data:`CPU_DEVICE_MODULE` is
``torch.cpu`` plus those calls with their CPU meaning (no cache to free, no device memory
accounting, the global CPU RNG).

Registered by :func:`echorl.verl.cpu.internals.register_platform` under the name ``cpu``; verl
selects it when ``VERL_PLATFORM=cpu``. Device ``cpu``, backend ``gloo``, Ray resource ``GPU``
(verl's resource pools count only GPU/NPU, so a CPU run gives Ray logical GPUs: one per trainer
rank).
"""

from __future__ import annotations

import os
import types
from contextlib import contextmanager
from typing import Any

import torch

PLATFORM_NAME = "cpu"


def _mem_get_info(device: Any = None) -> tuple[int, int]:
    """``(free, total)`` bytes of host memory (what a device's ``mem_get_info`` reports)."""
    try:
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.available), int(vm.total)
    except ImportError:  # pragma: no cover - psutil ships with ray
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return pages * size, pages * size


def _zero(*args: Any, **kwargs: Any) -> int:
    return 0


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


class _CPUDeviceModule(types.ModuleType):
    """``torch.cpu`` with the ``torch.cuda`` calls verl makes on its device module.

    Attributes not defined here fall through to ``torch.cpu`` (``Stream``, ``Event``, ``stream``,
    ``current_stream``, ``synchronize``, ``is_available``, ...).
    """

    def __init__(self) -> None:
        super().__init__("echorl_cpu_device", "torch.cpu plus the torch.cuda-like calls verl makes")
        self.empty_cache = _noop
        self.ipc_collect = _noop
        self.reset_peak_memory_stats = _noop
        self.set_per_process_memory_fraction = _noop
        self.memory_allocated = _zero
        self.memory_reserved = _zero
        self.max_memory_allocated = _zero
        self.max_memory_reserved = _zero
        self.memory_stats = lambda *a, **k: {}
        self.mem_get_info = _mem_get_info
        self.get_rng_state = lambda *a, **k: torch.get_rng_state()
        self.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
        self.manual_seed = lambda seed: torch.manual_seed(seed)
        self.manual_seed_all = lambda seed: torch.manual_seed(seed)
        self.get_device_name = lambda *a, **k: "cpu"
        self.get_device_capability = lambda *a, **k: (None, None)
        self.set_device = _noop
        self.device_count = lambda: 1
        self.current_device = lambda: "cpu"  # torch.cpu's own answer; `.to("cpu")` works, `.to(0)` would be CUDA
        self.is_available = lambda: True
        self.synchronize = lambda *a, **k: None

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cpu, name)


CPU_DEVICE_MODULE = _CPUDeviceModule()


def make_platform_class(base: type) -> type:
    """Build the ``PlatformCPU`` class on verl's ``PlatformBase`` (passed in, so this module
    imports nothing from verl and can be loaded while ``verl/__init__`` runs)."""

    class PlatformCPU(base):
        """verl platform for CPU-only machines: device ``cpu``, backend ``gloo``, Ray resource ``GPU``."""

        @property
        def device_name(self) -> str:
            return "cpu"

        @property
        def vendor_name(self) -> str:
            return "cpu"

        @property
        def device_module(self) -> types.ModuleType:
            return CPU_DEVICE_MODULE

        def is_available(self) -> bool:
            return True

        def is_platform_available(self, use_smi_check: bool = False) -> bool:
            # never auto-detected: a CPU run is chosen explicitly with VERL_PLATFORM=cpu
            return os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME

        def current_device(self) -> str:
            return "cpu"

        def device_count(self) -> int:
            return 1

        def set_device(self, device_index: int) -> None:
            return None

        def synchronize(self, device_index: int | None = None) -> None:
            return None

        def manual_seed(self, seed: int) -> None:
            torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> None:
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings: str) -> None:
            return None

        def empty_cache(self) -> None:
            return None

        def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
            return None, None

        def communication_backend_name(self) -> str:
            return "gloo"

        def visible_devices_envvar(self) -> str:
            return "CUDA_VISIBLE_DEVICES"

        @contextmanager
        def nvtx_range(self, msg: str):
            yield

        def profiler_start(self) -> None:
            return None

        def profiler_stop(self) -> None:
            return None

        def ray_resource_name(self) -> str:
            return "GPU"

        def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
            return {"num_gpus": num_gpus}

        def ray_noset_envvars(self) -> list[str]:
            return []

        def is_ipc_supported(self) -> bool:
            return False

        def cudart(self) -> Any:
            return None

    return PlatformCPU
