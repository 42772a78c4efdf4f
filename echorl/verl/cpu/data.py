"""Small arithmetic RL data for CPU runs of verl, and its verl reward function.

:func:`write_arithmetic_parquets` draws problems from :mod:`echorl.tasks.arithmetic` and writes
them in verl's RL parquet layout with the repository's converter
(:func:`echorl.data.prepare.convert_rows`, format ``math``; the user message is the bare problem,
as the shipped tiny model was warm-started on) plus a ``target`` column holding the reference
solution (the expert trace LUFFY and UFT train on; other methods ignore it). :func:`compute_score` is the function verl's
reward loop calls (``reward.custom_reward_function.path=<this file>``,
``reward.custom_reward_function.name=compute_score``); it scores with the task's exact verifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_arithmetic_parquets(out_dir: str | Path, n_train: int = 16, n_val: int = 4, seed: int = 0,
                              levels: Sequence[int] = (1,)) -> dict[str, str]:
    """Write ``train.parquet`` (``n_train`` rows) and ``val.parquet`` (``n_val`` rows, another seed).

    Returns ``{"train": path, "val": path}``.
    """
    from echorl.data.prepare import convert_rows, write_parquet
    from echorl.tasks import arithmetic

    out = Path(out_dir)
    paths = {}
    for split, n, s in (("train", n_train, seed), ("val", n_val, seed + 1)):
        problems = arithmetic.generate(n, seed=s, levels=tuple(levels))
        rows = [{"problem": r["prompt"], "answer": r["answer"]} for r in problems]
        verl_rows = convert_rows(rows, "math", split=split, data_source=arithmetic.DATA_SOURCE, template="{question}")
        if len(verl_rows) != len(problems):
            raise ValueError(f"arithmetic {split} rows were dropped by the converter ({len(verl_rows)} of {len(problems)})")
        for row, problem in zip(verl_rows, problems):
            row["target"] = problem["solution"]
        paths[split] = str(out / f"{split}.parquet")
        write_parquet(verl_rows, paths[split])
    return paths


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None, **kwargs: Any) -> float:
    """verl reward function: the task verifier of ``data_source`` (1.0 exact answer, else 0.0)."""
    from echorl.tasks import compute_score as task_score

    return float(task_score(data_source, solution_str, ground_truth, extra_info))
