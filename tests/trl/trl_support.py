"""Small TRL runs on the chain testbed (tiny-chain model, 330k parameters) for the tests of echorl.trl.

Kept tiny: 2 prompts x 4 rollouts per micro-batch, at most 48 completion tokens, one torch thread.
Imported by name (``from trl_support import ...``); this folder has no ``__init__.py`` on purpose: a
package named ``trl`` under ``tests/`` would shadow the real TRL.
"""

from __future__ import annotations

from typing import Any

import torch

N_GEN = 4
COMPLETION = 48  # a chain solution is about 40 tokens: shorter ones never reach the answer line


def base_kwargs(out_dir: str, **over: Any) -> dict[str, Any]:
    """GRPOConfig keyword arguments shared by TRL's trainer and EchoGRPOTrainer in a test."""
    kw = dict(output_dir=out_dir, use_cpu=True, seed=3, data_seed=3, shuffle_dataset=False, num_generations=N_GEN,
              per_device_train_batch_size=8, gradient_accumulation_steps=1, steps_per_generation=1,
              num_iterations=1, beta=0.0, loss_type="bnpo", max_completion_length=COMPLETION, temperature=1.0,
              top_k=0, learning_rate=5e-3, lr_scheduler_type="constant", warmup_steps=0, max_steps=1,
              save_strategy="no", eval_strategy="no", logging_steps=1, report_to="none", disable_tqdm=True,
              log_completions=False, dataloader_num_workers=0, bf16=False, fp16=False)
    kw.update(over)
    return kw


def all_success(prompts, completions, **_):
    """Every rollout succeeds: all-success groups, the case EchoRL exists for; every group gives a clip."""
    return [1.0] * len(completions)


def run(trainer_cls, config_cls, out_dir: str, reward=None, rows: int = 32, **over: Any):
    """Train ``trainer_cls`` on the chain testbed from the shipped tiny-chain weights; returns the trainer."""
    from echorl.trl.testbed import chain_dataset, chain_reward, load_chain_model

    torch.set_num_threads(1)
    model, tok = load_chain_model()
    args = config_cls(**base_kwargs(out_dir, **over))
    tr = trainer_cls(model=model, reward_funcs=reward or chain_reward(), args=args, train_dataset=chain_dataset(rows),
                     processing_class=tok)
    tr.train()
    return tr


def plain_logprobs_entropy(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature=1.0):
    """Log-prob of each completion token and the entropy of its distribution from a plain forward
    (full logits, ``log_softmax``), independent of TRL's fused head. Returns ``[b, L]`` twice."""
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attn = torch.cat([prompt_mask, completion_mask], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits.float()
    L = completion_ids.shape[1]
    logits = logits[:, -L - 1:-1] / temperature  # [b, L, V] predicting the completion tokens
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy
