"""reasoning-gym adapters: procedural offline tasks in the row format of :mod:`echorl.tasks`.

``reasoning-gym`` (the ``models`` extra) generates problems procedurally and ships a scorer per
dataset; no real GSM8K/MATH data is needed. Adapted datasets (``ADAPTERS``):

* ``rg/gsm_symbolic``     GSM8K-style word problems (symbolic templates),
* ``rg/basic_arithmetic`` arithmetic expressions,
* ``rg/chain_sum``        chains of additions/subtractions,
* ``rg/countdown``        reach a target from given numbers (many correct answers).

Each row keeps the reasoning-gym entry (question, answer, metadata) as JSON in
``extra_info["rg_entry"]``, and :func:`score` hands it to reasoning-gym's own ``score_answer``, so
tasks whose answers are not unique (countdown) are scored right. The prompt asks for one step per
line and a final ``Answer: <answer>`` line (the step format EchoRL segments on); the answer is
read from that line, else from ``<answer>...</answer>`` tags, else the last non-empty line.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from echorl.tasks.base import Task

ADAPTERS: dict[str, dict[int, dict[str, Any]]] = {
    # name -> level -> reasoning-gym config kwargs
    "gsm_symbolic": {1: {"difficulty": 1.0}},  # reasoning-gym 0.1.19 supports difficulty 1.0 only
    "basic_arithmetic": {
        1: {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
        2: {"min_terms": 3, "max_terms": 4, "min_digits": 1, "max_digits": 2},
        3: {"min_terms": 4, "max_terms": 6, "min_digits": 1, "max_digits": 3},
    },
    "chain_sum": {
        1: {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1},
        2: {"min_terms": 3, "max_terms": 5, "min_digits": 1, "max_digits": 2},
    },
    "countdown": {
        1: {"min_numbers": 3, "max_numbers": 3, "max_value": 20, "min_target": 10, "max_target": 100},
        2: {"min_numbers": 4, "max_numbers": 5},
    },
}

INSTRUCTION = "\nWrite one reasoning step per line, then finish with a final line 'Answer: <answer>'."
_ANSWER_LINE = re.compile(r"^\s*Answer:\s*(.*?)\s*$", re.MULTILINE)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _rg():
    try:
        import reasoning_gym
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reasoning-gym tasks need the 'reasoning-gym' package: pip install reasoning-gym "
            "(or pip install -e '.[models]')"
        ) from e
    return reasoning_gym


def _check(name: str) -> str:
    base = name[3:] if name.startswith("rg/") else name
    if base not in ADAPTERS:
        raise ValueError(f"unknown reasoning-gym adapter {name!r}; valid: {sorted('rg/' + n for n in ADAPTERS)}")
    return base


def generate(name: str, n: int, seed: int = 0, levels: tuple[int, ...] | list[int] | None = None) -> list[dict[str, Any]]:
    """``n`` rows of reasoning-gym dataset ``name``, levels cycled in order, deterministic in ``seed``."""
    base = _check(name)
    rg = _rg()
    levels = tuple(sorted(ADAPTERS[base])) if levels is None else tuple(levels)
    for lv in levels:
        if lv not in ADAPTERS[base]:
            raise ValueError(f"rg/{base}: unknown level {lv!r}; valid levels are {sorted(ADAPTERS[base])}")
    counts = {lv: sum(1 for i in range(n) if levels[i % len(levels)] == lv) for lv in levels}
    entries: dict[int, list[dict[str, Any]]] = {}
    for lv, cnt in counts.items():
        if cnt:
            ds = rg.create_dataset(base, seed=seed * 1000 + lv, size=cnt, **ADAPTERS[base][lv])
            entries[lv] = [ds[i] for i in range(cnt)]
    taken = {lv: 0 for lv in levels}
    rows = []
    for i in range(n):
        lv = levels[i % len(levels)]
        e = entries[lv][taken[lv]]
        taken[lv] += 1
        cot = e.get("metadata", {}).get("answer_cot") if isinstance(e.get("metadata"), dict) else None
        solution = (str(cot).strip() + "\n" if cot else "") + f"Answer: {e['answer']}"
        rows.append({
            "prompt": str(e["question"]).strip() + INSTRUCTION,
            "answer": str(e["answer"]),
            "data_source": f"reasoning_gym/{base}",
            "level": lv,
            "solution": solution,
            "extra_info": {"rg_dataset": base, "rg_entry": json.dumps(e, default=str)},
        })
    return rows


def extract_answer(solution_str: Any) -> str | None:
    """The text of the last ``Answer:`` line, else of the last ``<answer>`` tag, else the last
    non-empty line; ``None`` for a non-string or empty response."""
    if not isinstance(solution_str, str) or not solution_str.strip():
        return None
    text = solution_str.replace("<|im_end|>", "").replace("<|endoftext|>", "")
    lines = _ANSWER_LINE.findall(text)
    if lines:
        return lines[-1]
    tags = _ANSWER_TAG.findall(text)
    if tags:
        return tags[-1].strip()
    rest = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return rest[-1] if rest else None


@functools.cache
def _score_fn(base: str):
    return _rg().get_score_answer_fn(base)


def _entry(raw: Any, base: str) -> dict[str, Any]:
    """The row's reasoning-gym entry from ``extra_info["rg_entry"]`` (a JSON object string or a mapping)."""
    try:
        entry = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"rg/{base}: extra_info.rg_entry is not a JSON object ({e}); regenerate the data "
                         "with echorl.tasks.reasoning_gym.generate, or drop rg_entry to score by the answer alone") from e
    if not isinstance(entry, dict) or "answer" not in entry:
        raise ValueError(f"rg/{base}: extra_info.rg_entry has no 'answer' field; regenerate the data with "
                         "echorl.tasks.reasoning_gym.generate, or drop rg_entry to score by the answer alone")
    return entry


def score(name: str, solution_str: Any, answer: Any, extra_info: Any = None) -> float:
    """reasoning-gym's own ``score_answer`` on the extracted answer, in ``[0, 1]``.

    ``extra_info["rg_entry"]`` (the row's JSON entry) gives the scorer its metadata; without it
    the entry is ``{"answer": answer, "metadata": {}}`` (enough for unique-answer tasks). A malformed
    ``rg_entry`` is a data error and raises ``ValueError`` (the verifier pool counts it under
    ``crashes``); a scorer that fails on the model's answer scores it 0.0, as a wrong answer.
    """
    base = _check(name)
    got = extract_answer(solution_str)
    if got is None:
        return 0.0
    entry: dict[str, Any] = {"answer": str(answer), "metadata": {}}
    if isinstance(extra_info, dict) and extra_info.get("rg_entry"):
        entry = _entry(extra_info["rg_entry"], base)
    try:
        s = float(_score_fn(base)(got, entry))
    except Exception:  # a scorer crash on garbage must not stop training
        return 0.0
    return min(max(s, 0.0), 1.0)


def make_task(base: str):
    """The :class:`echorl.tasks.Task` of adapter ``base`` (registered as ``rg/<base>``)."""
    _check(base)
    return Task(
        name=f"rg/{base}",
        data_source=f"reasoning_gym/{base}",
        generate=functools.partial(generate, base),
        score=functools.partial(score, base),
        description=f"reasoning-gym '{base}' (procedural, offline), scored by reasoning-gym",
    )
