"""The EchoRL stage of the verl trainer against verl's own advantage stage, on a real TransferQueue.

One run, one batch at the authors' scale (B = 1024 = 128 prompts x 8 rollouts, responses of
lognormal length in [500, 8192] tokens stored as verl stores them: nested rows, token-level
``rm_scores``, old-policy ``entropy`` and ``old_log_probs``, ``uid``), put into a real
TransferQueue (``tq.init``, one storage unit, local Ray). Timed, alternating, ``--repeats`` times:

  (a) verl's ``PPOTrainerSync._compute_advantage`` (GRPO): fetch, advantage estimator, write-back;
  (b) EchoRL's stage in ``EchoPPOTrainerSync._compute_advantage`` after verl's step: fetch of the six
      fields it reads, ``select_echo_clips``, write-back of ``echo_mask`` / ``echo_denom``; this is
      exactly what the trainer logs as ``timing_s/echo`` (read from its ``timing_raw``).

Target: (b) <= (a). Prints a table and writes JSON (default benchmarks/results/bench_verl_stage.json).

    .venv/bin/python benchmarks/bench_verl_stage.py [--quick] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_report import print_table, write_json  # noqa: E402  (benchmarks/ is on sys.path)
from bench_select import make_batch  # noqa: E402  (the selection benchmark's batch, one generator)

from echorl import metric_names as M  # noqa: E402
from echorl.verl.trainer import ECHO_TIMING  # noqa: E402  (the timing_raw name of timing_s/echo)


def nested_fields(groups: int, n: int, L: int, seed: int = 0):
    """The batch as verl's v1 trainer stores it: a TensorDict of nested ``[B, j]`` rows + ``uid``."""
    from verl.utils import tensordict_utils as tu

    responses, mask, entropy, scores, uids = make_batch(groups, n, L, seed=seed)[:5]
    lens = mask.sum(-1).tolist()  # [B]
    g = torch.Generator().manual_seed(seed + 1)
    rows = {k: [] for k in ("responses", "response_mask", "entropy", "rm_scores", "old_log_probs")}
    for i, r in enumerate(lens):
        rm = torch.zeros(r)
        rm[-1] = float(scores[i])  # the outcome score on the last response token
        rows["responses"].append(responses[i, :r])
        rows["response_mask"].append(mask[i, :r])
        rows["entropy"].append(entropy[i, :r])
        rows["rm_scores"].append(rm)
        rows["old_log_probs"].append(-torch.rand(r, generator=g))
    nested = {k: torch.nested.as_nested_tensor(v, layout=torch.jagged) for k, v in rows.items()}
    return tu.get_tensordict({**nested, "uid": [str(u) for u in uids]}), sum(lens)


def trainer_for(cfg):
    """The driver side of the trainer only (no worker groups: neither step touches them)."""
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    from echorl.verl.config_checks import validate_config
    from echorl.verl.methods import VerlMethod, configure
    from echorl.verl.trainer import EchoPPOTrainerSync

    trainer = EchoPPOTrainerSync.__new__(EchoPPOTrainerSync)
    trainer.config, trainer.global_steps, trainer.timing_raw = cfg, 1, {}
    trainer.echo_cfg, trainer._echo_boundary_resolved = validate_config(cfg), True
    trainer.method = VerlMethod(configure(cfg))  # plain GRPO: LUFFY / UFT hooks inactive
    return trainer, PPOTrainerSync._compute_advantage


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="B=64, L=1024 (a check that it runs)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_verl_stage.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    groups, n, L = (8, 8, 1024) if args.quick else (128, 8, 8192)

    import ray
    import transfer_queue as tq
    from hydra import compose, initialize_config_module
    from omegaconf import open_dict

    with initialize_config_module(config_module="echorl.config", version_base=None):
        cfg = compose(config_name="echorl_trainer", overrides=[
            f"actor_rollout_ref.rollout.n={n}", f"actor_rollout_ref.actor.ppo_mini_batch_size={max(groups // 2, 1)}",
            "echorl.boundary_token_ids=[198,271]", "echorl.mode=loss"])
    with open_dict(cfg):
        cfg.transfer_queue.backend.SimpleStorage.num_data_storage_units = 1
    data, tokens = nested_fields(groups, n, L)
    B = groups * n
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tq.init(cfg.transfer_queue)
    verl_s, echo_s = [], []
    try:
        keys = [f"{u}_{i}_0" for i, u in enumerate(data["uid"])]
        batch = tq.kv_batch_put(keys=keys, partition_id="train", fields=data, tags=[{"is_padding": False}] * B)
        trainer, verl_step = trainer_for(cfg)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            meta = verl_step(trainer, batch, {})  # verl's own stage
            verl_s.append(time.perf_counter() - t0)
            trainer.timing_raw = {}
            metrics: dict = {}
            trainer._compute_advantage(batch, metrics)  # verl's stage again, then EchoRL's (timed inside)
            echo_s.append(trainer.timing_raw[ECHO_TIMING])
        assert "advantages" in meta.fields and metrics[M.CLIPS] > 0
    finally:
        tq.close()
        ray.shutdown()
    a, b = statistics.median(verl_s), statistics.median(echo_s)
    result = {
        "batch": {"B": B, "L": L, "tokens": tokens, "clips": metrics[M.CLIPS]},
        "verl_compute_advantage_s": {"median": a, "all": verl_s},
        "echorl_stage_s": {"median": b, "all": echo_s},
        "ratio_echo_over_verl": b / a,
        "target_met": b <= a,
        "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
    }
    print_table(f"bench_verl_stage: B={B} L={L} tokens={tokens} clips={int(metrics[M.CLIPS])} "
                f"(median of {args.repeats}, {args.threads} threads)", ["stage", "seconds"],
                [["(a) verl _compute_advantage (GRPO, TQ get/put)", f"{a:.3f}"],
                 ["(b) EchoRL stage (timing_s/echo)", f"{b:.3f}"]])
    print(f"(b)/(a) = {b / a:.2f}  target (b) <= (a): {'met' if b <= a else 'NOT met'}")
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
