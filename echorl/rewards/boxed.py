"""Extract the last \\boxed{...} answer of a text (no heavy imports: used by data preparation too)."""

from __future__ import annotations

__all__ = ["last_boxed"]

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces), or None.

    Also accepts the brace-less ``\\boxed 5`` form (up to the next whitespace or ``$``).
    """
    best, best_pos = None, -1
    for cmd in _BOX_COMMANDS:
        pos = text.rfind(cmd)
        while pos != -1:
            content = _box_content(text, pos + len(cmd))
            if content is not None:
                if pos > best_pos:
                    best, best_pos = content, pos
                break
            pos = text.rfind(cmd, 0, pos)
    return best


def _box_content(text: str, i: int) -> str | None:
    """Argument of a box command whose name ends at index ``i``; None if malformed/unclosed."""
    if i < len(text) and text[i] == "{":
        depth = 0
        for j in range(i, len(text)):
            c = text[j]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1:j]
        return None
    if i < len(text) and text[i] == " ":
        rest = text[i + 1:].lstrip(" ")
        token = rest.split("$")[0].split()[0] if rest.split() else ""
        return token or None
    return None
