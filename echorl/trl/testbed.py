"""The chain testbed for TRL: dataset, reward function and model (docs/trl.md "The example").

The same task and model as the embedded engine's testbed (``echorl/config/testbed.yaml``):
:mod:`echorl.tasks.chain` problems as one-message chats (the tiny-chain tokenizer's chat template
renders them as the engine's ``data.chat_template=auto`` does) and the shipped ``tiny-chain`` model.
The example (``scripts/trl_grpo_chain.py``), the benchmark (``benchmarks/bench_trl_host.py``) and
the tests build their runs from these pieces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from echorl.tasks import chain

__all__ = ["chain_dataset", "chain_reward", "load_chain_model"]


def chain_dataset(num_rows: int, seed: int = 0, split: str = "train") -> Any:
    """A ``datasets.Dataset`` of ``num_rows`` chain problems: columns ``prompt`` (a one-message chat)
    and ``answer`` (the reference, passed to the reward function by TRL)."""
    from datasets import Dataset

    rows = chain.generate(num_rows, seed=seed, split=split)
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": r["prompt"]}] for r in rows],
                              "answer": [r["answer"] for r in rows]})


def _text(completion: Any) -> str:
    return completion[-1]["content"] if isinstance(completion, list) else str(completion)


def chain_reward() -> Callable[..., list[float]]:
    """TRL reward function: 1.0 when the completion's ``Answer: N`` line is the reference, else 0.0
    (:func:`echorl.tasks.chain.score`)."""

    def chain_verifier(prompts: list, completions: list, answer: list[str], **_: Any) -> list[float]:
        return [float(chain.score(_text(c), a)) for c, a in zip(completions, answer, strict=True)]

    return chain_verifier


def load_chain_model() -> tuple[Any, Any]:
    """``(model, tokenizer)``: the shipped tiny-chain model (float32), a fresh copy on each call."""
    from echorl.models.tiny import RECIPES, load_tiny_model  # imports torch: the datasets and reward stay light

    return load_tiny_model(recipe=RECIPES["tiny-chain"])
