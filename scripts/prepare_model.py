"""Write a model folder whose ``config.json`` carries LUFFY's context settings.

LUFFY (Yan et al. 2025) trains Qwen2.5-Math-7B with the rotary base raised from 10000 to 40000 and
16k positions (the authors' ``Elliott/Qwen2.5-Math-7B-16k-think``; docs/methods.md). verl 0.9.1 cannot
apply a rotary change through ``override_config`` (transformers 5 reads ``rope_theta`` into
``rope_parameters`` when ``config.json`` loads), so the change has to be in the folder the run loads:

    python scripts/prepare_model.py --model Qwen/Qwen2.5-Math-7B --out $HOME/models/qwen2.5-math-7b-luffy
    MODEL_PATH=$HOME/models/qwen2.5-math-7b-luffy ECHO=on recipes/luffy/run.sh

The output folder holds a new ``config.json`` (``rope_theta`` in ``rope_parameters`` when the source
config has that dict, at the top level otherwise; ``max_position_embeddings``) and a symbolic link to
every other file of the source (``--copy`` copies them instead). ``--model`` is a local folder or a
Hugging Face id (downloaded with ``huggingface_hub.snapshot_download``). The result is checked by
loading it with ``transformers.AutoConfig``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

LUFFY_ROPE_THETA = 40000.0
LUFFY_MAX_POSITIONS = 16384


def resolve_source(model: str) -> Path:
    """A local folder as is; otherwise a Hugging Face id, downloaded into the hub cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model))


def patched_config(config: dict, rope_theta: float, max_positions: int) -> dict:
    """``config`` (a parsed ``config.json``) with the rotary base and the position limit set."""
    out = dict(config)
    if isinstance(out.get("rope_parameters"), dict):  # transformers 5 layout
        out["rope_parameters"] = {**out["rope_parameters"], "rope_theta": float(rope_theta)}
        out.pop("rope_theta", None)
    else:
        out["rope_theta"] = float(rope_theta)
    out["max_position_embeddings"] = int(max_positions)
    return out


def effective_rope_theta(folder: Path) -> tuple[float, int]:
    """``(rope_theta, max_position_embeddings)`` as transformers reads the folder's config."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(folder))
    params = getattr(cfg, "rope_parameters", None)
    theta = params.get("rope_theta") if isinstance(params, dict) else getattr(cfg, "rope_theta", None)
    return float(theta), int(cfg.max_position_embeddings)


def prepare_model(source: Path, out: Path, *, rope_theta: float = LUFFY_ROPE_THETA,
                  max_positions: int = LUFFY_MAX_POSITIONS, copy: bool = False, force: bool = False) -> Path:
    """Write ``out`` (see the module docstring) and return it."""
    cfg_path = source / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{source} has no config.json: pass a model folder or a Hugging Face model id")
    if out.resolve() == source.resolve():
        raise ValueError(f"--out must differ from the source folder {source} (the source stays untouched)")
    if out.exists():
        if not force:
            raise FileExistsError(f"{out} exists: pass --force to replace it, or another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for item in sorted(source.iterdir()):
        if item.name == "config.json" or item.name.startswith("."):
            continue
        target = out / item.name
        if copy:
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, target)
        else:
            os.symlink(item.resolve(), target)
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    (out / "config.json").write_text(json.dumps(patched_config(config, rope_theta, max_positions), indent=2) + "\n",
                                     encoding="utf-8")
    got = effective_rope_theta(out)
    if got != (float(rope_theta), int(max_positions)):
        raise RuntimeError(f"transformers reads {out} as rope_theta={got[0]}, max_position_embeddings={got[1]}, "
                           f"not {rope_theta}, {max_positions}: this config layout is not handled")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="source model: a local folder or a Hugging Face id")
    ap.add_argument("--out", required=True, help="folder to write (the source is never modified)")
    ap.add_argument("--rope-theta", type=float, default=LUFFY_ROPE_THETA, help="rotary base (LUFFY: 40000)")
    ap.add_argument("--max-position-embeddings", type=int, default=LUFFY_MAX_POSITIONS,
                    help="position limit (LUFFY: 16384)")
    ap.add_argument("--copy", action="store_true", help="copy the other files instead of linking them")
    ap.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = ap.parse_args(argv)
    out = prepare_model(resolve_source(args.model), Path(args.out).expanduser(), rope_theta=args.rope_theta,
                        max_positions=args.max_position_embeddings, copy=args.copy, force=args.force)
    print(f"wrote {out}: rope_theta={args.rope_theta}, max_position_embeddings={args.max_position_embeddings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
