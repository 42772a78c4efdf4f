"""``echorl analyze entropy | deletion | clips``: argument parsing and the runs (docs/analysis.md).

* ``entropy``: token/step entropy profile of expert vs self-generated correct vs wrong solutions
  (:mod:`echorl.analysis.entropy`) -> ``<name>_entropy.json`` + ``<name>_entropy.png``.
* ``deletion``: the step-deletion test (:mod:`echorl.analysis.deletion`) ->
  ``<name>_deletion.json`` + ``<name>_deletion.png``.
* ``clips``: the EchoClip HTML page of a dump (``echo_clips.json`` of the engine or of a verl run,
  a file or a folder holding one) -> ``echo_clips.html`` beside it (or ``--out``).

Example (the embedded testbed, a minute on 2 cores)::

    echorl analyze entropy --model tiny --data arithmetic --rows 64 --samples 4
    echorl analyze deletion --model tiny --data arithmetic --levels 3 4 5 --source expert --rows 60
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from echorl.analysis.deletion import run_deletion
from echorl.analysis.entropy import (
    KINDS,
    dump_solutions,
    encode_prompts_of,
    expert_solutions,
    grade,
    profile_solutions,
    rows_with_user_prompts,
    self_solutions,
    summarize,
    token_entropies,
)
from echorl.analysis.entropy_plots import plot_deletion, plot_entropy_profile
from echorl.analysis.viewer import write_clip_viewer
from echorl.core.config import EchoConfig
from echorl.generation import eos_ids_of
from echorl.models.loading import load_model

__all__ = ["add_parsers", "run"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny", help="tiny, smollm2 or a Hugging Face model folder (default tiny)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    p.add_argument("--data", default="arithmetic", help="task name (arithmetic, rg/chain_sum, ...) or a "
                   ".jsonl/.json/.parquet file with prompt, answer and solution or target (default arithmetic)")
    p.add_argument("--rows", type=int, default=64, help="prompts to use (default 64)")
    p.add_argument("--levels", type=int, nargs="*", default=None, help="task levels (generated tasks only)")
    p.add_argument("--seed", type=int, default=0, help="data, sampling and random-order seed (default 0)")
    p.add_argument("--chat-template", default="auto", choices=("auto", "true", "false"))
    p.add_argument("--boundary-ids", type=int, nargs="*", default=None,
                   help="step boundary token ids (default: every token whose text ends in a newline)")
    p.add_argument("--step-agg", default="mean", choices=("mean", "sum", "max"))
    p.add_argument("--min-step-tokens", type=int, default=1)
    p.add_argument("--samples", type=int, default=4, help="self-generated responses per prompt (default 4)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature of self-generated responses, also the entropy temperature (default 1.0)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (default 16)")
    p.add_argument("--chunk-rows", type=int, default=8, help="rows per forward of the entropy pass (default 8)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default="outputs/analysis", help="output folder (default outputs/analysis)")
    p.add_argument("--name", default="analysis", help="file name prefix (default analysis)")


def add_parsers(sub: Any) -> None:
    """Add ``entropy``, ``deletion`` and ``clips`` to the ``echorl analyze`` sub-parsers."""
    p = sub.add_parser("entropy", help="token/step entropy: expert vs self-generated correct vs wrong solutions")
    _common(p)
    p.add_argument("--dump", action="append", default=[], help="also profile the rollouts of an echo_clips.json "
                   "(file or run folder; repeatable)")
    p.add_argument("--no-expert", action="store_true", help="leave out the rows' reference solutions")
    p = sub.add_parser("deletion", help="accuracy after deleting high / low / random entropy steps")
    _common(p)
    p.add_argument("--source", default="self", choices=("self", "expert", "both"),
                   help="correct solutions to edit: self-generated, the rows' expert solutions, or both (default self)")
    p.add_argument("--shares", type=float, nargs="+", default=[0, 10, 20, 30, 40, 50],
                   help="percent of reasoning steps deleted (default 0 10 20 30 40 50)")
    p.add_argument("--orders", nargs="+", default=["highest", "lowest", "random"])
    p.add_argument("--seeds", type=int, default=5, help="seeds of the random order (default 5)")
    p.add_argument("--include-answer", action="store_true", help="the final-answer step may be deleted too")
    p.add_argument("--finish-temperature", type=float, default=0.0, help="0 = greedy continuation (default)")
    p.add_argument("--max-solutions", type=int, default=200, help="at most this many correct solutions")
    p = sub.add_parser("clips", help="EchoClip HTML page of an echo_clips.json dump (engine or verl run)")
    p.add_argument("path", help="echo_clips.json or a folder holding it")
    p.add_argument("--out", default=None, help="HTML path (default: echo_clips.html beside the dump)")


def _setup(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    model, tok = load_model(args.model, args.dtype)
    model = model.to(dev).eval()
    ids = tuple(args.boundary_ids) if args.boundary_ids else EchoConfig(boundary="auto").resolve_boundary(tok).boundary_token_ids
    rows = rows_with_user_prompts(args.data, args.rows, args.seed, args.levels)
    eos = eos_ids_of(tok, model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    return {"model": model, "tok": tok, "rows": rows, "prompt_ids": encode_prompts_of(tok, rows, args.chat_template),
            "boundary_ids": ids, "eos": eos, "pad": pad, "device": dev}


def _solutions(args: argparse.Namespace, env: dict[str, Any], expert: bool, self_gen: bool) -> list:
    sols = expert_solutions(env["tok"], env["rows"], env["prompt_ids"]) if expert else []
    if self_gen and args.samples > 0:
        sols += self_solutions(env["model"], env["tok"], env["rows"], env["prompt_ids"], n=args.samples,
                               eos_ids=env["eos"], pad_id=env["pad"], max_new_tokens=args.max_new_tokens,
                               temperature=args.temperature, batch_size=args.batch_size, seed=args.seed)
    return sols


def _profiles(args: argparse.Namespace, env: dict[str, Any], sols: list) -> list[dict[str, Any]]:
    ents = token_entropies(env["model"], sols, pad_id=env["pad"], temperature=args.temperature, chunk_rows=args.chunk_rows)
    return profile_solutions(sols, ents, env["boundary_ids"], args.step_agg, args.min_step_tokens)


def _settings(args: argparse.Namespace, env: dict[str, Any]) -> dict[str, Any]:
    s = {k: v for k, v in vars(args).items() if k not in ("cmd", "analyze_cmd")}
    s.update(boundary_ids=list(env["boundary_ids"]), device=env["device"])
    return s


def _entropy(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    env = _setup(args)
    sols = _solutions(args, env, expert=not args.no_expert, self_gen=True)
    for d in args.dump:
        sols += dump_solutions(d, env["tok"], args.chat_template)
    if not sols:
        raise ValueError("no solutions to profile: the rows have no solution/target and --samples is 0")
    profiles = _profiles(args, env, sols)
    for p in profiles:  # the step a task marks as hard (chain testbed), for summarize's peak_is_hard_step
        extra = env["rows"][p["row"]].get("extra_info") if p["row"] >= 0 else None
        p["hard_step"] = extra.get("hard_step") if isinstance(extra, dict) else None
    summary = summarize(profiles)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"settings": _settings(args, env), "summary": summary, "profiles": profiles,
           "seconds": time.perf_counter() - t0}
    js = out / f"{args.name}_entropy.json"
    js.write_text(json.dumps(res, indent=1))
    png = plot_entropy_profile(summary, profiles, out / f"{args.name}_entropy.png", f"{args.model} on {args.data}")
    print(f"{'kind':8s} {'n':>5s} {'token H':>16s} {'step H':>8s} {'steps':>6s} {'peak pos':>8s} {'peak H':>7s} {'peak@last':>9s}")
    for k, s in summary.items():
        if k not in KINDS:
            continue
        t = s["token_h"]
        print(f"{k:8s} {s['solutions']:5d} {t['mean']:7.3f} [{t['ci95'][0]:.3f},{t['ci95'][1]:.3f}] "
              f"{s['step_h']['mean']:8.3f} {s['num_steps']['mean']:6.2f} {s['peak_pos']['mean']:8.2f} "
              f"{s['peak_h']['mean']:7.3f} {s['peak_on_last_step']:9.2f}")
    hard = {k: s["peak_is_hard_step"] for k, s in summary.items() if k in KINDS and "peak_is_hard_step" in s}
    if hard:
        print("peak step = the task's hard step: " + ", ".join(f"{k} {v:.2f}" for k, v in hard.items()))
    pd = summary["paired"]
    if pd["rows"]:
        d = pd["expert_minus_correct_token_h"]
        print(f"same prompt ({pd['rows']} rows): expert - correct token H {d['mean']:+.3f} [{d['ci95'][0]:+.3f},{d['ci95'][1]:+.3f}]")
    print(f"json {js}\npng  {png}\n({res['seconds']:.0f} s)")
    return 0


def _deletion(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    env = _setup(args)
    sols = _solutions(args, env, expert=args.source in ("expert", "both"), self_gen=args.source in ("self", "both"))
    sols = [s for s in sols if s.score >= 1.0][:args.max_solutions]
    if not sols:
        raise ValueError(f"no correct solutions to edit (--source {args.source}); raise --rows / --samples or use "
                         "--source expert")
    profiles = _profiles(args, env, sols)
    res = run_deletion(env["model"], env["tok"], sols, profiles, env["rows"], grade, shares=[s / 100 for s in args.shares],
                       orders=args.orders, seeds=list(range(args.seeds)), include_answer=args.include_answer,
                       temperature=args.finish_temperature, max_new_tokens=args.max_new_tokens, eos_ids=env["eos"],
                       pad_id=env["pad"], batch_size=args.batch_size, seed=args.seed)
    res["settings"] = _settings(args, env)
    res["kinds"] = {k: sum(s.kind == k for s in sols) for k in ("expert", "correct")}
    res["pool_steps_mean"] = sum(p["num_steps"] for p in profiles) / len(profiles) - (0 if args.include_answer else 1)
    res["seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    js = out / f"{args.name}_deletion.json"
    js.write_text(json.dumps(res, indent=1))
    png = plot_deletion(res, out / f"{args.name}_deletion.png",
                        f"{args.model} on {args.data}: {res['solutions']} correct solutions ({args.source})")
    print(f"{res['solutions']} solutions ({res['skipped_one_step']} one-step left out), mean pool "
          f"{res['pool_steps_mean']:.2f} steps, {res['continuations']} continuations")
    print("share  " + "  ".join(f"{o:>8s}" for o in res["orders"]) + "   random-highest [95% CI]")
    for j, s in enumerate(res["shares"]):
        gap = res["gaps"].get("random-highest", [{}] * len(res["shares"]))[j]
        extra = f"   {gap['mean']:+.3f} [{gap['ci95'][0]:+.3f},{gap['ci95'][1]:+.3f}]" if gap else ""
        print(f"{100 * s:4.0f}%  " + "  ".join(f"{r['accuracy'][j]:8.3f}" for r in res["orders"].values()) + extra)
    print(f"json {js}\npng  {png}\n({res['seconds']:.0f} s)")
    return 0


def _clips(args: argparse.Namespace) -> int:
    p = Path(args.path)
    p = p / "echo_clips.json" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"echorl analyze clips: {p} not found (give an echo_clips.json or a folder holding one)")
    records = json.loads(p.read_text())
    if not isinstance(records, list):
        raise ValueError(f"{p}: expected a JSON list of EchoClip records, got {type(records).__name__}")
    out = Path(args.out) if args.out else p.with_suffix(".html")
    print(f"clips_html {write_clip_viewer(records, out)}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the ``echorl analyze`` sub-command ``args.analyze_cmd``."""
    return {"entropy": _entropy, "deletion": _deletion, "clips": _clips}[args.analyze_cmd](args)
