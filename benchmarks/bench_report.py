"""What every benchmark script here ends with: a table on the terminal and a JSON file.

``print_table(title, columns, rows)`` prints through ``rich`` when it is installed (plain,
right-aligned text otherwise); ``machine()`` is the setting every JSON records; ``write_json``
writes the report and says where.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """The machine a measurement ran on: platform, CPU count, load average, Python and torch."""
    import torch

    try:
        load = list(os.getloadavg())
    except OSError:  # not on every platform
        load = None
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg": load,
            "python": sys.version.split()[0], "torch": torch.__version__}


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """One table: ``columns`` names, ``rows`` of already formatted cells (``str()`` is applied)."""
    cells = [[str(c) for c in row] for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(c)), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
        print(title)
        print("  ".join(f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, w) in enumerate(zip(columns, widths))))
        for r in cells:
            print("  ".join(f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, w) in enumerate(zip(r, widths))))
        return
    table = Table(title=title)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for r in cells:
        table.add_row(*r)
    Console(width=max(120, Console().width)).print(table)


def write_json(path: str | Path, report: dict) -> Path:
    """Write ``report`` as indented JSON (creating the folder) and print the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
    return path
