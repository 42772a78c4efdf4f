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
Ray task runner can verify that EchoRL is really wired in and fail loudly otherwise. It imports
nothing from verl: it runs while ``verl/__init__`` is still executing.
"""

from __future__ import annotations

import logging
import os
from importlib import metadata

logger = logging.getLogger(__name__)

SUPPORTED_VERL = ((0, 9, 1), (0, 10, 0))  # [min, max)
ENTRY_POINT_GROUP = "verl.plugins"
ENTRY_POINT_VALUE = "echorl.verl.plugin:register"

_STATE: dict[str, object] = {"registered": False, "pid": None, "verl_version": None}


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


def declared_entry_point() -> str | None:
    """The value of the installed ``verl.plugins`` entry point named ``echorl`` (None if absent)."""
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == "echorl":
            return ep.value
    return None


register()
