"""Load a policy for evaluation, and export an engine checkpoint to a Hugging Face folder.

Accepted ``MODEL`` arguments:

* ``tiny`` / ``smollm2`` (the engine's built-in models) or a Hugging Face folder (``config.json``);
* an embedded-engine checkpoint (``echorl.local.checkpoint``): a ``global_step_<k>`` folder holding
  ``state.pt``, a ``checkpoints/`` folder, or a run folder (the newest checkpoint named by
  ``latest_checkpointed_iteration.txt`` is used). ``state.pt`` stores the weights and the run's
  config; the architecture and tokenizer come from the config's ``model.name``.

``echorl export CKPT OUT`` writes the checkpoint's policy as a normal folder (``save_pretrained``
of the model and the tokenizer, plus ``echorl_export.json`` naming the source), which
``AutoModelForCausalLM.from_pretrained`` loads with the same outputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LoadedPolicy", "export_checkpoint", "load_policy", "resolve_checkpoint"]


@dataclass
class LoadedPolicy:
    """``model``, ``tokenizer``, ``hf_dir`` (a folder vLLM can load, or None) and ``source`` (text)."""

    model: Any
    tokenizer: Any
    hf_dir: str | None
    source: str
    step: int | None = None


def resolve_checkpoint(path: str | os.PathLike) -> Path | None:
    """The ``global_step_<k>`` folder ``path`` denotes, or None when it is not an engine checkpoint."""
    from echorl.local.checkpoint import latest_checkpoint

    p = Path(path)
    if (p / "state.pt").exists():
        return p
    for root in (p, p / "checkpoints"):
        found = latest_checkpoint(root)
        if found is not None:
            return found
    return None


def load_policy(name: str, dtype: str = "float32", device: str = "cpu", with_model: bool = True) -> LoadedPolicy:
    """Load ``name`` (see the module docstring) onto ``device``; raises ``ValueError`` naming it.

    ``with_model=False`` (the vLLM backend, which loads the weights itself) loads only the tokenizer
    of a Hugging Face folder; ``model`` is then None.
    """
    from echorl.local.trainer import load_model

    ckpt = resolve_checkpoint(name) if os.path.isdir(name) else None
    if not with_model:
        if ckpt is not None or not os.path.isfile(os.path.join(name, "config.json")):
            raise ValueError(f"{name!r} is not a Hugging Face folder, which vLLM needs; convert an engine checkpoint "
                             "with `echorl export CKPT OUT_DIR` (verl checkpoints: docs/evaluation.md)")
        from transformers import AutoTokenizer

        return LoadedPolicy(None, AutoTokenizer.from_pretrained(name), name, f"model {name}")
    if ckpt is not None:
        from echorl.local.checkpoint import load_checkpoint

        st = load_checkpoint(ckpt)
        base = (st.get("config") or {}).get("model", {}).get("name")
        if base is None:
            raise ValueError(f"{ckpt}/state.pt has no config.model.name: cannot tell which model it trained")
        model, tok = load_model(str(base), dtype)
        model.load_state_dict(st["model"])
        pol = LoadedPolicy(model, tok, None, f"engine checkpoint {ckpt} (model.name={base})", int(st["step"]))
    elif name in ("tiny", "smollm2") or os.path.isfile(os.path.join(name, "config.json")):
        model, tok = load_model(name, dtype)
        hf = name if os.path.isdir(name) else getattr(model, "name_or_path", None) or None
        pol = LoadedPolicy(model, tok, hf, f"model {name}")
    else:
        raise ValueError(f"MODEL {name!r} is not tiny, smollm2, a Hugging Face folder (config.json) or an engine "
                         "checkpoint (a folder with state.pt, checkpoints/, or latest_checkpointed_iteration.txt)")
    pol.model.to(device)
    pol.model.eval()
    return pol


def export_checkpoint(ckpt: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the policy of an engine checkpoint as a Hugging Face folder ``out_dir`` (atomically)."""
    from echorl.models.folder import save_folder_atomic

    p = resolve_checkpoint(ckpt)
    if p is None:
        raise ValueError(f"{ckpt} is not an engine checkpoint (no state.pt, checkpoints/ or "
                         "latest_checkpointed_iteration.txt); verl checkpoints use verl's model merger (docs/evaluation.md)")
    pol = load_policy(str(p))
    out = Path(out_dir)
    save_folder_atomic(pol.model, pol.tokenizer, out, "echorl_export.json",
                       {"source": str(p.resolve()), "step": pol.step, "loaded_as": pol.source})
    return out
