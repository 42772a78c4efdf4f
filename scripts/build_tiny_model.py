#!/usr/bin/env python
"""Build the tiny Qwen2 + char tokenizer model (seeded warm-start) and report its success rates.

    python scripts/build_tiny_model.py --ship               # the model shipped in echorl/assets/ (how it was built)
    python scripts/build_tiny_model.py --recipe tiny-chain --ship   # the testbed model, echorl/assets/tiny-chain
    python scripts/build_tiny_model.py                      # into the default cache folder
    python scripts/build_tiny_model.py --out /tmp/tiny --steps 100 --eval-rows 200
    python scripts/build_tiny_model.py --bench-only         # time a GRPO-sized step on the cached model

Prints the parameter count, warm-start time, final loss, sampled success rate at temperature 1.0
per arithmetic level, and (with --bench) the time of one GRPO-sized step: 16 prompts x 8 rollouts
sampled (up to 64 new tokens), then one forward+backward+AdamW on those 128 sequences.
See echorl/models/tiny.py for the recipe.

The shipped model (echorl/assets/tiny-qwen2-char, RECIPE version 2: 0.69M parameters, 2500 seeded
warm-start steps on one thread) took 520 s to build on the shared 2-core box; sampled success at
T=1.0 on 500 prompts: overall 23.2%, level 1 95%, level 2 14%, level 3 5%, level 4 1%, level 5 1%.
Rebuild and re-ship with `--ship` whenever RECIPE changes (and with `--recipe tiny-chain --ship`
whenever CHAIN_RECIPE changes; its numbers are in docs/engine.md, "Testbed").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch


def bench_step(model, tok, prompts: int = 16, n: int = 8, max_new_tokens: int = 64, repeats: int = 2) -> dict:
    """Seconds for rollout generation and for one update on ``prompts * n`` sequences (best of ``repeats``)."""
    from echorl.models.tiny import _prompt_text
    from echorl.tasks import arithmetic

    rows = arithmetic.generate(prompts, seed=123)
    texts = [_prompt_text(tok, r["prompt"]) for r in rows for _ in range(n)]
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    gen_s, upd_s, T = [], [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
        gen_s.append(time.perf_counter() - t0)
        att = (out != tok.pad_token_id).long()
        att[:, : enc["attention_mask"].shape[1]] = enc["attention_mask"]
        T = out.shape[1]
        t0 = time.perf_counter()
        model.train()
        logits = model(input_ids=out, attention_mask=att).logits  # [B, T, V]
        logp = torch.log_softmax(logits.float(), -1).gather(-1, out[:, 1:, None].clamp(min=0)).squeeze(-1)
        loss = -(logp * att[:, 1:]).sum() / att[:, 1:].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.eval()
        upd_s.append(time.perf_counter() - t0)
    return {"batch": prompts * n, "seq_len": T, "generate_s": round(min(gen_s), 3), "update_s": round(min(upd_s), 3)}


def main(argv: list[str] | None = None) -> int:
    from echorl.models.tiny import RECIPES, build_tiny_model, default_cache_dir, load_tiny_model, shipped_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="tiny", choices=sorted(RECIPES),
                    help="tiny (arithmetic, RECIPE) or tiny-chain (the testbed, CHAIN_RECIPE)")
    ap.add_argument("--out", default=None, help="output folder (default: the cache folder)")
    ap.add_argument("--ship", action="store_true",
                    help="write into the package (echorl/assets/<recipe name>), the model load_tiny_model() uses by default")
    ap.add_argument("--steps", type=int, default=None, help="warm-start steps (default: the recipe's)")
    ap.add_argument("--seed", type=int, default=None, help="seed of init, data and sampling (default: the recipe's)")
    ap.add_argument("--eval-rows", type=int, default=500, help="prompts for the sampled success rate (0: skip)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for --bench (the build itself runs on recipe['threads'] = 1)")
    ap.add_argument("--bench", action="store_true", help="also time a GRPO-sized step (16 x 8 rollouts)")
    ap.add_argument("--bench-only", action="store_true", help="only time a step on the model in --out")
    args = ap.parse_args(argv)
    if args.ship and args.out:
        ap.error("--ship and --out are exclusive")
    base = RECIPES[args.recipe]
    args.out = str(shipped_dir(base)) if args.ship else args.out or str(default_cache_dir(base))
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if not args.bench_only:
        recipe = dict(base, seed=base["seed"] if args.seed is None else args.seed)
        if args.steps is not None:
            recipe["warm_start_steps"] = args.steps
        meta = build_tiny_model(args.out, recipe, eval_rows=args.eval_rows, log_every=50)
        print(json.dumps(meta, indent=2))
        acc = meta["sampled_success_T1"]
        if acc:
            print("sampled success at T=1.0: " + "  ".join(f"{k} {v:.1%}" for k, v in acc.items()))
        if "regime_T1" in meta:
            print("regime at T=1.0 (dev, 8 rollouts per prompt): " + json.dumps(meta["regime_T1"]))
        print(f"saved to {args.out}")
    if args.bench or args.bench_only:
        t0 = time.perf_counter()
        with open(os.path.join(args.out, "echorl_tiny.json")) as fh:
            recipe = json.load(fh)["recipe"]
        model, tok = load_tiny_model(args.out, build_if_missing=False, recipe=recipe)
        print(f"load from cache: {time.perf_counter() - t0:.2f} s")
        print("GRPO-sized step:", json.dumps(bench_step(model, tok)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
