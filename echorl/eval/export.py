"""``echorl export CKPT OUT``: an engine checkpoint's policy as a Hugging Face folder.

Writes ``save_pretrained`` of the model and the tokenizer, plus ``echorl_export.json`` naming the
source, which ``AutoModelForCausalLM.from_pretrained`` loads with the same outputs. Checkpoints
are found and loaded by :func:`echorl.models.loading.load_policy`.
"""

from __future__ import annotations

import os
from pathlib import Path

from echorl.models.folder import save_folder_atomic
from echorl.models.loading import load_policy, resolve_checkpoint

__all__ = ["export_checkpoint"]


def export_checkpoint(ckpt: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the policy of an engine checkpoint as a Hugging Face folder ``out_dir`` (atomically)."""
    p = resolve_checkpoint(ckpt)
    if p is None:
        raise ValueError(f"{ckpt} is not an engine checkpoint (no state.pt, checkpoints/ or "
                         "latest_checkpointed_iteration.txt); verl checkpoints use verl's model merger (docs/evaluation.md)")
    pol = load_policy(str(p))
    out = Path(out_dir)
    save_folder_atomic(pol.model, pol.tokenizer, out, "echorl_export.json",
                       {"source": str(p.resolve()), "step": pol.step, "loaded_as": pol.source})
    return out
