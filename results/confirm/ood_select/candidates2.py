"""Second batch of OOD candidates on GRPO seed 1 (step 100)."""
import sys, time
from echorl.tasks import chain
from echorl.tasks.chain import ChainSpec, TRAIN
from echorl.local.trainer import load_model
from echorl.local import checkpoint as ckpt
from echorl.eval.backends import SamplingSettings, TransformersBackend
from echorl.eval.data import BenchmarkSpec
from echorl.eval.run import evaluate, make_pool


def spaced(r):
    p = r["prompt"].split(": ", 1)[1]
    for op in "+-*":
        p = p.replace(op, f" {op} ")
    return {**r, "prompt": "Left to right: " + p}


CANDIDATES = {  # run in two batches: the first four, then the two tail sets
    "mult10": (ChainSpec(4, min_multiplier=10, max_multiplier=10), None),
    "start20-25": (ChainSpec(4, min_start=20, max_start=25), None),
    "spaces": (TRAIN, spaced),
    "prefix": (TRAIN, lambda r: {**r, "prompt": "Compute " + r["prompt"][0].lower() + r["prompt"][1:]}),
    "tail_s15m7": (ChainSpec(4, min_start=15, min_multiplier=7), None),
    "tail_s15m8a7": (ChainSpec(4, min_start=15, min_multiplier=8, min_addend=7), None),
}

if __name__ == "__main__":
    model, tok = load_model("tiny-chain")
    if sys.argv[1] == "grpo":
        st = ckpt.load_checkpoint(ckpt.latest_checkpoint("outputs/ood_select/runs/grpo/seed1/checkpoints"))
        model.load_state_dict(st["model"])
    pool = make_pool(1, 10.0)
    backend = TransformersBackend(model, tok, batch_size=256)
    samp = SamplingSettings(n=4, temperature=0.6, max_new_tokens=96, seed=1234)
    for name, (spec, fn) in CANDIDATES.items():
        rows = chain._draw(f"echorl/chain/candidate/{name}", 150, spec, chain.heldout_prompts())
        rows = [{**(fn(r) if fn else r), "problem_id": str(i)} for i, r in enumerate(rows)]
        t = time.time()
        _, summ = evaluate(backend, tok, [(BenchmarkSpec(name, "chain", "ood"), rows)], samp, pool, chat_template="auto")
        print(f"{sys.argv[1]} {name}: avg@4 {100 * summ['benchmarks'][name]['avg@4']:.1f} ({time.time() - t:.0f} s) e.g. {rows[0]['prompt']!r}", flush=True)
    pool.close()
