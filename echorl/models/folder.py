"""Model folders: where built models are cached (:func:`cache_root`, the one rule) and an atomic
writer with its version check (shared by the tiny-model build, the SmolLM2 conversion and Qwen2.5's
tokenizer): concurrent builders never see a
half-written folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

CACHE_ENV = "ECHORL_CACHE"


def cache_root() -> Path:
    """Where EchoRL caches built model folders: ``$ECHORL_CACHE`` when set (and non-empty), else
    ``~/.cache/echorl``."""
    return Path(os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "echorl"))


def folder_is_current(out_dir: Path, meta_file: str, version: int) -> bool:
    """True when ``out_dir`` holds a folder that :func:`save_folder_atomic` wrote with ``meta``
    version ``version`` (a missing or unreadable meta file, or another version: rebuild)."""
    try:
        return json.loads((Path(out_dir) / meta_file).read_text()).get("version") == version
    except (OSError, ValueError):
        return False


def save_folder_atomic(model: Any, tokenizer: Any, out_dir: Path, meta_file: str, meta: dict[str, Any]) -> None:
    """Save ``model`` (``None``: a tokenizer-only folder), ``tokenizer`` and ``meta`` (as JSON in
    ``meta_file``) into ``out_dir``.

    Written to a temporary sibling folder and renamed into place; if another process renamed its
    own copy first, theirs is kept.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache is an ordinary shared folder
    try:
        if model is not None:
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / meta_file).write_text(json.dumps(meta, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir, ignore_errors=True)
        try:
            os.replace(tmp, out_dir)
        except OSError:  # another process won the race: keep theirs
            if not (out_dir / meta_file).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
