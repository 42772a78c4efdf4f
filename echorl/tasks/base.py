"""The :class:`Task` record every task module builds (a leaf module: it imports nothing of echorl)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Task:
    """A named task: ``generate(n, seed, **kw) -> rows`` and
    ``score(solution_str, answer, extra_info=None) -> float`` in ``[0, 1]``."""

    name: str
    data_source: str
    generate: Callable[..., list[dict[str, Any]]]
    score: Callable[..., float]
    description: str = ""
