"""Step time of EchoGRPOTrainer (EchoRL on) against TRL's GRPOTrainer at equal settings, in one run.

Both arms train the shipped tiny-chain model on the chain testbed (``echorl.trl.testbed``) from the
same weights, seed, prompts and GRPOConfig (the engine's testbed: ``n`` rollouts per prompt, T=1.0,
token-mean loss, no KL, lr 5e-4); the EchoRL arm adds ``echorl_coef`` (default the paper's 1e-3).
Rounds interleave the arms, A B, B A, A B, ... (a fresh trainer per arm and round, a warm-up step
untimed), so load drift on a shared machine hits both; the headline is the median over rounds of
the per-round ratio of median step times, with the spread of those ratios (min .. max, and the
quartiles in the JSON). A "step" is one generation plus its optimizer steps.

Two settings (``--settings``):

* ``reuse``: ``steps_per_generation=2 > gradient_accumulation_steps=1``: TRL makes its no-grad
  old-policy pass and EchoRL reads the token entropies from it (no extra forward).
* ``on_policy``: ``steps_per_generation = gradient_accumulation_steps = 1`` (TRL's default): TRL
  makes no old-policy pass, so EchoRL records the entropies while ``generate`` samples. With
  ``--forward-pass-arm`` a third arm runs EchoRL with its own no-grad forward pass instead
  (``EchoGRPOTrainer.generation_entropy = False``), rotated into the same rounds.

Also recorded: process CPU time per step, and EchoRL's own ``timing_s/echo_generation_entropy``,
``timing_s/echo_entropy_pass`` and ``timing_s/echo`` (median seconds); "own work" is their sum over
TRL's median step time, an estimate of the overhead that load on a shared machine disturbs less
than the ratio of two step times (it leaves out the loss term: a masked sum over the micro-batch's
``[b, L]`` log-probs).

    python benchmarks/bench_trl_host.py [--rounds 6] [--steps 3] [--settings reuse,on_policy] [--threads 1]
                                        [--forward-pass-arm]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from bench_report import machine, print_table, write_json

from echorl.metric_names import (
    ENTROPY_FROM_GENERATION,
    ENTROPY_PASS,
    TIMING_ECHO,
    TIMING_ECHO_ENTROPY_PASS,
    TIMING_ECHO_GENERATION_ENTROPY,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SETTINGS = {"reuse": 2, "on_policy": 1}  # setting -> steps_per_generation (gradient_accumulation_steps=1)
ECHO_KEYS = (TIMING_ECHO_GENERATION_ENTROPY, TIMING_ECHO_ENTROPY_PASS, TIMING_ECHO)
SOURCE_KEYS = (ENTROPY_FROM_GENERATION, ENTROPY_PASS, "echo/clips")


def _quartiles(xs: list[float]) -> list[float]:
    return statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3


def run_arm(arm: str, spg: int, args, out_dir: str) -> dict:
    """Train ``warmup + steps`` steps of one arm (``trl``, ``echo``, or ``echo_fwd``: EchoRL with its own
    entropy pass); per-step wall and CPU seconds after the warm-up."""
    import torch
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from echorl.trl import EchoGRPOConfig, EchoGRPOTrainer
    from echorl.trl.testbed import chain_dataset, chain_reward, load_chain_model

    torch.set_num_threads(args.threads)
    total = args.warmup + args.steps
    kw = dict(output_dir=out_dir, use_cpu=True, seed=args.seed, data_seed=args.seed, shuffle_dataset=False,
              num_generations=args.n, per_device_train_batch_size=args.prompts * args.n // spg,
              steps_per_generation=spg, gradient_accumulation_steps=1, num_iterations=1, beta=0.0, loss_type="bnpo",
              scale_rewards="group", epsilon=0.2, max_completion_length=args.max_response_length, temperature=1.0,
              top_p=1.0, top_k=0, mask_truncated_completions=False, learning_rate=5e-4, lr_scheduler_type="constant",
              warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, max_steps=total * spg, logging_steps=1,
              report_to="none", save_strategy="no", eval_strategy="no", disable_tqdm=True, log_completions=False,
              bf16=False, dataloader_num_workers=0)
    echo = arm != "trl"
    if echo:
        cls = EchoGRPOTrainer if arm == "echo" else type("ForwardPassTrainer", (EchoGRPOTrainer,),
                                                          {"generation_entropy": False})
        args_obj = EchoGRPOConfig(**kw, echorl_coef=args.coef)
    else:
        cls, args_obj = GRPOTrainer, GRPOConfig(**kw)
    times: dict[str, list[float]] = {"wall": [], "cpu": []}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.t, self.c, self.done = time.perf_counter(), time.process_time(), 0

        def on_step_end(self, _args, state, control, **k):
            if state.global_step % spg:
                return
            now, cpu = time.perf_counter(), time.process_time()
            self.done += 1
            if self.done > args.warmup:
                times["wall"].append(now - self.t)
                times["cpu"].append(cpu - self.c)
            self.t, self.c = now, cpu

    model, tok = load_chain_model()
    tr = cls(model=model, reward_funcs=chain_reward(), args=args_obj,
             train_dataset=chain_dataset(total * args.prompts, seed=args.seed), processing_class=tok,
             callbacks=[Clock()])
    tr.train()
    hist = tr.state.log_history
    out = {"wall": times["wall"], "cpu": times["cpu"]}
    if echo:
        for k in ECHO_KEYS + SOURCE_KEYS:
            out[k] = [h.get(k, 0.0) for h in hist if "echo/clips" in h][args.warmup:]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default="reuse,on_policy", help="comma list of: " + ", ".join(SETTINGS))
    p.add_argument("--rounds", type=int, default=6, help="rounds; each runs both arms (order alternates)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per arm per round")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per arm per round")
    p.add_argument("--prompts", type=int, default=16, help="prompts per step")
    p.add_argument("--n", type=int, default=8, help="rollouts per prompt")
    p.add_argument("--max-response-length", type=int, default=64)
    p.add_argument("--coef", type=float, default=1e-3, help="echorl_coef of the EchoRL arm")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--forward-pass-arm", action="store_true",
                   help="on_policy: also run EchoRL with its own entropy forward pass (no generate-time recording)")
    p.add_argument("--out", default="benchmarks/results/bench_trl_host.json")
    args = p.parse_args()
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    bad = [s for s in settings if s not in SETTINGS]
    if bad:
        p.error(f"--settings: unknown {bad}; valid: {list(SETTINGS)}")

    work = tempfile.mkdtemp(prefix="bench_trl_host_")
    report: dict = {"config": vars(args), "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "settings": {}}
    rows = []
    for s in settings:
        spg = SETTINGS[s]
        arms = ["trl", "echo"] + (["echo_fwd"] if args.forward_pass_arm and s == "on_policy" else [])
        raw: dict[str, list[dict]] = {a: [] for a in arms}
        for r in range(args.rounds):
            order = arms[r % len(arms):] + arms[:r % len(arms)]  # rotate: each arm runs first as often
            if r % 2:
                order = order[::-1]
            for arm in order:
                raw[arm].append(run_arm(arm, spg, args, os.path.join(work, f"{s}_{arm}_{r}")))
                print(f"{s} round {r} {arm}: median {statistics.median(raw[arm][-1]['wall']):.3f} s/step", flush=True)
        med = {arm: [statistics.median(x["wall"]) for x in raw[arm]] for arm in raw}
        cpu = {arm: [statistics.median(x["cpu"]) for x in raw[arm]] for arm in raw}
        res: dict = {"steps_per_generation": spg, "trl_step_s": statistics.median(med["trl"]),
                     "trl_cpu_s": statistics.median(cpu["trl"]), "arms": {}, "raw": raw}
        for arm in arms[1:]:
            ratios = [e / t for e, t in zip(med[arm], med["trl"])]
            cpu_ratios = [e / t for e, t in zip(cpu[arm], cpu["trl"])]
            own = {k: statistics.median(v for x in raw[arm] for v in x[k]) for k in ECHO_KEYS}
            frac = {k: statistics.mean(v for x in raw[arm] for v in x[k]) for k in SOURCE_KEYS}
            source = ("generation" if frac["echo/entropy_from_generation"] == 1 else
                      "forward pass" if frac["echo/entropy_pass"] == 1 else
                      "TRL's pass" if frac["echo/entropy_from_generation"] == frac["echo/entropy_pass"] == 0 else "mixed")
            a = {"step_s": statistics.median(med[arm]), "cpu_s": statistics.median(cpu[arm]),
                 "ratio_median": statistics.median(ratios), "ratio_quartiles": _quartiles(ratios),
                 "ratio_per_round": ratios, "cpu_ratio_median": statistics.median(cpu_ratios),
                 "cpu_ratio_quartiles": _quartiles(cpu_ratios), "cpu_ratio_per_round": cpu_ratios,
                 "entropy_source": source, "clips_mean": frac["echo/clips"],
                 **{k.split("/")[1] + "_s": v for k, v in own.items()},
                 "own_work_frac": sum(own.values()) / statistics.median(med["trl"])}
            res["arms"][arm] = a
            rows.append([s, arm, f"{res['trl_step_s']:.3f}", f"{a['step_s']:.3f}",
                         f"{(a['ratio_median'] - 1) * 100:+.1f}%",
                         f"{(min(ratios) - 1) * 100:+.1f} .. {(max(ratios) - 1) * 100:+.1f}",
                         f"{(a['cpu_ratio_median'] - 1) * 100:+.1f}%",
                         f"{(min(cpu_ratios) - 1) * 100:+.1f} .. {(max(cpu_ratios) - 1) * 100:+.1f}", source,
                         " / ".join(f"{own[k] * 1e3:.0f}" for k in ECHO_KEYS), f"{a['own_work_frac'] * 100:.1f}%"])
        report["settings"][s] = res
    print_table(f"bench_trl_host: tiny-chain, {args.prompts} prompts x {args.n} rollouts, <= {args.max_response_length} "
                f"tokens, echorl_coef={args.coef}, {args.threads} thread(s), {args.rounds} rounds x {args.steps} steps "
                f"per arm (medians; load avg {report['machine']['load_avg']})",
                ["setting", "arm", "TRL s/step", "arm s/step", "wall +", "wall rounds %", "CPU +", "CPU rounds %",
                 "entropies from", "gen / pass / stage ms", "own work"], rows)
    write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
