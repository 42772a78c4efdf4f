"""Convert math RL datasets to verl's RL parquet format.

Sources (downloaded by the user on the cluster; nothing is downloaded here), parquet or JSONL:

- ``openr1``: OpenR1-Math-46k (the filtered OpenR1-Math-220k subset): question from ``problem``
  (or ``question``, or the last user message of a chat ``prompt``), answer from ``answer`` (or
  ``reward_model.ground_truth``). An expert trace is carried when the row has one (``target``,
  or the first non-empty of OpenR1-Math-220k's ``generations``), not required.
- ``luffy``: OpenR1-Math-46k as LUFFY ships it (``Elliott/Openr1-Math-46k-8192``, written by
  LUFFY's ``data/prepare_train.py``): ``prompt`` = [system instruction, user problem], ``target`` =
  ``[{"role": "assistant", "content": <DeepSeek-R1 trace>}]``, ``reward_model.ground_truth``. The
  question is the last user message (LUFFY's system instruction is not kept: the template below
  replaces it). The trace is required (see "Expert traces").
- ``uft``: UFT's files (``data/math/*.parquet`` of github.com/liumy2010/UFT): ``hint`` = the
  MATH solution cut into pieces, ``reward_model.ground_truth`` = ``{"question", "target"}``
  (``question``/``answer`` columns hold UFT's wrapped prompt and the solution, not the problem and
  answer). The trace is the pieces joined (``"".join(hint)``); required.
- ``dapo``: DAPO-Math-17k: a verl-format file whose user message wraps the problem in DAPO's
  "Answer: $Answer" template; the template is removed and the paper's template applied; answer
  from ``reward_model.ground_truth``. The published parquet repeats each problem ~100 times:
  duplicates are dropped by default.
- ``math``: MATH-style (hendrycks MATH, MATH-500, AIME-style files): question from ``problem``,
  answer from ``answer`` or else the last ``\\boxed{}`` of ``solution``.

Output rows (verl's ``RLHFDataset`` layout; the reward function is ``echorl.rewards.math``)::

    {"data_source": "<source name>",
     "prompt": [{"role": "user", "content": TEMPLATE with {question} replaced}],
     "target": [{"role": "assistant", "content": "<expert trace>"}] or None,   # see below
     "ability": "math",
     "reward_model": {"style": "rule", "ground_truth": "<answer>"},
     "extra_info": {"split": "<split>", "index": <row number in the output>}}

``target`` has LUFFY's layout, which LUFFY and UFT read (``echorl.methods.luffy.expert_text``);
the trace text is carried exactly as the source holds it. The column is written by ``openr1``,
``luffy`` and ``uft`` when at least one row has a trace (``None`` on the others); a file of
``openr1`` problems without any trace has no ``target`` column.

Expert traces: with ``luffy`` and ``uft`` a row without a trace is kept (LUFFY / UFT train it as
a plain GRPO row, as LUFFY's own data loader does with an empty ``target``); their number is
logged as a warning per file. A file in which no row has a trace raises ``DataFormatError``: it is
not the authors' data, and LUFFY / UFT would silently train GRPO on it.

A row without a question or answer, or with a trace of the wrong type, raises ``DataFormatError``
naming the file, the row index, the field and the columns the row has. CLI:
``scripts/prepare_data.py``. Tests: ``tests/data/test_prepare.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from echorl.rewards.boxed import last_boxed
from echorl.tasks.files import DataFormatError, read_rows  # re-exported: the one dataset reader

logger = logging.getLogger(__name__)

__all__ = ["DataFormatError", "FORMATS", "TEMPLATE", "TRACE_FIELD", "convert_rows", "read_rows", "write_parquet",
           "prepare"]

# The paper's prompt (Qwen2.5-Math chain-of-thought style).
TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."

# DAPO-Math-17k's user-message template (BytedTsinghua-SIA/DAPO-Math-17k).
DAPO_PREFIX = ("Solve the following math problem step by step. The last line of your response should "
               "be of the form Answer: $Answer (without quotes) where $Answer is the answer to the "
               "problem.\n\n")
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'

TRACE_FIELD = "target"  # output column of the expert trace (LUFFY's name and layout)


_MISSING = object()


def _get(row: dict, path: str) -> Any:
    """``row["a"]["b"]`` for ``path="a.b"``; ``_MISSING`` if any level is absent or None."""
    cur: Any = row
    for key in path.split("."):
        if not isinstance(cur, dict) or cur.get(key) is None:
            return _MISSING
        cur = cur[key]
    return cur


def _last_user_message(row: dict) -> Any:
    msgs = row.get("prompt")
    if isinstance(msgs, (list, tuple)):
        users = [m.get("content") for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
        if users and isinstance(users[-1], str):
            return users[-1]
    return _MISSING


def _strip_dapo_template(text: str) -> str | None:
    if text.startswith(DAPO_PREFIX) and text.endswith(DAPO_SUFFIX):
        return text[len(DAPO_PREFIX):len(text) - len(DAPO_SUFFIX)]
    return None


@dataclass(frozen=True)
class _Field:
    """Where one output field comes from: candidates tried in order."""

    name: str
    candidates: tuple[str, ...]  # dotted column paths; "<chat>" = last user message of `prompt`

    def extract(self, row: dict) -> tuple[Any, str | None]:
        for c in self.candidates:
            v = _last_user_message(row) if c == "<chat>" else _get(row, c)
            if v is not _MISSING:
                return v, c
        return _MISSING, None


def _message_content(value: Any) -> str:
    """LUFFY's ``target``: a list of chat messages (the first one's ``content``, as LUFFY's dataset
    reads ``target[0]['content']``), one message, or a plain string."""
    if hasattr(value, "tolist") and not isinstance(value, str):  # numpy arrays from pandas-written files
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if not value:
            return ""
        value = value[0]
    if isinstance(value, dict):
        if "content" not in value:
            raise ValueError(f"the message has no 'content' (keys {sorted(value)})")
        value = value["content"]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"expected a string or chat messages with 'content', got {type(value).__name__}")
    return value


def _first_generation(value: Any) -> str:
    """OpenR1-Math-220k's ``generations`` (DeepSeek-R1 traces): the first non-empty one, as LUFFY's
    preparation script takes it."""
    if isinstance(value, str):
        return value
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(g, str) or g is None for g in value):
        raise ValueError("expected a list of strings")
    return next((g for g in value if g and g.strip()), "")


def _joined_pieces(value: Any) -> str:
    """UFT's ``hint``: the solution cut into pieces; the trace is the pieces joined."""
    if isinstance(value, str):
        return value
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(g, str) for g in value):
        raise ValueError("expected a list of strings (the solution's pieces)")
    return "".join(value)


@dataclass(frozen=True)
class _Trace:
    """Where the expert trace comes from: ``(column, reader)`` candidates tried in order; a reader
    returns the trace text ('' = no trace) or raises ValueError on a malformed value."""

    candidates: tuple[tuple[str, Callable[[Any], str]], ...]
    required: bool  # a file without any trace is an error (module docstring, "Expert traces")

    def extract(self, row: dict) -> tuple[str, str | None]:
        for column, read in self.candidates:
            v = _get(row, column)
            if v is _MISSING:
                continue
            try:
                text = read(v)
            except ValueError as e:
                raise ValueError(f"column {column!r}: {e}") from None
            if text.strip():
                return text, column
        return "", None

    def columns(self) -> str:
        return ", ".join(repr(c) for c, _ in self.candidates)


@dataclass(frozen=True)
class Format:
    name: str
    data_source: str
    question: _Field
    answer: _Field
    dedup: bool = False  # drop repeated questions by default
    trace: _Trace | None = None  # expert trace written to TRACE_FIELD (None: the format has none)
    # (question value, column it came from) -> cleaned question; raises ValueError on bad input
    clean_question: Callable[[str, str | None], str] | None = None
    # (answer value, column it came from) -> answer; raises ValueError on bad input
    clean_answer: Callable[[Any, str | None], str] | None = None


def _dapo_question(text: str, column: str | None) -> str:
    if column == "<chat>":
        q = _strip_dapo_template(text)
        if q is None:
            raise ValueError("the user message does not have DAPO-Math-17k's 'Answer: $Answer' "
                             "template; use --format openr1 for plain problem/answer files")
        return q
    return text


def _math_answer(value: Any, column: str | None) -> str:
    if column == "solution":
        boxed = last_boxed(str(value))
        if boxed is None:
            raise ValueError("no \\boxed{} answer in 'solution' and no 'answer' column")
        return boxed
    return value


_LUFFY_TRACE = (("target", _message_content),)

FORMATS: dict[str, Format] = {
    "openr1": Format("openr1", "openr1_math_46k",
                     _Field("question", ("problem", "question", "<chat>")),
                     _Field("answer", ("answer", "reward_model.ground_truth")),
                     trace=_Trace((*_LUFFY_TRACE, ("generations", _first_generation)), required=False)),
    "luffy": Format("luffy", "openr1_math_46k",
                    _Field("question", ("<chat>", "problem")),
                    _Field("answer", ("reward_model.ground_truth", "answer")),
                    trace=_Trace(_LUFFY_TRACE, required=True)),
    "uft": Format("uft", "uft_math",
                  _Field("question", ("reward_model.ground_truth.question",)),
                  _Field("answer", ("reward_model.ground_truth.target",)),
                  trace=_Trace((("hint", _joined_pieces),), required=True)),
    "dapo": Format("dapo", "dapo_math_17k",
                   _Field("question", ("<chat>", "problem")),
                   _Field("answer", ("reward_model.ground_truth", "answer")),
                   dedup=True, clean_question=_dapo_question),
    "math": Format("math", "math",
                   _Field("question", ("problem", "question")),
                   _Field("answer", ("answer", "solution")),
                   clean_answer=_math_answer),
}


def _answer_str(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"expected one answer, got a list of {len(value)}")
        value = value[0]
    return str(value).strip()


def convert_rows(rows: Iterable[dict], fmt: str, *, split: str = "train", data_source: str | None = None,
                 template: str = TEMPLATE, dedup: bool | None = None, where: str = "<rows>") -> list[dict]:
    """Source rows -> verl RL rows (see the module docstring). ``where`` names the file in errors."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {sorted(FORMATS)}")
    if "{question}" not in template:
        raise ValueError(f"template must contain '{{question}}', got {template!r}")
    spec = FORMATS[fmt]
    dedup = spec.dedup if dedup is None else dedup
    source = data_source or spec.data_source
    out: list[dict] = []
    seen: set[tuple[str, str]] = set()
    n_rows = without_trace = 0
    for i, row in enumerate(rows):
        n_rows += 1
        if not isinstance(row, dict):
            raise DataFormatError(f"{where}: row {i}: expected a mapping, got {type(row).__name__}")
        values = {}
        for fld, clean in ((spec.question, spec.clean_question), (spec.answer, spec.clean_answer)):
            value, column = fld.extract(row)
            if value is _MISSING:
                cands = ", ".join("last user message of 'prompt'" if c == "<chat>" else repr(c)
                                  for c in fld.candidates)
                raise DataFormatError(
                    f"{where}: row {i}: missing field '{fld.name}' for format '{fmt}' (looked for "
                    f"{cands}); the row has columns {sorted(row)}")
            try:
                if clean is not None:
                    value = clean(value, column)
                text = _answer_str(value) if fld.name == "answer" else str(value).strip()
            except ValueError as e:
                raise DataFormatError(f"{where}: row {i}: field '{fld.name}' (column {column!r}): {e}") from e
            if not text:
                raise DataFormatError(f"{where}: row {i}: field '{fld.name}' (column {column!r}) is empty")
            values[fld.name] = text
        trace = None
        if spec.trace is not None:
            try:
                text, _column = spec.trace.extract(row)
            except ValueError as e:
                raise DataFormatError(f"{where}: row {i}: expert trace {e}") from e
            trace = [{"role": "assistant", "content": text}] if text else None
            without_trace += trace is None
        key = (values["question"], values["answer"])
        if dedup and key in seen:
            continue
        seen.add(key)
        new = {"data_source": source,
               "prompt": [{"role": "user", "content": template.replace("{question}", values["question"])}]}
        if spec.trace is not None:
            new[TRACE_FIELD] = trace
        new.update({"ability": "math",
                    "reward_model": {"style": "rule", "ground_truth": values["answer"]},
                    "extra_info": {"split": split, "index": len(out)}})
        out.append(new)
    _check_traces(spec, fmt, where, total=n_rows, without=without_trace)
    return out


def _check_traces(spec: Format, fmt: str, where: str, total: int, without: int) -> None:
    """Rows without an expert trace: an error when the format requires traces and no row has one,
    else counted in the log (module docstring, "Expert traces")."""
    if spec.trace is None or total == 0 or not without:
        return
    looked = f"looked for {spec.trace.columns()}"
    if spec.trace.required and without == total:
        raise DataFormatError(
            f"{where}: no row has an expert trace for format '{fmt}' ({looked}); LUFFY and UFT would train "
            "plain GRPO on this file. Fix: convert the authors' data (LUFFY's OpenR1-Math-46k with its 'target' "
            "column: --format luffy; UFT's files with 'hint': --format uft), or use --format openr1 / math for "
            "data without traces")
    if spec.trace.required:
        logger.warning("prepare_data: %s: %d of %d rows have no expert trace (%s); LUFFY / UFT train them as plain "
                       "GRPO rows", where, without, total, looked)
    else:
        logger.info("prepare_data: %s: %d of %d rows carry an expert trace (%s)", where, total - without, total, looked)


def write_parquet(rows: Sequence[dict], path: str | Path) -> None:
    """Write verl rows to parquet (creates parent folders)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise ValueError(f"no rows to write to {path}")
    columns = list(rows[0])
    for i, r in enumerate(rows):  # pyarrow takes the columns of the first row and drops any other
        if list(r) != columns:
            raise ValueError(f"row {i} has the columns {list(r)}, row 0 {columns}: every row must have the same columns")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(list(rows)), path)


def prepare(inputs: Sequence[str | Path], output: str | Path, fmt: str, *, dedup: bool | None = None,
            **kwargs: Any) -> int:
    """Convert one or more input files (rows concatenated) to one verl parquet; returns row count.

    Deduplication (if on) applies across files, once, and the number of dropped rows is logged;
    ``extra_info.index`` numbers the output rows.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {sorted(FORMATS)}")
    dedup = FORMATS[fmt].dedup if dedup is None else dedup
    rows: list[dict] = []
    seen: set[tuple[str, str]] = set()
    dropped = 0
    for p in inputs:
        for r in convert_rows(read_rows(p), fmt, where=str(p), dedup=False, **kwargs):
            key = (r["prompt"][0]["content"], r["reward_model"]["ground_truth"])
            if dedup and key in seen:
                dropped += 1
                continue
            seen.add(key)
            r["extra_info"]["index"] = len(rows)
            rows.append(r)
    if dropped:
        logger.warning("prepare_data: dropped %d duplicate (question, answer) rows of %d; --no-dedup keeps them",
                       dropped, dropped + len(rows))
    if FORMATS[fmt].trace is not None and all(r[TRACE_FIELD] is None for r in rows):
        for r in rows:  # no trace at all (openr1 problems): no column, so LUFFY / UFT refuse the file at start-up
            del r[TRACE_FIELD]
    write_parquet(rows, output)
    return len(rows)
