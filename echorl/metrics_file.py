"""The one reader of a run's ``metrics.jsonl`` (the engine's :class:`echorl.local.logger.RunLogger`
and verl's file logger both write one JSON object per line)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["MetricsFileError", "read_metrics"]

log = logging.getLogger(__name__)


class MetricsFileError(ValueError):
    """A ``metrics.jsonl`` line that is neither a JSON object nor the torn last line of a killed run."""


def read_metrics(path: str | os.PathLike, *, missing_ok: bool = False) -> list[dict[str, Any]]:
    """The JSON objects of ``path``, one per line, in file order.

    Blank lines are skipped. The last line may be torn (a run killed while writing it): it is left
    out with a warning. Any other line that is not a JSON object raises :class:`MetricsFileError`
    naming the file and the line. A missing file raises ``FileNotFoundError`` unless ``missing_ok``
    (a run that has not logged yet, e.g. before resume), which gives ``[]``.
    """
    p = Path(path)
    if not p.exists():
        if missing_ok:
            return []
        raise FileNotFoundError(f"metrics file {p} does not exist: point at a run folder's metrics.jsonl "
                                "(the engine writes <trainer.output_dir>/metrics.jsonl; verl's file logger "
                                "writes $VERL_FILE_LOGGER_PATH)")
    lines = p.read_text(encoding="utf-8").splitlines()
    numbered = [(i, line.strip()) for i, line in enumerate(lines, start=1) if line.strip()]
    rows: list[dict[str, Any]] = []
    for k, (lineno, line) in enumerate(numbered):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if k == len(numbered) - 1:
                log.warning("%s:%d is not valid JSON (%s): left out as the torn last line of a killed run",
                            p, lineno, e.msg)
                continue
            raise MetricsFileError(f"{p}:{lineno} is not valid JSON ({e.msg}) and is not the last line: "
                                   "the file is corrupt; remove or repair that line") from e
        if not isinstance(obj, dict):
            raise MetricsFileError(f"{p}:{lineno} holds a JSON {type(obj).__name__}, not an object: "
                                   "metrics.jsonl must hold one {\"step\": ..., ...} object per line")
        rows.append(obj)
    return rows
