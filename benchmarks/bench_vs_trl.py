"""Step time of the embedded engine vs TRL's GRPOTrainer at equal settings, in one run.

Both arms get the same model weights (loaded fresh per arm), the same prompts in the same order
(no shuffling), ``n`` rollouts per prompt, the same sampling (temperature, top-p, top-k, max
response tokens, EOS), the same reward function (the task's verifier, called in-process by both
unless ``--reward-pool``), the same optimizer (AdamW, lr, betas, no weight decay, constant
schedule, grad-norm clip 1.0), the same number of optimizer
steps per step (mini-batches, one PPO epoch, no KL term, clip 0.2, token-mean loss over a
mini-batch) and the same torch thread count. TRL's settings that make this so:
``num_generations=n``, ``per_device_train_batch_size = rows per mini-batch``,
``steps_per_generation = mini-batches per step``, ``gradient_accumulation_steps=1``,
``num_iterations=1`` (so TRL computes old-policy log-probs, as the engine does), ``beta=0``,
``loss_type="bnpo"`` (token mean over the mini-batch, verl's ``token-mean``),
``scale_rewards="group"`` (GRPO's std normalisation), ``mask_truncated_completions=False``,
``use_vllm=False``, ``use_cpu=True``, no eval, no saving, no logging.

Rounds alternate (TRL ``--steps`` steps, then the engine ``--steps`` steps, repeated ``--rounds``
times; TRL's loop runs the engine's chunk from a callback), so machine-load drift hits both arms.
A "step" is one generation plus its optimizer steps. The engine's phases come from its
``timing_s/*`` metrics. Besides wall time, the process CPU time per step is recorded (less sensitive
to other jobs on a shared machine; it omits the engine's verifier worker processes, while TRL's
reward function runs in-process and is counted). EchoRL runs with ``enable=false`` (plain GRPO, as TRL): its stage still
selects clips for the ``echo/*`` metrics, which is counted in the engine's time.

    python benchmarks/bench_vs_trl.py [--threads 2] [--steps 10] [--rounds 3] [--task arithmetic] [--model tiny]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_report import print_table, write_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PHASES = (("generate", ("timing_s/gen",)), ("reward", ("timing_s/reward",)), ("old-policy pass", ("timing_s/old_log_prob",)),
          ("advantage+stage", ("timing_s/adv", "timing_s/echo")), ("update", ("timing_s/update_actor",)))


def engine_config(args, out: Path):
    from echorl.local import load_config

    mini = args.prompts // args.minibatches
    return load_config([
        f"model.name={args.model}", f"data.task={args.task}", f"output_dir={out}", "resume=disable", f"seed={args.seed}",
        f"data.train_batch_size={args.prompts}", "data.shuffle=false", f"actor_rollout_ref.rollout.n={args.n}",
        f"data.max_response_length={args.max_response_length}", f"data.max_prompt_length={args.max_prompt_length}",
        f"actor_rollout_ref.rollout.temperature={args.temperature}", f"actor_rollout_ref.rollout.top_p={args.top_p}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={mini}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={mini * args.n}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={args.prompts * args.n}",
        f"actor_rollout_ref.actor.optim.lr={args.lr}", "actor_rollout_ref.actor.optim.weight_decay=0.0",
        "actor_rollout_ref.actor.optim.clip_grad=1.0", "actor_rollout_ref.actor.clip_ratio=0.2",
        "actor_rollout_ref.actor.loss_agg_mode=token-mean", "algorithm.adv_estimator=grpo", "echorl.enable=false",
        f"trainer.total_training_steps={args.warmup + args.steps * args.rounds}", "trainer.logger=[]",
        "trainer.make_report=false", f"trainer.num_threads={args.threads}", "trainer.save_freq=-1",
        f"reward.num_workers={args.reward_workers}", f"reward.in_process={str(not args.reward_pool).lower()}"])


def trl_dataset(tr, n_rows: int):
    """TRL's dataset: the engine's rows in the engine's order; chat messages when the engine applied a template."""
    from datasets import Dataset

    from echorl.prompts import format_prompts

    rows = tr.prompts.rows[:n_rows]
    texts = [str(r["prompt"]) for r in rows]
    chat = format_prompts(tr.tok, texts, tr.cfg.data.chat_template) != texts
    prompts = [[{"role": "user", "content": t}] for t in texts] if chat else texts
    # the prompt ids TRL will build must be the engine's
    for i, p in enumerate(prompts[:32]):
        ids = (tr.tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
               if chat else tr.tok(p)["input_ids"])
        if list(ids) != list(tr.prompts.ids[i]):
            raise RuntimeError(f"TRL would encode prompt {i} as {list(ids)[:20]}..., the engine as {tr.prompts.ids[i][:20]}...")
    return Dataset.from_dict({"prompt": prompts, "row": list(range(len(rows)))})


def trl_reward(rows, score_fn):
    """A TRL reward function calling the engine's verifier on the decoded completion."""
    def reward(prompts, completions, row, **_):
        out = []
        for c, i in zip(completions, row):
            text = c[-1]["content"] if isinstance(c, list) else c
            r = rows[i]
            out.append(float(score_fn(r["data_source"], text, r["answer"], r.get("extra_info"))))
        return out
    reward.__name__ = "verifier"
    return reward


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="arithmetic", help="data.task (a task name or a data file)")
    p.add_argument("--model", default="tiny", help="model.name (tiny, smollm2 or a model folder)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per arm per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per arm before the first round")
    p.add_argument("--prompts", type=int, default=16, help="prompts per step")
    p.add_argument("--n", type=int, default=8, help="rollouts per prompt")
    p.add_argument("--minibatches", type=int, default=4, help="optimizer steps per step")
    p.add_argument("--max-response-length", type=int, default=64)
    p.add_argument("--max-prompt-length", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--threads", type=int, default=2, help="torch threads of both arms")
    p.add_argument("--reward-pool", action="store_true",
                   help="score the engine's rollouts in its verifier pool (default: in-process, as TRL; exact tasks only)")
    p.add_argument("--reward-workers", type=int, default=1, help="the pool's worker processes (with --reward-pool)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/bench_vs_trl.json")
    args = p.parse_args()
    if args.prompts % args.minibatches:
        p.error(f"--prompts ({args.prompts}) must be a multiple of --minibatches ({args.minibatches})")

    import torch
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from echorl.local.trainer import LocalTrainer
    from echorl.models.loading import load_model
    from echorl.tasks import compute_score

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_vs_trl_"))
    eng = LocalTrainer(engine_config(args, work / "engine"))
    total = args.warmup + args.steps * args.rounds
    dataset = trl_dataset(eng, total * args.prompts)
    model, tok = load_model(args.model, "float32")
    mini_rows = args.prompts // args.minibatches * args.n
    gcfg = GRPOConfig(
        output_dir=str(work / "trl"), use_cpu=True, seed=args.seed, data_seed=args.seed, shuffle_dataset=False,
        num_generations=args.n, per_device_train_batch_size=mini_rows, gradient_accumulation_steps=1,
        steps_per_generation=args.minibatches, num_iterations=1, beta=0.0, loss_type="bnpo", scale_rewards="group",
        epsilon=0.2, max_completion_length=args.max_response_length, temperature=args.temperature, top_p=args.top_p,
        top_k=0, mask_truncated_completions=False, use_vllm=False, learning_rate=args.lr, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=1.0, max_steps=total * args.minibatches, eval_strategy="no", save_strategy="no",
        logging_strategy="no", report_to="none", disable_tqdm=True, log_completions=False, bf16=False, fp16=False,
        dataloader_num_workers=0, remove_unused_columns=False)
    rec: dict[str, list] = {"engine": [], "trl": [], "engine_cpu": [], "trl_cpu": [], "engine_metrics": []}

    class Alternate(TrainerCallback):
        """Every ``minibatches`` TRL optimizer steps is one TRL step; after each chunk, run the engine's."""

        def __init__(self):
            self.t = self.c = None
            self.done = 0

        def on_train_begin(self, *a, **k):
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, _args, state, control, **k):
            if state.global_step % args.minibatches:
                return
            now, cpu = time.perf_counter(), time.process_time()
            if self.done >= args.warmup:
                rec["trl"].append(now - self.t)
                rec["trl_cpu"].append(cpu - self.c)
            self.done += 1
            if self.done == args.warmup or (self.done > args.warmup and (self.done - args.warmup) % args.steps == 0):
                chunk = args.warmup if self.done == args.warmup else args.steps
                for _ in range(chunk):
                    t0, c0 = time.perf_counter(), time.process_time()
                    m = eng.step()
                    if self.done > args.warmup:
                        rec["engine"].append(time.perf_counter() - t0)
                        rec["engine_cpu"].append(time.process_time() - c0)
                        rec["engine_metrics"].append(m)
            self.t, self.c = time.perf_counter(), time.process_time()

    trl = GRPOTrainer(model=model, reward_funcs=trl_reward(eng.prompts.rows, compute_score), args=gcfg,
                      train_dataset=dataset, processing_class=tok, callbacks=[Alternate()])
    try:
        trl.train()
    finally:
        eng.pool.close()

    em = rec["engine_metrics"]
    phases = {name: statistics.median(sum(m[k] for k in keys) for m in em) for name, keys in PHASES}
    res = {
        "engine": {"step_s": statistics.median(rec["engine"]), "cpu_s": statistics.median(rec["engine_cpu"]),
                   "min_s": min(rec["engine"]), "max_s": max(rec["engine"]),
                   "per_round_s": [statistics.median(rec["engine"][i * args.steps:(i + 1) * args.steps]) for i in range(args.rounds)],
                   "phases_s": phases, "response_length_mean": statistics.mean(m["response_length/mean"] for m in em),
                   "reward_mean": statistics.mean(m["reward/mean"] for m in em)},
        "trl": {"step_s": statistics.median(rec["trl"]), "cpu_s": statistics.median(rec["trl_cpu"]),
                "min_s": min(rec["trl"]), "max_s": max(rec["trl"]),
                "per_round_s": [statistics.median(rec["trl"][i * args.steps:(i + 1) * args.steps]) for i in range(args.rounds)]},
    }
    ratio = res["trl"]["step_s"] / res["engine"]["step_s"]
    cpu_ratio = res["trl"]["cpu_s"] / res["engine"]["cpu_s"]
    per_round = [t / e for t, e in zip(res["trl"]["per_round_s"], res["engine"]["per_round_s"])]
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    import transformers
    import trl as trl_mod

    summary = {"config": vars(args), "date": time.strftime("%Y-%m-%d %H:%M"), "load_avg": load,
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                           "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl_mod.__version__},
               "arms": res, "trl_over_engine": ratio, "trl_over_engine_cpu": cpu_ratio, "trl_over_engine_per_round": per_round,
               "raw_s": {k: rec[k] for k in ("engine", "trl", "engine_cpu", "trl_cpu")}}
    print_table(f"bench_vs_trl: {args.model} on {args.task}, {args.prompts} prompts x {args.n} rollouts, <= "
                f"{args.max_response_length} tokens, {args.minibatches} optimizer steps/step, {args.threads} threads, "
                f"{args.rounds} rounds x {args.steps} steps per arm (median; load avg {load})",
                ["arm", "s/step", "min", "max", "cpu s", "per round"],
                [[name, f"{res[name]['step_s']:.3f}", f"{res[name]['min_s']:.3f}", f"{res[name]['max_s']:.3f}",
                  f"{res[name]['cpu_s']:.3f}", " ".join(f"{x:.3f}" for x in res[name]["per_round_s"])]
                 for name in ("engine", "trl")])
    print("engine phases (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in phases.items()))
    print(f"TRL / engine: {ratio:.2f}x wall (per round: {', '.join(f'{x:.2f}x' for x in per_round)}), "
          f"{cpu_ratio:.2f}x process CPU time")
    write_json(args.out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
