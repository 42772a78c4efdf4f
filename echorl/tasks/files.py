"""The one reader of dataset files (training data, benchmarks, sources of ``echorl.data.prepare``).

The rule, by file name ending (case-insensitive):

* ``.jsonl``: one JSON object per line (blank lines skipped);
* ``.json``: one JSON document, a list of objects;
* ``.parquet``: a table, one row per record (``pyarrow``).

Anything else is refused. Errors name the file, the line (and row) and the fix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["DATASET_SUFFIXES", "DataFormatError", "is_dataset_file", "read_rows"]

DATASET_SUFFIXES = (".jsonl", ".json", ".parquet")


class DataFormatError(ValueError):
    """A dataset file or one of its rows is malformed (the message names the file, the row and the fix)."""


def is_dataset_file(name: str | os.PathLike) -> bool:
    """True when ``name`` ends with one of :data:`DATASET_SUFFIXES`."""
    return str(name).lower().endswith(DATASET_SUFFIXES)


def read_rows(path: str | os.PathLike) -> list[Any]:
    """The rows of a ``.jsonl``, ``.json`` or ``.parquet`` file, in file order (see the module rule).

    Raises:
        FileNotFoundError: the file does not exist.
        DataFormatError: a ``.jsonl`` line or the ``.json`` document is not valid JSON, or the
            ``.json`` document is not a list.
        ValueError: another file type.
    """
    p = Path(path)
    low = p.name.lower()
    if not is_dataset_file(low):
        raise ValueError(f"{p}: unsupported file type {p.suffix.lower()!r}; use .jsonl (one JSON object per line), "
                         ".json (a JSON list of objects) or .parquet")
    if not p.exists():
        raise FileNotFoundError(f"dataset file not found: {p}")
    if low.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist()
    if low.endswith(".jsonl"):
        rows: list[Any] = []
        with open(p, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataFormatError(f"{p}: line {lineno} (row {len(rows)}) is not valid JSON: {e.msg}") from None
        return rows
    with open(p, encoding="utf-8") as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{p}: not one JSON document ({e.msg} at line {e.lineno}); a .json file holds a "
                                  "JSON list of row objects; for one object per line name the file .jsonl") from None
    if not isinstance(data, list):
        raise DataFormatError(f"{p}: expected a JSON list of rows, got {type(data).__name__}; a .json file holds a "
                              "JSON list of row objects")
    return data
