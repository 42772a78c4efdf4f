"""Graders of the evaluation: math-verify, exact task verifiers, multiple choice (docs/evaluation.md).

Every grader reads only the **answer section** of a response: the text after the last ``</think>``
when the response has one, else the whole response (the paper's protocol for reasoning models).

* ``math``: the last ``\\boxed{...}`` of the answer section is compared with the gold answer by
  math-verify (:func:`echorl.rewards.math.verify_answer`); the vote key is the boxed text with
  whitespace removed.
* ``task``: the verifier of the registered task whose ``data_source`` matches the row
  (:func:`echorl.tasks.compute_score`, i.e. each task's ``score(solution, answer)``); the vote key
  is the value of the last ``Answer: ...`` line, else the last non-empty line.
* ``mc``: multiple choice (GPQA / ARC / MMLU-Pro style). Options come from the row's ``options``
  or ``choices`` (a list, or a dict letter -> text); the gold answer may be a letter (``"C"``,
  ``"(C)"``), a 0-based index or the text of an option. The predicted letter is, in order of
  preference, the last ``\\boxed{X}``, the last "answer is X" / "Answer: X" (phrase in any case,
  letter in upper case), or a final line that is only a letter; letters beyond the number of options (A-J without options) are not answers.
* ``auto``: ``task`` when every row's ``data_source`` is a registered task's, else ``mc`` when the
  rows carry options, else ``math``.

Scores are computed by :func:`grade_sample` inside ``echorl.rewards.pool.VerifierPool`` workers
(a check past the time limit scores 0 and is counted); vote keys by :func:`vote_key` in the caller.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Any

from echorl.rewards.boxed import last_boxed
from echorl.rewards.math import verify_answer
from echorl.tasks import compute_score, get_task, task_names

__all__ = ["GRADERS", "answer_section", "gold_letter", "grade_sample", "grader_payload", "mc_letter",
           "mc_options", "readable_by", "resolve_grader", "vote_key"]

GRADERS = ("auto", "math", "task", "mc")
THINK_END = "</think>"
_LETTERS = string.ascii_uppercase
_ANSWER_LINE = re.compile(r"Answer:\s*(.+?)\s*$", re.MULTILINE)
# "answer is X" / "Answer: X" (the phrase in any case, the letter upper case), the last one counts
_MC_PHRASE = re.compile(r"(?i:answer\s*(?:is|:))\s*:?\s*\(?\s*([A-Z])\s*\)?(?![A-Za-z])")
_MC_BOXED = re.compile(r"^\s*(?:\\text\{)?\(?\s*([A-Z])\s*\)?\}?\s*(?:[.:)].*)?$", re.DOTALL)


def answer_section(text: str) -> str:
    """The text after the last ``</think>``, or the whole text when there is none."""
    text = text or ""
    i = text.rfind(THINK_END)
    return text[i + len(THINK_END):] if i >= 0 else text


# ---------------------------------------------------------------------------- multiple choice
def mc_options(row: dict[str, Any]) -> list[str] | None:
    """Option texts of a multiple-choice row in letter order (A, B, ...), or None."""
    opts = row.get("options", row.get("choices"))
    if opts is None:
        return None
    if isinstance(opts, dict):
        if "text" in opts and isinstance(opts["text"], (list, tuple)):  # ARC's {"label": [...], "text": [...]}
            return [str(t) for t in opts["text"]]
        keys = sorted(opts, key=str)
        return [str(opts[k]) for k in keys]
    if isinstance(opts, (list, tuple)):
        return [str(o) for o in opts]
    raise ValueError(f"multiple-choice options must be a list or a dict, got {type(opts).__name__}: {opts!r}")


def gold_letter(answer: Any, options: Sequence[str] | None) -> str:
    """The gold letter of a multiple-choice row (letter, ``(C)``, 0-based index, or option text)."""
    num = len(options) if options else 10
    if isinstance(answer, int) and not isinstance(answer, bool):
        if not 0 <= answer < num:
            raise ValueError(f"multiple-choice answer index {answer} is outside the {num} options")
        return _LETTERS[answer]
    s = str(answer).strip()
    m = re.fullmatch(r"\(?([A-Za-z])\)?\.?", s)
    if m and m.group(1).upper() in _LETTERS[:num]:
        return m.group(1).upper()
    if options:
        for i, o in enumerate(options):
            if o.strip() == s:
                return _LETTERS[i]
    raise ValueError(f"multiple-choice answer {answer!r} is neither a letter among {list(_LETTERS[:num])}, "
                     f"an index, nor the text of an option")


def mc_letter(text: str, num_options: int = 10) -> str | None:
    """The letter chosen in the answer section of ``text`` (see the module docstring), or None."""
    sec = answer_section(text)
    valid = set(_LETTERS[:num_options])
    boxed = last_boxed(sec)
    if boxed is not None:
        m = _MC_BOXED.match(boxed)
        if m and m.group(1).upper() in valid:
            return m.group(1).upper()
    hits = [h for h in _MC_PHRASE.findall(sec) if h in valid]
    if hits:
        return hits[-1]
    lines = [ln.strip() for ln in sec.strip().splitlines() if ln.strip()]
    if lines:
        m = re.fullmatch(r"\(?([A-Z])\)?\.?", lines[-1])
        if m and m.group(1) in valid:
            return m.group(1)
    return None


# ---------------------------------------------------------------------------- dispatch
def _task_sources() -> set[str]:
    return {get_task(t).data_source for t in task_names()}


def resolve_grader(grader: str, rows: Sequence[dict[str, Any]], where: str = "benchmark") -> str:
    """The concrete grader (``math`` | ``task`` | ``mc``) for ``rows``; ``auto`` decides as documented."""
    if grader not in GRADERS:
        raise ValueError(f"{where}: grader must be one of {list(GRADERS)}, got {grader!r}")
    if grader == "task":
        sources = _task_sources()
        bad = [i for i, r in enumerate(rows) if r.get("data_source") not in sources]
        if bad:
            raise ValueError(f"{where}: grader=task needs every row's data_source to be a registered task's "
                             f"({sorted(sources)}); row {bad[0]} has {rows[bad[0]].get('data_source')!r}")
        return grader
    if grader != "auto":
        return grader
    if rows and all(r.get("data_source") in _task_sources() for r in rows):
        return "task"
    if rows and all(r.get("options", r.get("choices")) is not None for r in rows):
        return "mc"
    return "math"


def grader_payload(kind: str, row: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``(gold, extra)`` handed to :func:`grade_sample` for one row (mc: the gold letter, option count)."""
    if kind == "mc":
        opts = mc_options(row)
        return gold_letter(row["answer"], opts), {"num_options": len(opts) if opts else 10}
    if kind == "task":
        return row["answer"], {"data_source": row["data_source"], "extra_info": row.get("extra_info")}
    return row["answer"], {}


def grade_sample(kind: str, response: str, gold: Any, extra: dict[str, Any]) -> float:
    """Score of one response (runs in a verifier worker process; module level, so picklable)."""
    sec = answer_section(response)
    if kind == "math":
        return verify_answer(sec, gold)
    if kind == "task":
        return float(compute_score(extra["data_source"], sec, gold, extra.get("extra_info")))
    if kind == "mc":
        return float(mc_letter(sec, int(extra["num_options"])) == gold)
    raise ValueError(f"grade_sample: unknown grader {kind!r}; valid: math, task, mc")


def vote_key(kind: str, response: str, extra: dict[str, Any]) -> str | None:
    """The answer a response votes for in maj@k (None: no answer found)."""
    sec = answer_section(response)
    if kind == "math":
        b = last_boxed(sec)
        key = None if b is None else re.sub(r"\s+", "", b)
        return key or None
    if kind == "mc":
        return mc_letter(sec, int(extra["num_options"]))
    hits = _ANSWER_LINE.findall(sec)
    if hits:
        return hits[-1].strip() or None
    lines = [ln.strip() for ln in sec.splitlines() if ln.strip()]
    return lines[-1] if lines else None


def readable_by(response: str) -> list[str]:
    """The graders that find an answer in ``response``: ``math`` (a ``\\boxed{}``), ``task`` (an
    ``Answer: ...`` line, the format of the registered tasks), ``mc`` (a choice letter, A-J)."""
    sec = answer_section(response)
    found = []
    if last_boxed(sec) is not None:
        found.append("math")
    if _ANSWER_LINE.search(sec):
        found.append("task")
    if mc_letter(sec) is not None:
        found.append("mc")
    return found
