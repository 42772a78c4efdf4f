"""A small name -> function registry that refuses duplicates and lists valid names on a miss.

Every variant of the method (step aggregation, selector, loss normalisation) is one pure function
registered under the name that the config uses, so a new ablation is one function and one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """Maps config names to functions. ``kind`` names the config field in error messages."""

    def __init__(self, kind: str):
        self.kind = kind
        self._fns: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            if name in self._fns:
                raise ValueError(f"{self.kind}: '{name}' is already registered ({self._fns[name]!r})")
            self._fns[name] = fn
            return fn

        return deco

    def get(self, name: str) -> F:
        try:
            return self._fns[name]
        except KeyError:
            raise ValueError(
                f"{self.kind}: unknown name {name!r}; valid names are {sorted(self._fns)}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._fns)

    def __contains__(self, name: object) -> bool:
        return name in self._fns


# The registries of the method's variants. They live here, in the leaf module, so that the config
# validates names without importing the modules that register the functions (no import cycle);
# echorl.core's package import fills them (steps.py, clips.py, loss.py).
# step_agg name -> fn(flat [N] int bin ids, values [N] float, count [nbins] long) -> [nbins] float
STEP_AGGS: Registry = Registry("step_agg")
# selector name -> fn(h [E, S] float, eligible [E, S] bool, u [E] float in [0, 1)) -> k [E] long (-1 = none)
SELECTORS: Registry = Registry("selector")
# loss_agg name -> fn(clip_len [B] long, valid_tokens float, num_minibatches int) -> [B] float
LOSS_AGGS: Registry = Registry("loss_agg")
