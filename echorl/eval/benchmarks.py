"""Benchmarks of the evaluation: specs (CLI strings, YAML, engine config), rows, prompts.

A benchmark is a name, a source and a group tag::

    NAME=SOURCE[:GROUP]      e.g.  arith=arithmetic:id   gpqa=data/gpqa.jsonl:ood   data/aime24.parquet

``SOURCE`` is a registered task name (rows generated with ``num_rows`` and ``seed``) or a
``.jsonl`` / ``.json`` / ``.parquet`` file with ``prompt`` and ``answer`` per row (verl's parquet from
``scripts/prepare_data.py`` works as is: ``prompt`` as chat messages, ``reward_model.ground_truth``
as the answer, ``data_source``). ``GROUP`` is a tag such as ``id`` (default) or ``ood``; summaries
macro-average each group. The same entries, as mappings with ``name, source, group, grader,
num_rows, seed, task_kwargs``, make a YAML file (``--benchmarks FILE``, key ``benchmarks:``) and the
engine's ``data.val_files`` list.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from echorl.eval.graders import GRADERS
from echorl.prompts import encode_prompts, format_prompts
from echorl.tasks import load_dataset, task_names
from echorl.tasks.files import DATASET_SUFFIXES

__all__ = ["BenchmarkSpec", "DEFAULT_TASK_ROWS", "load_benchmark_yaml", "load_rows", "parse_bench", "prompt_ids",
           "specs_from_config"]

DEFAULT_TASK_ROWS = 128
_TAG = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark: ``name``, ``source`` (task name or file), ``group`` tag, ``grader``
    (``auto`` | ``math`` | ``task`` | ``mc``), ``num_rows`` (first rows of a file / rows generated
    for a task; None: the whole file, or 128 for a task), ``seed`` and ``task_kwargs`` (tasks only)."""

    name: str
    source: str
    group: str = "id"
    grader: str = "auto"
    num_rows: int | None = None
    seed: int = 0
    task_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"benchmark {self.name!r}"
        if not self.name or not isinstance(self.name, str) or "/" in self.name:
            raise ValueError(f"{where}: name must be a non-empty string without '/', got {self.name!r}")
        if not _TAG.fullmatch(str(self.group)) or self.group == "all":
            raise ValueError(f"{where}: group must be a tag like id or ood ('all' is the macro of every "
                             f"benchmark), got {self.group!r}")
        if self.grader not in GRADERS:
            raise ValueError(f"{where}: grader must be one of {list(GRADERS)}, got {self.grader!r}")
        if self.num_rows is not None and (not isinstance(self.num_rows, int) or self.num_rows < 1):
            raise ValueError(f"{where}: num_rows must be a positive int or null, got {self.num_rows!r}")

    @classmethod
    def from_any(cls, entry: Any, where: str = "benchmark") -> BenchmarkSpec:
        """From a ``NAME=SOURCE[:GROUP]`` string or a mapping of the dataclass fields."""
        if isinstance(entry, cls):
            return entry
        if isinstance(entry, str):
            return parse_bench(entry)
        if not hasattr(entry, "keys"):
            raise ValueError(f"{where}: expected a 'NAME=SOURCE[:GROUP]' string or a mapping, got {entry!r}")
        d = {str(k): v for k, v in dict(entry).items()}
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(valid)}")
        if "source" not in d:
            raise ValueError(f"{where}: missing 'source' (a task name or a .jsonl/.json/.parquet file)")
        d.setdefault("name", _default_name(str(d["source"])))
        d["task_kwargs"] = dict(d.get("task_kwargs") or {})
        return cls(**d)


def _default_name(source: str) -> str:
    base = os.path.basename(source.rstrip("/"))
    for ext in DATASET_SUFFIXES:
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return source.replace("/", "_")


def parse_bench(text: str) -> BenchmarkSpec:
    """``NAME=SOURCE[:GROUP]`` (or ``SOURCE[:GROUP]``, name from the file stem / task name)."""
    name, sep, rest = text.partition("=")
    if not sep:
        name, rest = "", text
    source, group = rest, "id"
    head, colon, tail = rest.rpartition(":")
    if colon and head and _TAG.fullmatch(tail):
        source, group = head, tail
    if not source:
        raise ValueError(f"--bench {text!r}: no source; write NAME=SOURCE[:GROUP], e.g. arith=arithmetic:id")
    return BenchmarkSpec(name=name or _default_name(source), source=source, group=group)


def load_benchmark_yaml(path: str) -> list[BenchmarkSpec]:
    """Specs of a YAML file whose top-level ``benchmarks:`` lists entries (strings or mappings)."""
    import yaml

    with open(path, encoding="utf-8") as fh:
        doc = yaml.safe_load(fh)
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        raise ValueError(f"{path}: expected a mapping with a 'benchmarks:' list")
    return [BenchmarkSpec.from_any(e, where=f"{path}: benchmarks[{i}]") for i, e in enumerate(doc["benchmarks"])]


def specs_from_config(entries: Sequence[Any], key: str) -> list[BenchmarkSpec]:
    """Specs of a config list (``data.val_files``); names must be unique."""
    specs = [BenchmarkSpec.from_any(e, where=f"{key}[{i}]") for i, e in enumerate(entries)]
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{key}: benchmark names must be unique, {dup} repeat; give each a NAME= prefix")
    return specs


def load_rows(spec: BenchmarkSpec) -> list[dict[str, Any]]:
    """The benchmark's rows (``prompt``, ``answer``, ``data_source``...), each with a ``problem_id``:
    the row's ``id`` when it has one, else its position."""
    if spec.source in task_names():
        rows = load_dataset(spec.source, n=spec.num_rows or DEFAULT_TASK_ROWS, seed=spec.seed, **spec.task_kwargs)
    else:
        if spec.task_kwargs:
            raise ValueError(f"benchmark {spec.name!r}: task_kwargs apply to task sources, not to the file {spec.source}")
        try:
            rows = load_dataset(spec.source, n=spec.num_rows)
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"benchmark {spec.name!r}: {e}") from None
    out = [{**r, "problem_id": str(r["id"]) if r.get("id") is not None else str(i)} for i, r in enumerate(rows)]
    ids = [r["problem_id"] for r in out]
    if len(set(ids)) != len(ids):
        raise ValueError(f"benchmark {spec.name!r}: the rows' 'id' values repeat; ids must be unique per benchmark")
    return out


def prompt_ids(tokenizer: Any, rows: Sequence[dict[str, Any]], chat_template: str | bool = "auto",
               max_prompt_length: int | None = None, where: str = "benchmark") -> list[list[int]]:
    """Token ids of each row's prompt (chat template as in the engine; chat messages are rendered
    by the tokenizer's template, or reduced to the last user message without one).

    Raises:
        ValueError: a prompt is empty or longer than ``max_prompt_length`` (names the row).
    """
    texts = format_prompts(tokenizer, [r["prompt"] for r in rows], chat_template, label=f"{where}: row")
    ids = encode_prompts(tokenizer, texts)
    for i, x in enumerate(ids):
        if not x:
            raise ValueError(f"{where}: row {i} has an empty prompt after tokenization")
        if max_prompt_length is not None and len(x) > max_prompt_length:
            raise ValueError(f"{where}: row {i} prompt has {len(x)} tokens, more than the limit {max_prompt_length}")
    return ids
