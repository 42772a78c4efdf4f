"""Small arithmetic RL data for CPU runs of verl, and its verl reward function.

:func:`write_arithmetic_parquets` draws problems from :mod:`echorl.tasks.arithmetic`, writes them as
a raw file in the layout of LUFFY's training data (OpenR1-Math-46k as LUFFY ships it: chat
``prompt``, the reference solution as the expert trace in ``target``, ``reward_model.ground_truth``;
see :mod:`echorl.data.prepare`) and converts that file with the repository's converter
(:func:`echorl.data.prepare.prepare`, format ``luffy``; the user message is the bare problem, as the
shipped tiny model was warm-started on). So LUFFY and UFT runs read their traces as a user's
converted data holds them; other methods ignore ``target``. :func:`compute_score` is the function
verl's reward loop calls (``reward.custom_reward_function.path=<this file>``,
``reward.custom_reward_function.name=compute_score``); it scores with the task's exact verifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from echorl.data.prepare import prepare
from echorl.tasks import arithmetic
from echorl.tasks import compute_score as task_score

SYSTEM = "Solve the problem step by step, one step per line, and end with 'Answer: N'."


def luffy_raw_rows(problems: Sequence[dict]) -> list[dict]:
    """Arithmetic problems as rows of LUFFY's training parquet (``data_source`` empty and
    ``extra_info.split`` 'default', as in LUFFY's file)."""
    return [{"data_source": "",
             "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p["prompt"]}],
             "target": [{"role": "assistant", "content": p["solution"]}],
             "ability": "math", "reward_model": {"style": "rule", "ground_truth": p["answer"]},
             "extra_info": {"split": "default", "index": i}} for i, p in enumerate(problems)]


def write_arithmetic_parquets(out_dir: str | Path, n_train: int = 16, n_val: int = 4, seed: int = 0,
                              levels: Sequence[int] = (1,)) -> dict[str, str]:
    """Write ``train.parquet`` (``n_train`` rows) and ``val.parquet`` (``n_val`` rows, another seed),
    converted from the raw LUFFY-layout files ``raw/train.parquet`` and ``raw/val.parquet``.

    Returns ``{"train": path, "val": path, "raw_train": path, "raw_val": path}``.
    """
    import pandas as pd

    out = Path(out_dir)
    (out / "raw").mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n, s in (("train", n_train, seed), ("val", n_val, seed + 1)):
        problems = arithmetic.generate(n, seed=s, levels=tuple(levels))
        raw = out / "raw" / f"{split}.parquet"
        pd.DataFrame(luffy_raw_rows(problems)).to_parquet(raw)  # as LUFFY's data/prepare_train.py writes it
        paths[f"raw_{split}"], paths[split] = str(raw), str(out / f"{split}.parquet")
        written = prepare([raw], paths[split], "luffy", split=split, data_source=arithmetic.DATA_SOURCE,
                          template="{question}")
        if written != len(problems):
            raise ValueError(f"arithmetic {split} rows were dropped by the converter ({written} of {len(problems)})")
    return paths


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None, **kwargs: Any) -> float:
    """verl reward function: the task verifier of ``data_source`` (1.0 exact answer, else 0.0)."""
    return float(task_score(data_source, solution_str, ground_truth, extra_info))
