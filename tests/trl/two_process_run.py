"""One EchoGRPOTrainer step in each of several processes (``torchrun --nproc_per_node=2``, gloo on CPU).

    torchrun --standalone --nproc_per_node=2 tests/trl/two_process_run.py OUT_DIR

Each process holds 6 rollouts of a 12-rollout batch (3 prompts x 4), so the second prompt's group
straddles the two processes. Every rollout succeeds (all-success groups), so every group gives one
clip and the straddling group's choice compares members on both processes. Each rank writes what its
stage saw and chose to ``OUT_DIR/rank<r>.pt``; tests/trl/test_trl_two_process.py compares it with the
one-process stage on the same batch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from trl_support import all_success, base_kwargs

from echorl.trl import EchoGRPOConfig, EchoGRPOTrainer
from echorl.trl.testbed import chain_dataset, load_chain_model

PER_PROCESS = 6


def main(out: Path) -> None:
    torch.set_num_threads(1)
    model, tok = load_chain_model()
    args = EchoGRPOConfig(**base_kwargs(str(out / "trainer"), per_device_train_batch_size=PER_PROCESS,
                                        echorl_coef=0.5, max_completion_length=24))
    tr = EchoGRPOTrainer(model=model, reward_funcs=all_success, args=args, train_dataset=chain_dataset(24),
                         processing_class=tok)
    tr.train()
    rank = tr.accelerator.process_index
    rec = tr.echo_last
    torch.save({"world": tr.accelerator.num_processes, "backend": str(tr.accelerator.state.backend),
                "record": {k: getattr(rec, k) for k in rec.__dataclass_fields__},
                "boundary_token_ids": tr.echo_cfg.boundary_token_ids,
                "echo_loss": tr.state.log_history[0]["echo/loss"], "pid": os.getpid()}, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
