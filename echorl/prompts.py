"""Prompt text and prompt ids: what a model is given, the same in training, evaluation and analysis.

A prompt is a string (one user message) or a list of chat messages (verl's parquet format).
:func:`format_prompts` renders it (through the tokenizer's chat template when there is one and
``chat_template`` allows it) and :func:`encode_prompts` turns the texts into token ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["is_chat", "format_prompts", "encode_prompts"]


def is_chat(prompt: Any) -> bool:
    """A prompt in verl's parquet format: a list of ``{"role", "content"}`` messages."""
    return isinstance(prompt, (list, tuple)) and len(prompt) > 0 and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in prompt)


def format_prompts(tokenizer: Any, prompts: Sequence[Any], chat_template: str | bool, label: str = "prompt") -> list[str]:
    """The text each prompt is encoded from.

    A prompt is a string (one user message) or a list of chat messages (verl's parquet format,
    rendered as they are). The chat template applies with ``auto`` when the tokenizer has one and
    with ``true`` (required); without it a string stays as it is and a chat prompt becomes its
    last user message.

    Raises:
        ValueError: ``chat_template`` is true and the tokenizer has none; a prompt is neither a
            string nor a chat message list, or a chat prompt has no user message (naming it as
            ``<label> <index>``).
    """
    has = bool(getattr(tokenizer, "chat_template", None))
    mode = str(chat_template).lower()
    if mode not in ("auto", "true", "false"):
        raise ValueError(f"data.chat_template must be auto, true or false, got {chat_template!r}")
    if mode == "true" and not has:
        raise ValueError(
            f"data.chat_template=true but the tokenizer ({type(tokenizer).__name__}, "
            f"{getattr(tokenizer, 'name_or_path', '?')!r}) has no chat template; set data.chat_template=false to "
            "feed the raw prompt text, or use a model whose tokenizer defines one")
    templated = mode != "false" and has
    out = []
    for i, p in enumerate(prompts):
        if is_chat(p):
            messages = [dict(m) for m in p]
            if not templated:
                users = [m["content"] for m in messages if m["role"] == "user"]
                if not users:
                    raise ValueError(f"{label} {i}: the chat prompt has no user message (roles "
                                     f"{[m['role'] for m in messages]})")
                out.append(str(users[-1]))
                continue
        elif isinstance(p, str):
            if not templated:
                out.append(p)
                continue
            messages = [{"role": "user", "content": p}]
        else:
            raise ValueError(f"{label} {i}: must be a string or a list of chat messages ({{'role', 'content'}} "
                             f"dicts), got {type(p).__name__}")
        out.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return out


def encode_prompts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt text (no special tokens added beyond what the text holds)."""
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
