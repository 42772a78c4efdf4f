"""EchoGRPOConfig: TRL's ``GRPOConfig`` plus one ``echorl_<field>`` per :class:`EchoConfig` field.

The EchoRL fields are generated from :class:`echorl.core.config.EchoConfig` (the one source of the
options, their defaults and their help texts), so ``HfArgumentParser(EchoGRPOConfig)`` shows them as
``--echorl_coef``, ``--echorl_scope`` ... with EchoConfig's defaults and help.

Construction validates the EchoRL fields through ``EchoConfig`` and raises ``ValueError`` naming the
``echorl_<field>``, the bad value and the fix; :meth:`EchoGRPOConfig.echo_config` returns the
``EchoConfig`` the trainer uses (before the ``auto`` boundary is resolved against the tokenizer).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from trl import GRPOConfig

from echorl.core.config import EchoConfig

__all__ = ["ECHO_PREFIX", "EchoGRPOConfig"]

ECHO_PREFIX = "echorl_"

# EchoConfig's annotation (a string: the module uses postponed annotations) -> the runtime type
# HfArgumentParser needs. A new EchoConfig field of another type fails here, at import.
# An optional field (``X | None``, or a None default) becomes ``X | None``.
_TYPES: dict[str, Any] = {"str": str, "bool": bool, "int": int, "float": float, "tuple[int, ...]": list[int]}


def _field(f: dataclasses.Field) -> tuple[str, Any, dataclasses.Field]:
    name = str(f.type)
    base = name.removesuffix(" | None")
    if base not in _TYPES:
        raise TypeError(f"EchoConfig.{f.name} has type {name!r}, which EchoGRPOConfig cannot map to a "
                        f"command-line type; add it to echorl.trl.config._TYPES")
    typ = _TYPES[base]
    if base != name or f.default is None:
        typ = typ | None
    meta = {"help": f.metadata["help"]}
    if isinstance(f.default, tuple):
        spec = dataclasses.field(default_factory=lambda d=f.default: list(d), metadata=meta)
    else:
        spec = dataclasses.field(default=f.default, metadata=meta)
    return ECHO_PREFIX + f.name, typ, spec


def _post_init(self) -> None:
    GRPOConfig.__post_init__(self)
    self.echo_config()  # validate the EchoRL fields now, not at the first step


def _echo_config(self) -> EchoConfig:
    """The :class:`EchoConfig` of the ``echorl_*`` fields (``boundary='auto'`` still unresolved:
    the trainer resolves it against its tokenizer)."""
    d = {f.name: getattr(self, ECHO_PREFIX + f.name) for f in dataclasses.fields(EchoConfig)}
    try:
        return EchoConfig.from_dict(d, prefix="echorl")
    except ValueError as e:  # from_dict names keys echorl.<field>; here they are fields echorl_<field>
        raise ValueError(str(e).replace("echorl.", ECHO_PREFIX)) from None


EchoGRPOConfig = dataclasses.make_dataclass(
    "EchoGRPOConfig",
    [_field(f) for f in dataclasses.fields(EchoConfig)],
    bases=(GRPOConfig,),
    namespace={"__post_init__": _post_init, "echo_config": _echo_config, "__module__": __name__,
               "__doc__": "TRL's ``GRPOConfig`` plus the EchoRL options as ``echorl_<field>`` (module docstring)."},
)
