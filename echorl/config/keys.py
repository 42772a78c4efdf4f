"""Compose a packaged Hydra config, and name the nearest valid key when an override's key is unknown.

Hydra's own message for a mistyped key (``echorl.cof=0.1``) is "Key 'cof' is not in struct"; both
hosts compose through :func:`compose_config`, which turns that into a ``ValueError`` listing the
closest keys of the same node (``did you mean 'echorl.coef'?``) and how to add a new key.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

__all__ = ["UnknownKeyError", "compose_config", "unknown_key_message"]

_COULD_NOT = re.compile(r"Could not (?:override|append to|delete from config) '([^']+)'")
_FULL_KEY = re.compile(r"full_key: (\S+)")


class UnknownKeyError(ValueError):
    """An override names a key the composed config does not have."""


def _compose(config_module: str, config_name: str, overrides: Sequence[str]) -> DictConfig:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_module(config_module, version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))


def _bad_key(exc: BaseException) -> str | None:
    """The dotted key Hydra could not set, from its exception chain (None: another kind of error)."""
    texts = []
    while exc is not None and len(texts) < 5:
        texts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    text = "\n".join(texts)
    if "not in struct" not in text and "Key not found" not in text:
        return None
    m = _FULL_KEY.search(text) or _COULD_NOT.search(text)
    return m.group(1) if m else None


def unknown_key_message(cfg: DictConfig, key: str) -> str:
    """Why ``key`` is not in ``cfg``: the nearest valid keys of its node, or of its nearest existing parent."""
    parts = key.split(".")
    node, path = cfg, []
    for part in parts[:-1]:
        child = node.get(part) if isinstance(node, DictConfig) else None
        if not isinstance(child, DictConfig):
            break
        node, path = child, [*path, part]
    missing = parts[len(path)]
    valid = sorted(str(k) for k in node.keys()) if isinstance(node, DictConfig) else []
    prefix = ".".join(path)
    close = difflib.get_close_matches(missing, valid, n=3, cutoff=0.6)
    where = f"'{prefix}'" if prefix else "the top level"
    msg = f"unknown config key '{key}': {where} has no '{missing}'"
    if close:
        msg += "; did you mean " + " or ".join(f"'{'.'.join([*path, c])}'" for c in close) + "?"
    elif valid:
        msg += f"; its keys are {valid}"
    return msg + f" (to add a new key on purpose, write '+{key}=...')"


def compose_config(config_module: str, config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Hydra's ``compose`` of ``config_module/config_name.yaml`` with ``overrides``; an unknown key
    raises :class:`UnknownKeyError` naming the nearest valid keys."""
    overrides = list(overrides)
    try:
        return _compose(config_module, config_name, overrides)
    except Exception as exc:
        key = _bad_key(exc)
        if key is None:
            raise
        rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
        try:
            base = _compose(config_module, config_name, rest)
        except Exception:
            base = OmegaConf.create({})
        raise UnknownKeyError(unknown_key_message(base, key)) from exc
