"""PlatformCPU and its torch.cuda-like device module: what verl calls, with CPU meanings."""

from __future__ import annotations

import torch
from verl.plugin.platform.platform_base import PlatformBase

from echorl.verl.cpu.platform import CPU_DEVICE_MODULE, make_platform_class


def test_platform_answers_what_verl_asks():
    p = make_platform_class(PlatformBase)()
    assert (p.device_name, p.communication_backend_name(), p.ray_resource_name()) == ("cpu", "gloo", "GPU")
    assert p.ray_resource_options(2) == {"num_gpus": 2}
    assert p.current_device() == "cpu" and torch.zeros(1).to(p.current_device()).device.type == "cpu"
    assert p.device_module is CPU_DEVICE_MODULE and p.is_available() and not p.is_ipc_supported()
    with p.nvtx_range("x"):
        pass


def test_device_module_shims():
    m = CPU_DEVICE_MODULE
    state = m.get_rng_state()
    a = torch.rand(3)
    m.set_rng_state(state)
    assert torch.equal(torch.rand(3), a)  # the global CPU RNG round-trips
    free, total = m.mem_get_info()
    assert 0 < free <= total
    assert m.memory_allocated() == m.max_memory_reserved() == 0 and m.empty_cache() is None
    assert m.get_device_name() == "cpu" and m.device_count() == 1
    assert m.Stream is torch.cpu.Stream  # anything else falls through to torch.cpu
