#!/usr/bin/env python
"""GRPO + EchoRL with TRL on the chain testbed, on CPU: EchoGRPOTrainer, TRL's own loop and logging.

    python scripts/trl_grpo_chain.py                                   # 200 steps, TensorBoard in outputs/trl_chain
    python scripts/trl_grpo_chain.py --max_steps 20 --echorl_coef 0.01
    python scripts/trl_grpo_chain.py --echorl_enable false             # plain GRPO (TRL's GRPOTrainer, bit for bit)
    accelerate launch --cpu --num_processes 2 scripts/trl_grpo_chain.py --per_device_train_batch_size 32
    tensorboard --logdir outputs/trl_chain                             # train/echo/* beside TRL's metrics

Every option of TRL's ``GRPOConfig`` and every EchoRL option (``--echorl_<field>``, EchoConfig's help
in ``--help``) is a flag. The defaults below are the embedded engine's testbed
(``echorl/config/testbed.yaml``): the shipped tiny-chain model, 16 prompts x 8 rollouts a step at
T=1.0, at most 64 response tokens, two optimizer steps per generation (so TRL computes the
old-policy log-probs and EchoRL reads its token entropies from that pass), token-mean loss, lr 5e-4.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# the engine's testbed as GRPOConfig values (echorl/config/testbed.yaml, docs/trl.md "The example")
TESTBED = dict(
    output_dir="outputs/trl_chain", use_cpu=True, seed=1, num_generations=8, per_device_train_batch_size=64,
    steps_per_generation=2, gradient_accumulation_steps=1, num_iterations=1, beta=0.0, loss_type="bnpo",
    scale_rewards="group", epsilon=0.2, max_completion_length=64, temperature=1.0, top_p=1.0, top_k=0,
    mask_truncated_completions=False, learning_rate=5e-4, lr_scheduler_type="constant_with_warmup", warmup_steps=10,
    weight_decay=0.0, max_grad_norm=1.0, max_steps=200, logging_steps=1, report_to=["tensorboard"],
    save_strategy="no", eval_strategy="no", disable_tqdm=True, log_completions=False, bf16=False,
    dataloader_num_workers=0,
)


def main(argv: list[str] | None = None):
    """Parse the flags, train, return the trainer."""
    import torch
    from transformers import HfArgumentParser

    from echorl.trl import EchoGRPOConfig, EchoGRPOTrainer
    from echorl.trl.testbed import chain_dataset, chain_reward, load_chain_model

    parser = HfArgumentParser(EchoGRPOConfig, description=__doc__.split("\n\n")[0])
    parser.set_defaults(**TESTBED)
    parser.add_argument("--rows", type=int, default=4096, help="chain training problems (data.num_rows)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args, extra = parser.parse_args_into_dataclasses(args=argv)
    torch.set_num_threads(extra.threads)
    model, tok = load_chain_model()
    trainer = EchoGRPOTrainer(model=model, reward_funcs=chain_reward(), args=args,
                              train_dataset=chain_dataset(extra.rows, seed=args.seed), processing_class=tok)
    trainer.train()
    return trainer


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
