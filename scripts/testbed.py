#!/usr/bin/env python
"""The EchoRL testbed (chain task + tiny-chain model): measure its regime, tune it, check GRPO.

    python scripts/testbed.py regime                          # the shipped tiny-chain model on 128 dev prompts x 8
    python scripts/testbed.py regime --model DIR --prompts 256
    python scripts/testbed.py tune --out /tmp/tc noise=0.2 warm_start_steps=1500   # build a variant, then its regime
    python scripts/testbed.py tune --out /tmp/tc --snapshots 200,400,600 noise=0.3  # one run, the regime every k steps
    python scripts/testbed.py ship --src /tmp/tc --step 400   # that snapshot as the shipped build (CHAIN_RECIPE)
    python scripts/testbed.py grpo --steps 200 --out outputs/testbed_grpo [overrides...]

``regime`` prints the sampled success at T=1.0, mean token entropy, distinct responses per group
and the all-success / mixed / all-fail group shares (:func:`echorl.models.regime.rollout_regime`).
``grpo`` trains plain GRPO (``echorl.enable=false``) with the engine (``LocalTrainer``) on the
testbed config (``echorl/config/testbed.yaml``) and measures held-out accuracy (one sample per
prompt at T=1.0 on the fixed ``dev`` split, and ``ood``) every ``--eval-every`` steps; it writes
``<out>/heldout.json`` and prints a table. Timing: ``timing_s/step`` of the engine's metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _parse_value(v: str):
    try:
        return json.loads(v)
    except ValueError:
        return v


def _load(model: str):
    from echorl.models.loading import load_model

    return load_model(model)


def regime(model, tok, prompts: int, n: int = 8, split: str = "dev", seed: int = 0) -> dict:
    from echorl.models.regime import rollout_regime
    from echorl.tasks import chain

    rows = chain.generate(prompts, split=split)
    t0 = time.perf_counter()
    res = rollout_regime(model, tok, rows, chain.score, n=n, temperature=1.0, seed=seed)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def heldout_accuracy(model, tok, split: str, prompts: int, seed: int = 0) -> float:
    """One sample per prompt at T=1.0 (the training temperature) on the fixed ``split``."""
    return regime(model, tok, prompts, n=1, split=split, seed=seed)["success"]


def cmd_regime(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    model, tok = _load(args.model)
    print(json.dumps(regime(model, tok, args.prompts, args.n), indent=1))
    return 0


def cmd_tune(args) -> int:
    import torch

    from echorl.models.tiny import CHAIN_RECIPE, build_tiny_model, load_tiny_model

    recipe = dict(CHAIN_RECIPE)
    for kv in args.set:
        k, _, v = kv.partition("=")
        if k not in recipe:
            raise SystemExit(f"unknown recipe key {k!r}; keys: {sorted(recipe)}")
        recipe[k] = _parse_value(v)
    if args.snapshots:  # one constant-rate warm start, the regime at each candidate step count
        from transformers import Qwen2ForCausalLM

        from echorl.models.char_tokenizer import build_char_tokenizer
        from echorl.models.tiny import tiny_config, warm_start

        if recipe.get("schedule") != "constant":
            raise SystemExit("--snapshots needs schedule=constant (prefixes of a cosine run are not shorter runs)")
        at = sorted(int(x) for x in args.snapshots.split(","))
        recipe["warm_start_steps"] = at[-1]
        torch.set_num_threads(args.threads)
        torch.manual_seed(recipe["seed"])
        tok = build_char_tokenizer()
        model = Qwen2ForCausalLM(tiny_config(len(tok), recipe, tok.eos_token_id))
        t0 = time.time()

        def snap(step, m):
            if step in at:
                state = torch.get_rng_state()
                res = regime(m, tok, args.prompts, args.n)
                torch.set_rng_state(state)
                Path(args.out).mkdir(parents=True, exist_ok=True)
                torch.save(m.state_dict(), Path(args.out) / f"step_{step}.pt")  # for `ship`
                print(json.dumps({"set": args.set, "warm_start_steps": step, "wall_s": round(time.time() - t0), **res}),
                      flush=True)

        warm_start(model, tok, recipe, log_every=100, on_step=snap)
        return 0
    meta = build_tiny_model(args.out, recipe, eval_rows=0, log_every=250)
    torch.set_num_threads(args.threads)
    model, tok = load_tiny_model(args.out, build_if_missing=False, recipe=recipe)
    res = regime(model, tok, args.prompts, args.n)
    print(json.dumps({"set": args.set, "final_loss": meta["final_loss"], "params": meta["num_params"],
                      "build_s": meta["warm_start_seconds"], **res}))
    return 0


def cmd_ship(args) -> int:
    """Save snapshot ``step_<k>.pt`` of a ``tune --snapshots`` run as the build of CHAIN_RECIPE with
    ``warm_start_steps=k`` (with the constant schedule, the first k steps of the run are exactly the
    k-step warm start) into ``--dest`` (default: the shipped folder), evaluated as a build is."""
    import torch
    from transformers import Qwen2ForCausalLM

    from echorl.models.char_tokenizer import build_char_tokenizer
    from echorl.models.tiny import CHAIN_RECIPE, finish_build, shipped_dir, tiny_config

    recipe = dict(CHAIN_RECIPE, warm_start_steps=args.step)
    for kv in args.set:  # the tune run's recipe overrides
        k, _, v = kv.partition("=")
        recipe[k] = _parse_value(v)
    if recipe.get("schedule") != "constant":
        raise SystemExit("snapshots are builds only with schedule=constant")
    if args.dest is None and recipe != CHAIN_RECIPE:
        raise SystemExit(f"set CHAIN_RECIPE to {recipe} before shipping this snapshot (or pass --dest)")
    torch.set_num_threads(1)
    tok = build_char_tokenizer()
    model = Qwen2ForCausalLM(tiny_config(len(tok), recipe, tok.eos_token_id))
    model.load_state_dict(torch.load(Path(args.src) / f"step_{args.step}.pt"))
    model.eval()
    meta = finish_build(model, tok, args.dest or shipped_dir(recipe), recipe, n_eval=500)
    print(json.dumps(meta, indent=1))
    return 0


def cmd_grpo(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from echorl.local import load_config
    from echorl.local.trainer import LocalTrainer

    cfg = load_config([f"output_dir={args.out}", "resume=disable", f"trainer.total_training_steps={args.steps}",
                       "trainer.make_report=false", *args.overrides], config_name="testbed")
    tr = LocalTrainer(cfg)
    evals = []

    def ev(step, final=False):
        splits = ("dev", "ood") if final or step in (0, args.steps) else ("dev",)
        state = torch.get_rng_state()  # the run's sampling stream is the same with or without evals
        acc = {s: heldout_accuracy(tr.model, tr.tok, s, args.eval_prompts, seed=1000 + step) for s in splits}
        torch.set_rng_state(state)
        evals.append({"step": step, **acc})
        print(f"eval step {step:4d}: " + "  ".join(f"{k} {v:.3f}" for k, v in acc.items()), flush=True)

    ev(0)
    rows = []
    try:
        deadline = time.monotonic() + 60 * args.time_limit_min if args.time_limit_min else None
        while tr.global_step < args.steps:
            if deadline is not None and time.monotonic() > deadline:
                print(f"--time-limit-min {args.time_limit_min} reached at step {tr.global_step}", flush=True)
                ev(tr.global_step, final=True)
                break
            m = tr.step()
            rows.append({"step": tr.global_step, **m})
            if tr.global_step % 10 == 0:
                last = rows[-10:]

                def avg(key, last=last):
                    return sum(r.get(key, 0.0) for r in last) / len(last)
                print(f"step {tr.global_step:4d} reward {avg('reward/mean'):.3f} entropy {avg('actor/entropy'):.3f} "
                      f"all-success {avg('echo/groups_all_success_frac'):.2f} zero-var {avg('echo/groups_zero_var_frac'):.2f} "
                      f"step {avg('timing_s/step'):.2f}s", flush=True)
            if tr.global_step % args.eval_every == 0:
                ev(tr.global_step)
    finally:
        tr.pool.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"evals": evals, "steps": rows, "threads": torch.get_num_threads(),
           "mean_step_s": sum(r["timing_s/step"] for r in rows) / max(len(rows), 1)}
    (out / "heldout.json").write_text(json.dumps(res))
    print(f"dev accuracy {evals[0]['dev']:.3f} -> {evals[-1]['dev']:.3f}; mean step {res['mean_step_s']:.2f} s")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("regime")
    r.add_argument("--model", default="tiny-chain")
    r.add_argument("--prompts", type=int, default=128)
    r.add_argument("--n", type=int, default=8)
    r.add_argument("--threads", type=int, default=1)
    t = sub.add_parser("tune")
    t.add_argument("--out", required=True)
    t.add_argument("--prompts", type=int, default=128)
    t.add_argument("--n", type=int, default=8)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--snapshots", default="", help="comma-separated step counts: regime of each prefix of one run")
    t.add_argument("set", nargs="*", help="recipe overrides key=value")
    sh = sub.add_parser("ship")
    sh.add_argument("--src", required=True, help="the --out folder of a tune --snapshots run")
    sh.add_argument("--step", type=int, required=True)
    sh.add_argument("--dest", default=None)
    sh.add_argument("set", nargs="*", help="the recipe overrides of the tune run (key=value)")
    g = sub.add_parser("grpo")
    g.add_argument("--out", default="outputs/testbed_grpo")
    g.add_argument("--steps", type=int, default=200)
    g.add_argument("--eval-every", type=int, default=50)
    g.add_argument("--eval-prompts", type=int, default=256)
    g.add_argument("--time-limit-min", type=float, default=None, help="stop (with a last eval) after this many minutes")
    g.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return {"regime": cmd_regime, "tune": cmd_tune, "ship": cmd_ship, "grpo": cmd_grpo}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
