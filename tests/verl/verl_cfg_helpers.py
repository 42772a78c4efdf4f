"""Helpers shared by the tests of tests/verl (a plain module: conftest names clash across folders)."""

from __future__ import annotations

import copy

from omegaconf import OmegaConf, open_dict


def with_keys(cfg, **updates):
    """A copy of ``cfg`` with dotted keys set (``with_keys(cfg, **{"trainer.use_v1": False})``)."""
    c = copy.deepcopy(cfg)
    with open_dict(c):
        for key, value in updates.items():
            OmegaConf.update(c, key, value, force_add=True)
    return c
