"""The one model/tokenizer loader: a model name or folder -> ``(model, tokenizer)``.

Used by the engine (``model.name``), the evaluation and the analysis commands, the study and the
scripts. ``tiny`` / ``tiny-chain`` are the shipped tiny Qwen2 models (:mod:`echorl.models.tiny`),
``smollm2`` SmolLM2-135M-Instruct (:mod:`echorl.models.smollm2`, from the local cache), anything
else a Hugging Face folder. No hub downloads (``HF_HUB_OFFLINE=1``).

:func:`load_policy` also accepts an embedded-engine checkpoint (:mod:`echorl.checkpoints`): a
``global_step_<k>`` folder holding ``state.pt``, a ``checkpoints/`` folder, or a run folder (the
newest checkpoint named by ``latest_checkpointed_iteration.txt`` is used). ``state.pt`` stores
the weights and the run's config; the architecture and tokenizer come from the config's
``model.name``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from echorl.checkpoints import latest_checkpoint, load_checkpoint
from echorl.models.smollm2 import load_smollm2
from echorl.models.tiny import RECIPES, load_tiny_model

__all__ = ["BUILTIN_MODELS", "LoadedPolicy", "load_model", "load_policy", "resolve_checkpoint"]

BUILTIN_MODELS = ("tiny", "tiny-chain", "smollm2")


def load_model(name: str, dtype: str = "float32") -> tuple[Any, Any]:
    """``(model, tokenizer)`` for ``model.name``: ``tiny``, ``tiny-chain`` (the testbed model),
    ``smollm2`` or a Hugging Face folder."""
    if name in ("tiny", "tiny-chain"):  # BUILTIN_MODELS
        model, tok = load_tiny_model(recipe=RECIPES[name])
    elif name == "smollm2":
        model, tok = load_smollm2()
    else:
        if not os.path.isdir(name):
            raise ValueError(f"model.name={name!r} is neither 'tiny', 'tiny-chain', 'smollm2' nor an existing model folder "
                             "(no hub downloads here: HF_HUB_OFFLINE=1)")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name)
    tok = _checked_tokenizer(tok)
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"model.dtype must be float32 or bfloat16, got {dtype!r}")
    return model.to(getattr(torch, dtype)), tok


def _checked_tokenizer(tok: Any) -> Any:
    """Guard against a tokenizer that silently drops newlines (the step boundary).

    transformers 5 ``AutoTokenizer`` picks the tokenizer class from ``config.json``'s model type: a
    character-level ``tokenizer.json`` saved beside a Qwen2 config is loaded as ``Qwen2Tokenizer``,
    whose byte-level pre-tokenizer maps ``"\n"`` and ``" "`` to tokens the char vocabulary lacks, so
    they vanish. When text does not survive an encode/decode round trip, reload the folder's
    ``tokenizer.json`` as it was saved (``PreTrainedTokenizerFast``); if that also fails, refuse.
    """
    probe = "12+3=15\nAnswer: 15"

    def ok(t: Any) -> bool:
        return t.decode(t(probe, add_special_tokens=False)["input_ids"]) == probe

    if ok(tok):
        return tok
    path = getattr(tok, "name_or_path", "")
    if path and os.path.exists(os.path.join(path, "tokenizer.json")):
        from transformers import PreTrainedTokenizerFast

        fixed = PreTrainedTokenizerFast.from_pretrained(path)
        if ok(fixed):
            warnings.warn(f"{type(tok).__name__} loaded from {path} does not round-trip text (newlines/spaces lost); "
                          "using the folder's tokenizer.json as saved (PreTrainedTokenizerFast)", stacklevel=3)
            return fixed
    raise ValueError(f"the tokenizer {type(tok).__name__} ({path!r}) does not round-trip {probe!r}: "
                     f"got {tok.decode(tok(probe, add_special_tokens=False)['input_ids'])!r}; newlines (step boundaries) "
                     "would be lost")


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
    ckpt = resolve_checkpoint(name) if os.path.isdir(name) else None
    if not with_model:
        if ckpt is not None or not os.path.isfile(os.path.join(name, "config.json")):
            raise ValueError(f"{name!r} is not a Hugging Face folder, which vLLM needs; convert an engine checkpoint "
                             "with `echorl export CKPT OUT_DIR` (verl checkpoints: docs/evaluation.md)")
        from transformers import AutoTokenizer

        return LoadedPolicy(None, AutoTokenizer.from_pretrained(name), name, f"model {name}")
    if ckpt is not None:
        st = load_checkpoint(ckpt)
        base = (st.get("config") or {}).get("model", {}).get("name")
        if base is None:
            raise ValueError(f"{ckpt}/state.pt has no config.model.name: cannot tell which model it trained")
        model, tok = load_model(str(base), dtype)
        model.load_state_dict(st["model"])
        pol = LoadedPolicy(model, tok, None, f"engine checkpoint {ckpt} (model.name={base})", int(st["step"]))
    elif name in BUILTIN_MODELS or os.path.isfile(os.path.join(name, "config.json")):
        model, tok = load_model(name, dtype)
        hf = name if os.path.isdir(name) else getattr(model, "name_or_path", None) or None
        pol = LoadedPolicy(model, tok, hf, f"model {name}")
    else:
        raise ValueError(f"MODEL {name!r} is not a built-in model ({', '.join(BUILTIN_MODELS)}), a Hugging Face folder "
                         "(config.json) or an engine checkpoint (a folder with state.pt, checkpoints/, or "
                         "latest_checkpointed_iteration.txt)")
    pol.model.to(device)
    pol.model.eval()
    return pol
