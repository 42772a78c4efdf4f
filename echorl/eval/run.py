"""Run an evaluation: generate, grade, summarise, write (docs/evaluation.md).

:func:`evaluate` samples ``n`` responses per problem of each benchmark with a backend
(:mod:`echorl.eval.backends`), grades them in verifier worker processes
(:class:`echorl.rewards.pool.VerifierPool` running :func:`echorl.eval.graders.grade_sample`, one
time limit per sample; timeouts and crashes score 0 and are counted per benchmark), and returns
the per-sample records and the summary. :func:`summarize` computes the summary **from the
per-sample records alone** (plus the pool counts), so ``summary.json`` is always what
``samples.jsonl`` implies. The engine's validation (``echorl.local.heldout``) calls the same
:func:`evaluate`.

Per-sample record (one line of ``samples.jsonl``)::

    {"benchmark", "group", "problem_id", "sample", "data_source", "grader", "prompt", "response",
     "answer" (gold), "pred" (the vote key, null when none), "score", "correct" (score >= 1),
     "num_tokens", "finished" (ended with EOS)}
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from echorl.eval import metrics as M
from echorl.eval.backends import SamplingSettings
from echorl.eval.benchmarks import BenchmarkSpec, load_rows, prompt_ids
from echorl.eval.graders import grade_sample, grader_payload, readable_by, resolve_grader, vote_key
from echorl.rewards.pool import VerifierPool

__all__ = ["evaluate", "make_pool", "no_answer_warnings", "summarize", "write_outputs", "read_samples",
           "SUMMARY_FILES"]

log = logging.getLogger(__name__)

SUMMARY_FILES = ("samples.jsonl", "summary.json", "summary.csv", "summary.md")
POOL_STATS = ("timeouts", "crashes", "errors")


def make_pool(num_workers: int = 2, timeout_s: float = 10.0):
    """A verifier pool running :func:`grade_sample` (math-verify preloaded in the workers)."""
    return VerifierPool(grade_sample, num_workers=num_workers, timeout_s=timeout_s,
                        preload=["echorl.eval.graders", "echorl.rewards.math", "echorl.tasks"],
                        warmup_args=("math", "\\boxed{1}", "1", {}))


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)


def evaluate(backend: Any, tokenizer: Any, benchmarks: Sequence[tuple[BenchmarkSpec, list[dict[str, Any]] | None]],
             sampling: SamplingSettings, pool: Any, *, chat_template: str | bool = "auto",
             max_prompt_length: int | None = None, warn: bool = True) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Evaluate every benchmark; returns ``(samples, summary)``. With ``warn``, the
    :func:`no_answer_warnings` are logged.

    Args:
        backend: ``generate(prompt_ids [N], sampling) -> [N][n] Completion``.
        benchmarks: ``(spec, rows)`` pairs; ``rows=None`` loads them with :func:`load_rows`.
        pool: a :func:`make_pool` pool (the caller closes it).
    """
    samples: list[dict[str, Any]] = []
    counts: dict[str, dict[str, int]] = {}
    for spec, rows in benchmarks:
        rows = load_rows(spec) if rows is None else rows
        kind = resolve_grader(spec.grader, rows, where=f"benchmark {spec.name!r}")
        payloads = [grader_payload(kind, r) for r in rows]
        ids = prompt_ids(tokenizer, rows, chat_template, max_prompt_length, where=f"benchmark {spec.name!r}")
        comps = backend.generate(ids, sampling)  # [N][n]
        args = [(kind, c.text, gold, extra) for (gold, extra), cs in zip(payloads, comps) for c in cs]
        scores, stats = pool.score(args)
        counts[spec.name] = {k: int(stats.get(k, 0)) for k in POOL_STATS}
        j = 0
        for r, (gold, extra), cs in zip(rows, payloads, comps):
            for s_idx, c in enumerate(cs):
                samples.append({
                    "benchmark": spec.name, "group": spec.group, "problem_id": r["problem_id"], "sample": s_idx,
                    "data_source": r.get("data_source"), "grader": kind, "prompt": _jsonable(r["prompt"]),
                    "response": c.text, "answer": _jsonable(gold), "pred": vote_key(kind, c.text, extra),
                    "score": float(scores[j]), "correct": bool(scores[j] >= 1.0), "num_tokens": c.num_tokens,
                    "finished": c.finished})
                j += 1
    summary = summarize(samples, counts)
    for msg in no_answer_warnings(samples, summary) if warn else ():
        log.warning(msg)
    return samples, summary


def no_answer_warnings(samples: Sequence[dict[str, Any]], summary: dict[str, Any],
                       threshold: float = 0.5) -> list[str]:
    """One message per benchmark where more than ``threshold`` of the samples gave no answer the
    grader could extract (``pred`` null), naming the graders that do find an answer in them."""
    msgs = []
    for name, b in summary["benchmarks"].items():
        if b["no_answer"] <= threshold:
            continue
        missed = [s for s in samples if s["benchmark"] == name and s["pred"] is None]
        kind = missed[0]["grader"]
        others = Counter(g for s in missed for g in readable_by(s["response"]) if g != kind)
        hint = ("; ".join(f"{100 * c / len(missed):.0f}% of them hold an answer grader={g!r} reads"
                          for g, c in others.most_common())
                or "no grader finds an answer in them (check the prompt's answer instruction and --max-new-tokens)")
        msgs.append(f"benchmark {name!r}: {100 * b['no_answer']:.0f}% of samples have no answer the "
                    f"{kind!r} grader can extract, so they score 0; {hint}. Pick the grader with --grader "
                    "(task needs each row's data_source to name a registered task) or a benchmark YAML's 'grader:'")
    return msgs


def summarize(samples: Sequence[dict[str, Any]], pool_counts: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
    """Per-benchmark metrics (means over problems) and per-group / overall macro averages.

    Returns ``{"benchmarks": {name: {"group", "problems", "n", "avg@n", "pass@k"..., "maj@k"...,
    "mean_score", "mean_tokens", "truncated", "no_answer" (share of samples with no extracted answer),
    "timeouts", "crashes", "errors"}}, "groups": {tag:
    {"benchmarks": [...], metric: macro mean}}, ...}``; the group ``all`` macro-averages every benchmark.
    """
    by_bench: dict[str, dict[str, list[dict[str, Any]]]] = {}
    group_of: dict[str, str] = {}
    for s in samples:
        by_bench.setdefault(s["benchmark"], {}).setdefault(str(s["problem_id"]), []).append(s)
        group_of.setdefault(s["benchmark"], s["group"])
    benches: dict[str, dict[str, Any]] = {}
    for name, problems in by_bench.items():
        ns = {len(v) for v in problems.values()}
        if len(ns) != 1:
            raise ValueError(f"benchmark {name!r}: problems have different sample counts {sorted(ns)}")
        per = []
        for ss in problems.values():
            ss = sorted(ss, key=lambda s: s["sample"])
            per.append(M.problem_metrics([s["correct"] for s in ss], [s["pred"] for s in ss]))
        flat = [s for ss in problems.values() for s in ss]
        row: dict[str, Any] = {"group": group_of[name], "problems": len(problems), "n": ns.pop()}
        row.update({k: M.mean([p[k] for p in per]) for k in per[0]})
        row["mean_score"] = M.mean([s["score"] for s in flat])
        row["mean_tokens"] = M.mean([s["num_tokens"] for s in flat])
        row["truncated"] = M.mean([0.0 if s["finished"] else 1.0 for s in flat])
        row["no_answer"] = M.mean([1.0 if s["pred"] is None else 0.0 for s in flat])
        row.update((pool_counts or {}).get(name, {}))
        benches[name] = row
    groups: dict[str, dict[str, Any]] = {}
    tags = sorted({b["group"] for b in benches.values()})
    for tag in tags + ["all"]:
        names = [n for n, b in benches.items() if tag == "all" or b["group"] == tag]
        keys = [k for k in benches[names[0]] if _is_metric(k) and all(k in benches[n] for n in names)]
        groups[tag] = {"benchmarks": names, **{k: M.mean([benches[n][k] for n in names]) for k in keys}}
    return {"benchmarks": benches, "groups": groups}


def _is_metric(key: str) -> bool:
    return "@" in key or key in ("mean_score", "mean_tokens", "truncated", "no_answer")


def read_samples(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``samples.jsonl`` (or of the ``samples.jsonl`` inside a folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / "samples.jsonl"
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: give a samples.jsonl or an `echorl eval` output folder")
    with open(p, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def _table_keys(summary: dict[str, Any]) -> list[str]:
    first = next(iter(summary["benchmarks"].values()))
    return [k for k in first if _is_metric(k)]


def write_outputs(out_dir: str | os.PathLike, samples: Sequence[dict[str, Any]], summary: dict[str, Any],
                  settings: dict[str, Any] | None = None) -> dict[str, str]:
    """Write ``samples.jsonl``, ``summary.json``, ``summary.csv`` and ``summary.md`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "samples.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(s) + "\n" for s in samples)
    (out / "summary.json").write_text(json.dumps({"settings": settings or {}, **summary}, indent=2))
    keys = _table_keys(summary)
    rows = [(name, b["group"], b["problems"], *[b.get(k) for k in keys]) for name, b in summary["benchmarks"].items()]
    rows += [(f"macro/{tag}", tag, len(g["benchmarks"]), *[g.get(k) for k in keys]) for tag, g in summary["groups"].items()]
    with open(out / "summary.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["benchmark", "group", "problems", *keys])
        w.writerows(rows)
    head = ["benchmark", "group", "problems", *keys]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
    if settings:
        md += ["", "settings: " + ", ".join(f"{k}={v}" for k, v in settings.items())]
    (out / "summary.md").write_text("\n".join(md) + "\n")
    return {f: str(out / f) for f in SUMMARY_FILES}

