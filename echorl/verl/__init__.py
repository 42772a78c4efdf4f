"""EchoRL on verl 0.9 (host 1): loss callable, v1 trainer stage, entry point and plugin.

* :class:`EchoLoss` (:mod:`echorl.loss`): verl's ``ppo_loss`` + the EchoRL term (SPEC 2.4).
* :class:`EchoPPOTrainerSync` (:mod:`echorl.verl.trainer`): the v1 sync trainer with the EchoRL
  stage in ``_compute_advantage``.
* :mod:`echorl.verl.plugin`: the ``verl.plugins`` entry point (imported by ``import verl``).
* ``python -m echorl.main``: composes ``echorl_trainer.yaml`` and runs verl's ``run_ppo``.

Names are imported lazily: ``import verl`` loads the plugin in every process, and the plugin must
not drag in verl's trainer (TransferQueue, Ray) while verl itself is still initialising.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "EchoLoss": "echorl.loss",
    "EchoPPOTrainerSync": "echorl.verl.trainer",
    "EchoTaskRunner": "echorl.main",
    "validate_config": "echorl.verl.config_checks",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'echorl.verl' has no attribute {name!r}")
