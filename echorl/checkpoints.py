"""Checkpoints of the embedded engine: everything a resumed run needs to continue bit-exactly.

``<output_dir>/checkpoints/global_step_<k>/state.pt`` holds the model and optimizer state, the
scheduler, the RNG states of python, numpy and torch, the prompt sampler's position and the step;
``latest_checkpointed_iteration.txt`` (verl's file name) names the last complete one. A checkpoint
is written to a temporary folder and renamed, so a run killed mid-save leaves the previous one
intact. Pruning (``trainer.max_ckpt_to_keep``) always keeps the checkpoint just written; ``resume=disable``
moves a previous run's checkpoints aside first (:mod:`echorl.local.resume`).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["rng_state", "set_rng_state", "save_checkpoint", "prune", "latest_checkpoint", "load_checkpoint"]

LATEST = "latest_checkpointed_iteration.txt"


def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch (and CUDA when present)."""
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_checkpoint(ckpt_dir: str | os.PathLike, step: int, state: dict[str, Any], max_keep: int = -1) -> Path:
    """Write ``state`` (+ RNG states) as ``global_step_<step>`` atomically; keep the newest ``max_keep``."""
    root = Path(ckpt_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"global_step_{step}"
    tmp = root / f".tmp_global_step_{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save({**state, "rng": rng_state(), "step": step}, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    (root / (LATEST + ".tmp")).write_text(str(step))
    os.replace(root / (LATEST + ".tmp"), root / LATEST)
    if max_keep and max_keep > 0:
        prune(root, step, max_keep)
    return final


def prune(root: Path, step: int, max_keep: int) -> list[int]:
    """Delete checkpoints so that ``global_step_<step>`` (just written, named by the latest pointer) and
    the ``max_keep - 1`` newest before it remain. Folders of higher steps are stale (a save that
    never reached the pointer, before a crash) and are deleted too. Returns the deleted steps."""
    steps = sorted(int(p.name.split("_")[-1]) for p in root.glob("global_step_*") if p.name.split("_")[-1].isdigit())
    older = [s for s in steps if s < step]
    gone = [s for s in steps if s > step] + (older[:-(max_keep - 1)] if max_keep > 1 else older)
    for s in gone:
        shutil.rmtree(root / f"global_step_{s}", ignore_errors=True)
    return sorted(gone)


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The folder named by ``latest_checkpointed_iteration.txt``, or None."""
    f = Path(ckpt_dir) / LATEST
    if not f.exists():
        return None
    path = Path(ckpt_dir) / f"global_step_{int(f.read_text().strip())}"
    return path if (path / "state.pt").exists() else None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The saved state dict (RNG states are *not* applied; call :func:`set_rng_state`)."""
    return torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=False)
