"""The one way EchoRL draws and saves a figure: matplotlib's Agg backend (no display), tight
layout, the folder created, the figure closed after saving."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int | None = None) -> Path:
    """Lay ``fig`` out, write it to ``path`` as PNG (creating the folder), close it, return the path."""
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    pyplot().close(fig)
    return out
