"""Accuracy of candidate OOD shifts of the chain task: untrained tiny-chain and GRPO seed 1 (150 steps)."""
import json, sys, time
import torch
from echorl.tasks import chain
from echorl.tasks.chain import ChainSpec
from echorl.local.trainer import load_model
from echorl.local import checkpoint as ckpt
from echorl.eval.backends import SamplingSettings, TransformersBackend
from echorl.eval.data import BenchmarkSpec
from echorl.eval.run import evaluate, make_pool

CANDIDATES = {
    "start20-49": ChainSpec(4, min_start=20, max_start=49), "ops5": ChainSpec(5),
    "addend10-19": ChainSpec(4, min_addend=10, max_addend=19),
    "mult11-19": ChainSpec(4, min_multiplier=11, max_multiplier=19), "ops3": ChainSpec(3),
}
ROWS = int(sys.argv[2]) if len(sys.argv) > 2 else 300

if __name__ == "__main__":
    which = sys.argv[1]
    model, tok = load_model("tiny-chain")
    if which == "grpo":
        path = ckpt.latest_checkpoint("outputs/ood_select/runs/grpo/seed1/checkpoints")
        st = ckpt.load_checkpoint(path)
        model.load_state_dict(st["model"])
        print("checkpoint", path, flush=True)
    pool = make_pool(1, 10.0)
    backend = TransformersBackend(model, tok, batch_size=256)
    samp = SamplingSettings(n=4, temperature=0.6, max_new_tokens=96, seed=1234)
    out = {}
    for name, spec in CANDIDATES.items():
        rows = chain._draw(f"echorl/chain/candidate/{name}", ROWS, spec, chain.heldout_prompts())
        rows = [{**r, "problem_id": str(i)} for i, r in enumerate(rows)]
        t = time.time()
        _, summ = evaluate(backend, tok, [(BenchmarkSpec(name.split()[0], "chain", "ood"), rows)], samp, pool, chat_template="auto")
        b = summ["benchmarks"][name.split()[0]]
        out[name] = b["avg@4"]
        print(f"{which} {name}: avg@4 {100 * b['avg@4']:.1f}  ({time.time() - t:.0f} s)", flush=True)
    pool.close()
    json.dump(out, open(f"outputs/ood_select/candidates_{which}.json", "w"), indent=1)
