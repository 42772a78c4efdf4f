"""The one reader of a run's ``metrics.jsonl`` (the engine's :class:`echorl.local.logger.RunLogger`
and verl's file logger both write one JSON object per line)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["read_metrics"]


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON objects of ``path``, one per line, in file order.

    A missing file gives ``[]`` (a run that has not logged yet). Blank lines, lines that are not
    JSON (the torn last line of a killed run) and JSON values that are not objects are skipped.
    """
    p = Path(path)
    if not p.exists():
        return []
    rows: list[dict[str, Any]] = []
    with open(p, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                rows.append(obj)
    return rows
