"""Training prompts for the embedded engine: loading, checking, encoding, and a resumable sampler.

* :func:`prepare_prompts` loads rows (``echorl.tasks.load_dataset``: a task name or a file; a row
  missing a field is an error naming the row and the field), checks each row's ``data_source`` has
  a verifier, applies the chat template, tokenizes, and enforces ``data.max_prompt_length``: an
  overlong prompt is an error naming the row (``overlong_prompt=error``) or is dropped, counted and
  warned about (``skip``); never truncated.
* :class:`PromptSampler` hands out ``train_batch_size`` rows per step: a seeded permutation per
  epoch, the last incomplete batch of an epoch dropped (as verl's dataloader does). Its state
  (epoch, cursor) goes into checkpoints, so a resumed run sees the same prompts.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from echorl.prompts import encode_prompts, format_prompts
from echorl.tasks import get_task, load_dataset, task_names, validate_rows

__all__ = ["PromptSet", "PromptSampler", "prepare_prompts"]


@dataclass
class PromptSet:
    """Rows that passed the checks, with their encoded prompts (``ids[i]`` for ``rows[i]``)."""

    rows: list[dict[str, Any]]
    ids: list[list[int]]
    skipped_too_long: int = 0
    source_index: list[int] = field(default_factory=list)  # row index in the loaded dataset


def prepare_prompts(cfg_data: Any, tokenizer: Any, rows: list[dict[str, Any]] | None = None,
                    custom_verifier: bool = False) -> PromptSet:
    """Load (unless ``rows`` is given), check and encode the training prompts.

    Args:
        cfg_data: the ``data`` config node (``task``, ``num_rows``, ``task_kwargs``, ``seed``,
            ``max_prompt_length``, ``overlong_prompt``, ``chat_template``).
        tokenizer: the model's tokenizer.
        rows: rows to use instead of loading ``cfg_data.task`` (tests, notebooks).
        custom_verifier: ``reward.score_fn`` is set: it receives every row's ``data_source``
            (whatever it is, e.g. a verl-prepared parquet's ``lighteval/MATH``; ``unknown`` when
            the row has none), so the built-in dispatch's sources are not required.

    A prompt is a string or a list of chat messages (verl's parquet format); see
    :func:`echorl.prompts.format_prompts`.

    Raises:
        ValueError: a row lacks a field, has an unknown ``data_source`` (built-in verifiers), a
            prompt of the wrong type, or is longer than ``max_prompt_length`` with
            ``overlong_prompt=error``; each message names the row.
    """
    task = str(cfg_data.task)
    if rows is None:
        kw = dict(cfg_data.get("task_kwargs") or {})
        try:
            rows = load_dataset(task, n=cfg_data.get("num_rows"), seed=int(cfg_data.seed), **kw)
        except ValueError as e:
            raise ValueError(f"data.task={task}: {e}") from None
    rows = validate_rows(list(rows), source=f"data.task={task}")
    default_source = get_task(task).data_source if task in task_names() else None
    known = {get_task(t).data_source for t in task_names()}
    for i, row in enumerate(rows):
        ds = row.get("data_source", default_source)
        if ds is None and custom_verifier:
            ds = "unknown"  # verl's name for a row without one; the custom verifier gets it
        if ds is None:
            raise ValueError(f"data.task={task}: row {i} is missing field 'data_source' (needed to pick its verifier; "
                             f"known data sources: {sorted(known)})")
        if ds not in known and not custom_verifier:
            raise ValueError(f"data.task={task}: row {i} has data_source={ds!r}, which no task verifies; "
                             f"known: {sorted(known)}; or set reward.score_fn to a verifier for it (for "
                             "math: reward.score_fn=echorl.rewards.math:compute_score)")
        if "data_source" not in row:
            rows[i] = {**row, "data_source": ds}
    try:
        texts = format_prompts(tokenizer, [r["prompt"] for r in rows], cfg_data.chat_template, label="row")
    except ValueError as e:
        raise ValueError(f"data.task={task}: {e}") from None
    ids = encode_prompts(tokenizer, texts)
    limit = int(cfg_data.max_prompt_length)
    lens = np.array([len(x) for x in ids])
    empty = np.flatnonzero(lens == 0)
    if len(empty):
        raise ValueError(f"data.task={task}: row {int(empty[0])} has an empty prompt after tokenization")
    over = np.flatnonzero(lens > limit)
    if len(over) and cfg_data.overlong_prompt == "error":
        first = int(over[0])
        raise ValueError(
            f"data.task={task}: {len(over)} of {len(rows)} prompts are longer than data.max_prompt_length={limit} "
            f"tokens (first: row {first}, {int(lens[first])} tokens); raise data.max_prompt_length or set "
            "data.overlong_prompt=skip to drop them (prompts are never truncated)")
    keep = np.flatnonzero(lens <= limit)
    if len(over):
        warnings.warn(f"data.task={task}: skipped {len(over)} of {len(rows)} prompts longer than "
                      f"data.max_prompt_length={limit} tokens (rows {over[:5].tolist()}...)", stacklevel=2)
    if len(keep) == 0:
        raise ValueError(f"data.task={task}: no prompt fits data.max_prompt_length={limit}")
    return PromptSet(rows=[rows[i] for i in keep], ids=[ids[i] for i in keep], skipped_too_long=len(over),
                     source_index=keep.tolist())


class PromptSampler:
    """Seeded, resumable batches of row indices (``state_dict`` / ``load_state_dict``)."""

    def __init__(self, num_rows: int, batch_size: int, shuffle: bool, seed: int):
        if batch_size > num_rows:
            raise ValueError(f"data.train_batch_size ({batch_size}) is larger than the dataset ({num_rows} usable rows)")
        self.num_rows, self.batch_size, self.shuffle, self.seed = num_rows, batch_size, shuffle, seed
        self.epoch, self.cursor = 0, 0

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_rows)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.num_rows)

    def next_batch(self) -> np.ndarray:
        """``[train_batch_size]`` row indices of the next step."""
        if self.cursor + self.batch_size > self.num_rows:
            self.epoch, self.cursor = self.epoch + 1, 0
        idx = self._order()[self.cursor:self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return idx

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "num_rows": self.num_rows}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["num_rows"] != self.num_rows:
            raise ValueError(f"checkpoint was made with {state['num_rows']} usable rows, the dataset now has "
                             f"{self.num_rows}; resume with the same data.* settings or resume=disable")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
