"""The ``verl.plugins`` entry point of EchoRL (``pyproject.toml``:
``echorl = "echorl.verl.plugin:register"``).

How verl 0.9.1 uses it (``verl/__init__.py``): ``import verl`` iterates the ``verl.plugins``
entry points and calls ``entry_point.load()`` on each, i.e. it *imports this module and looks up
``register``; it does not call it*, and any exception is logged at debug level only. So the
registration happens at import (the last line of this module) and :func:`register` is idempotent.
``VERL_USE_EXTERNAL_PLUGINS=none`` disables entry points; then
``VERL_USE_EXTERNAL_MODULES=echorl.verl.plugin`` is the fallback (verl imports it by name).

What registering does: it checks the installed verl is one EchoRL supports and marks EchoRL as
present in this process (:func:`is_registered`), so the entry point (:mod:`echorl.main`) and its
Ray task runner can verify that EchoRL is really wired in and fail loudly otherwise. Two more
installs, both from modules ``verl/__init__`` has loaded before its plugins:

* with ``VERL_PLATFORM=cpu``, verl on CPU (:func:`echorl.verl.cpu.activate`: platform, engine,
  rollout, process-group fix), early enough for verl's engine workers;
* the no-silent-no-op guard: ``verl.utils.device.auto_set_device``, which verl's
  ``main_ppo.main`` calls first with the whole config, is wrapped (:func:`guard_auto_set_device`)
  so that a config with EchoRL on launched through verl's own ``main_ppo`` is refused
  (:class:`PlainVerlLaunchError`) instead of training plain verl, and so that a CPU config
  (``+cpu=cpu``) selects verl's ``cpu`` platform in the driver.
"""

from __future__ import annotations

import contextlib
import logging
import os
from importlib import metadata

logger = logging.getLogger(__name__)

SUPPORTED_VERL = ((0, 9, 1), (0, 10, 0))  # [min, max)
ENTRY_POINT_GROUP = "verl.plugins"
ENTRY_POINT_VALUE = "echorl.verl.plugin:register"

_STATE: dict[str, object] = {"registered": False, "pid": None, "verl_version": None, "launching": 0, "guard": None}
GUARDED = ("verl.utils.device", "auto_set_device")  # called first by verl.trainer.main_ppo.main(config)


class PlainVerlLaunchError(RuntimeError):
    """A config with EchoRL on was launched through verl's own ``main_ppo``: it would train plain verl."""


def _parse(version: str) -> tuple[int, ...]:
    parts = []
    for p in version.split(".")[:3]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (3 - len(parts)))


def register() -> bool:
    """Register EchoRL in this process (idempotent). Returns True.

    Raises:
        RuntimeError: the installed verl is outside ``>=0.9.1,<0.10`` (EchoRL relies on the v1
            trainer's fields and the engine workers' loss contract of that series).
    """
    if _STATE["registered"] and _STATE["pid"] == os.getpid():
        return True
    version = metadata.version("verl")
    lo, hi = SUPPORTED_VERL
    if not (lo <= _parse(version) < hi):
        raise RuntimeError(f"EchoRL supports verl>=0.9.1,<0.10; installed verl is {version}")
    _STATE.update(registered=True, pid=os.getpid(), verl_version=version)
    logger.debug("EchoRL plugin registered (verl %s, pid %d)", version, os.getpid())
    return True


def is_registered() -> bool:
    """True when this process imported the plugin (through verl's entry point or by name)."""
    return bool(_STATE["registered"]) and _STATE["pid"] == os.getpid()


@contextlib.contextmanager
def echorl_launch():
    """Marks calls made by EchoRL's launcher (``python -m echorl.main``): the guard lets them through."""
    _STATE["launching"] = int(_STATE["launching"]) + 1
    try:
        yield
    finally:
        _STATE["launching"] = int(_STATE["launching"]) - 1


def refuse_plain_verl_launch(config) -> None:
    """Raise :class:`PlainVerlLaunchError` for a config whose ``echorl.enable`` is true when the
    caller is not EchoRL's launcher (verl's ``main_ppo`` builds verl's own trainer and loss)."""
    if int(_STATE["launching"]) > 0:
        return
    from omegaconf import OmegaConf

    if bool(OmegaConf.select(config, "echorl.enable", default=False)):
        raise PlainVerlLaunchError(
            "this config turns EchoRL on (echorl.enable=true) but was launched with verl's own "
            "`python -m verl.trainer.main_ppo`, which builds verl's trainer and loss: EchoRL's stage and loss would "
            "silently not run. Fix: launch the same overrides with `python -m echorl.main`, or set "
            "echorl.enable=false to train the base method."
        )


def guard_auto_set_device() -> None:
    """Wrap verl's ``auto_set_device(config)`` (idempotent): refuse a plain-verl launch of an EchoRL
    config, select the CPU platform for a CPU config, then run verl's function. The hook point is
    checked in verl's ``main_ppo`` source; a verl that moved it is recorded for :func:`guard_status`."""
    import importlib.util
    import sys

    module = sys.modules.get(GUARDED[0])
    if module is None:
        import importlib

        module = importlib.import_module(GUARDED[0])
    original = getattr(module, GUARDED[1], None)
    if original is None:
        _STATE["guard"] = f"{GUARDED[0]}.{GUARDED[1]} is missing in verl {_STATE['verl_version']}"
        return
    if getattr(original, "__echorl__", False):
        return
    spec = importlib.util.find_spec("verl.trainer.main_ppo")
    source = open(spec.origin, encoding="utf-8").read() if spec and spec.origin else ""
    if "from verl.utils.device import auto_set_device" not in source or "auto_set_device(config)" not in source:
        _STATE["guard"] = (f"verl {_STATE['verl_version']}'s main_ppo no longer calls verl.utils.device.auto_set_device"
                           "(config): launching an EchoRL config with it is not refused")
        logger.warning("EchoRL: %s", _STATE["guard"])

    def auto_set_device(config):
        refuse_plain_verl_launch(config)
        _cpu.select_from_config(config)  # the package imported at the end of this module
        return original(config)

    auto_set_device.__echorl__ = True
    auto_set_device.__wrapped__ = original
    module.auto_set_device = auto_set_device
    if _STATE["guard"] is None:
        _STATE["guard"] = "ok"


def guard_status() -> str | None:
    """``"ok"`` when the main_ppo guard is installed, else why not (None before :func:`register`)."""
    return _STATE["guard"]  # type: ignore[return-value]


def declared_entry_point() -> str | None:
    """The value of the installed ``verl.plugins`` entry point named ``echorl`` (None if absent)."""
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == "echorl":
            return ep.value
    return None


register()
guard_auto_set_device()
from echorl.verl import cpu as _cpu  # noqa: E402  (light: imports nothing until activated)

if _cpu.selected():
    _cpu.activate()
