"""Tasks for the embedded engine: generators, verifiers and dataset loading.

A *task* makes rows and scores responses. Rows share one format, whatever their origin::

    {"prompt": str, "answer": str, "data_source": str, "level": int, "solution": str,
     "extra_info": dict (optional, task-specific; reasoning-gym keeps its entry here)}

``prompt`` is the user message (the engine applies the model's chat template); ``answer`` the
ground truth handed to the verifier; ``solution`` a reference response in the line-per-step format.

Registered tasks (``get_task(name)``):

* ``arithmetic`` -- :mod:`echorl.tasks.arithmetic`, synthetic multi-step arithmetic (default).
* ``chain`` -- :mod:`echorl.tasks.chain`, the EchoRL testbed: left-to-right chains with one hard
  multiplication step; splits ``train`` / ``dev`` / ``test`` / ``ood`` (``task_kwargs.split``).
* ``rg/gsm_symbolic``, ``rg/basic_arithmetic``, ``rg/countdown``, ``rg/chain_sum`` --
  :mod:`echorl.tasks.reasoning_gym` adapters (needs ``pip install reasoning-gym``, the ``models`` extra).

``load_dataset(name_or_path)`` generates rows of a registered task, or reads a JSONL / JSON /
parquet file and checks every row has ``prompt`` and ``answer`` (the error names row and field).
``compute_score(data_source, solution_str, answer, extra_info)`` dispatches on ``data_source``.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from echorl.tasks import arithmetic, chain
from echorl.tasks.base import Task
from echorl.tasks.files import is_dataset_file, read_rows

__all__ = ["REQUIRED_FIELDS", "Task", "compute_score", "get_task", "load_dataset", "task_names", "validate_rows"]

REQUIRED_FIELDS = ("prompt", "answer")


def _arith_score(solution_str: Any, answer: Any, extra_info: Any = None) -> float:
    return arithmetic.score(solution_str, answer)


_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry; a second task under the same name is refused."""
    if task.name in _TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    _TASKS[task.name] = task
    return task


register_task(Task("arithmetic", arithmetic.DATA_SOURCE, arithmetic.generate, _arith_score,
                   "synthetic multi-step arithmetic, one step per line, levels 1-5"))
register_task(Task("chain", chain.DATA_SOURCE, chain.generate, _arith_score,
                   "testbed: 4-step left-to-right chains, one hard multiplication; splits train/dev/test/ood"))


def _register_rg() -> None:
    from echorl.tasks import reasoning_gym as rg_adapters  # imports reasoning_gym lazily itself

    for name in rg_adapters.ADAPTERS:
        register_task(rg_adapters.make_task(name))


_register_rg()


def task_names() -> list[str]:
    """Names accepted by :func:`get_task` and :func:`load_dataset`."""
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    """The registered task ``name``; an unknown name raises ``ValueError`` listing the valid ones."""
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid tasks are {task_names()} (or a .jsonl/.json/.parquet path)") from None


def compute_score(data_source: str, solution_str: Any, answer: Any, extra_info: Any = None) -> float:
    """Score one response with the verifier of the task whose ``data_source`` matches."""
    for task in _TASKS.values():
        if task.data_source == data_source:
            return float(task.score(solution_str, answer, extra_info))
    raise ValueError(f"no task has data_source {data_source!r}; known: {sorted(t.data_source for t in _TASKS.values())}")


def validate_rows(rows: list[Any], source: str = "dataset") -> list[dict[str, Any]]:
    """Check every row is a dict holding non-null ``prompt`` and ``answer``.

    A row without ``answer`` but with verl's ``reward_model.ground_truth`` gets that as its answer.
    Raises ``ValueError`` naming ``source``, the row index and the missing field.
    """
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{source}: row {i} is a {type(row).__name__}, expected a dict with fields {list(REQUIRED_FIELDS)}")
        if row.get("answer") is None and isinstance(row.get("reward_model"), dict) \
                and row["reward_model"].get("ground_truth") is not None:
            row = {**row, "answer": row["reward_model"]["ground_truth"]}
        for f in REQUIRED_FIELDS:
            if row.get(f) is None:
                raise ValueError(f"{source}: row {i} is missing required field {f!r} (has {sorted(row)}); "
                                 f"every row needs {list(REQUIRED_FIELDS)}")
        out.append(row)
    return out


def load_dataset(name_or_path: str, n: int | None = None, seed: int = 0, **task_kwargs: Any) -> list[dict[str, Any]]:
    """Rows of a registered task (generated) or of a file (read and validated).

    Args:
        name_or_path: a name from :func:`task_names` or a ``.jsonl`` (one object per line), ``.json``
            (a list of objects) or ``.parquet`` path (:mod:`echorl.tasks.files`).
        n: rows to generate (default 1024), or the first ``n`` rows of a file (default all).
        seed: generation seed (tasks only).
        **task_kwargs: passed to the task's ``generate`` (e.g. ``levels=(1, 2, 3)``).
    """
    if name_or_path not in _TASKS and (os.path.exists(name_or_path) or os.sep in name_or_path
                                       or is_dataset_file(name_or_path)):
        if not os.path.exists(name_or_path):
            raise FileNotFoundError(f"dataset file not found: {name_or_path}")
        if task_kwargs:
            raise ValueError(f"{name_or_path}: options {sorted(task_kwargs)} apply to generated tasks, not to files")
        rows = read_rows(name_or_path)
        if n is not None:
            rows = rows[:n]
        rows = validate_rows(rows, source=name_or_path)
        if not rows:
            raise ValueError(f"{name_or_path}: no rows")
        return rows
    task = get_task(name_or_path)
    params = inspect.signature(task.generate).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        accepted = sorted(k for k in params if k not in ("n", "seed"))
        bad = sorted(set(task_kwargs) - set(params))
        if bad:
            raise ValueError(f"task {name_or_path!r} takes no option(s) {bad}; its options are {accepted}")
    return task.generate(1024 if n is None else n, seed=seed, **task_kwargs)
