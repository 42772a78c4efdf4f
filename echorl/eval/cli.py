"""``echorl eval`` and ``echorl export`` (dispatched from ``echorl.cli``).

    echorl eval MODEL --bench NAME=SOURCE[:GROUP] ... [--benchmarks FILE.yaml] [-n 4]
                [--temperature 0.6] [--top-p 1.0] [--max-new-tokens 1024] [--batch-size 64]
                [--backend transformers|vllm] [--device cpu|cuda] [--out DIR]
    echorl eval compare A B [--metric avg|pass@k|maj@k] [--resamples 10000] [--seed 0] [--out FILE.json]
    echorl export CKPT OUT_DIR

MODEL: ``tiny``, ``smollm2``, a Hugging Face folder or an embedded-engine checkpoint (a run folder,
its ``checkpoints/`` or a ``global_step_<k>``). docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from echorl.eval.backends import SamplingSettings, make_backend
from echorl.eval.benchmarks import load_benchmark_yaml, load_rows, parse_bench, specs_from_config
from echorl.eval.compare import compare_samples, format_comparison
from echorl.eval.export import export_checkpoint
from echorl.eval.run import evaluate, make_pool, no_answer_warnings, read_samples, write_outputs
from echorl.models.loading import load_policy

__all__ = ["eval_main", "export_main"]


METRICS_HELP = """metrics, per benchmark (means over its problems) and macro-averaged per group and over all:
  avg@n       mean correctness of the n samples of a problem
  pass@k      unbiased pass@k (Chen et al. 2021) for k in 1, 2, 4, ... up to n
  maj@k       correctness of the majority answer of the first k samples (unextracted answers do not vote)
  mean_score  mean grader score; mean_tokens: mean response length; truncated: share without EOS
  no_answer   share of samples from which the grader extracted no answer (they score 0); a warning
              names the grader that reads them when most samples have none
  timeouts, crashes, errors: grading checks that hit the time limit, raised, or returned a non-number
graders: math (last \\boxed{} via math-verify), task (the registered task's verifier, 'Answer: ...'),
  mc (multiple choice letter), auto (task if every data_source is a task's, else mc with options, else math)"""


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="echorl eval", description="evaluate a model or checkpoint on benchmarks "
                                "(`echorl eval compare A B` compares two runs)", epilog=METRICS_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="tiny | tiny-chain | smollm2 | Hugging Face folder | engine checkpoint folder")
    p.add_argument("--bench", action="append", default=[], metavar="NAME=SOURCE[:GROUP]",
                   help="a benchmark: SOURCE is a task name or a .jsonl/.json/.parquet file; GROUP a tag (id, ood); repeatable")
    p.add_argument("--benchmarks", metavar="FILE.yaml", help="YAML with a 'benchmarks:' list (strings or mappings)")
    p.add_argument("--num-rows", type=int, default=None, help="rows per --bench benchmark (tasks: generated; files: first rows)")
    p.add_argument("--grader", default="auto", choices=["auto", "math", "task", "mc"], help="grader of --bench benchmarks")
    p.add_argument("-n", "--n", type=int, default=4, help="samples per problem (default 4)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default 0.6; 0 = greedy, n=1)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default 1.0)")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="response token limit (default 1024)")
    p.add_argument("--batch-size", type=int, default=64, help="rows (prompt x sample) per generate call")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--chat-template", default="auto", choices=["auto", "true", "false"])
    p.add_argument("--workers", type=int, default=2, help="verifier worker processes")
    p.add_argument("--timeout-s", type=float, default=10.0, help="grading time limit per sample (scores 0 past it)")
    p.add_argument("--out", default="outputs/eval", help="output folder (samples.jsonl, summary.{json,csv,md})")
    return p


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


def _compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="echorl eval compare", description="paired per-problem differences B - A")
    p.add_argument("a", help="samples.jsonl or output folder of run A")
    p.add_argument("b", help="samples.jsonl or output folder of run B")
    p.add_argument("--metric", default="avg", help="avg (avg@n), pass@k or maj@k")
    p.add_argument("--resamples", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--level", type=float, default=0.95)
    p.add_argument("--out", default=None, help="also write the result as JSON here")
    return p


def _specs(args: argparse.Namespace):
    from dataclasses import replace

    specs = [replace(parse_bench(b), num_rows=args.num_rows, grader=args.grader) for b in args.bench]
    if args.benchmarks:
        specs += load_benchmark_yaml(args.benchmarks)
    if not specs:
        raise ValueError("no benchmark: give --bench NAME=SOURCE[:GROUP] (e.g. --bench arith=arithmetic) or --benchmarks FILE")
    return specs_from_config(specs, "benchmarks")


def eval_main(argv: Sequence[str]) -> int:
    argv = list(argv)
    if argv and argv[0] == "compare":
        return _compare_main(argv[1:])
    args = _eval_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    try:
        specs = _specs(args)
        benchmarks = [(s, load_rows(s)) for s in specs]  # bad files fail before the model loads
        sampling = SamplingSettings(n=args.n, temperature=args.temperature, top_p=args.top_p,
                                    max_new_tokens=args.max_new_tokens, seed=args.seed)
        pol = load_policy(args.model, args.dtype, args.device, with_model=args.backend == "transformers")
        backend = make_backend(args.backend, pol.model, pol.tokenizer, pol.hf_dir, args.batch_size)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"echorl eval: {e}", file=sys.stderr)
        return 2
    print(f"evaluating {pol.source} on {[s.name for s in specs]} (n={args.n}, T={args.temperature}, top_p={args.top_p})")
    pool = make_pool(args.workers, args.timeout_s)
    try:
        samples, summary = evaluate(backend, pol.tokenizer, benchmarks, sampling, pool,
                                    chat_template=args.chat_template, warn=False)
    finally:
        pool.close()
    settings = {"model": args.model, "backend": args.backend, "n": args.n, "temperature": args.temperature,
                "top_p": args.top_p, "max_new_tokens": args.max_new_tokens, "seed": args.seed,
                "batch_size": args.batch_size}
    files = write_outputs(args.out, samples, summary, settings)
    print(open(files["summary.md"]).read())
    for f, path in files.items():
        print(f"  {f:14s} {path}")
    for msg in no_answer_warnings(samples, summary):
        print(f"echorl eval: WARNING: {msg}", file=sys.stderr)
    return 0


def _compare_main(argv: Sequence[str]) -> int:
    args = _compare_parser().parse_args(list(argv))
    try:
        res = compare_samples(read_samples(args.a), read_samples(args.b), metric=args.metric,
                              resamples=args.resamples, seed=args.seed, level=args.level)
    except (ValueError, FileNotFoundError) as e:
        print(f"echorl eval compare: {e}", file=sys.stderr)
        return 2
    print(format_comparison(res, os.path.basename(os.path.normpath(args.a)), os.path.basename(os.path.normpath(args.b))))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


def export_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="echorl export", description="engine checkpoint -> Hugging Face folder")
    p.add_argument("ckpt", help="run folder, its checkpoints/, or a global_step_<k> folder")
    p.add_argument("out_dir")
    args = p.parse_args(list(argv))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    try:
        out = export_checkpoint(args.ckpt, args.out_dir)
    except (ValueError, FileNotFoundError) as e:
        print(f"echorl export: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.ckpt} -> {out} (load with AutoModelForCausalLM.from_pretrained)")
    return 0
