"""The sampling regime of a policy on a task: what GRPO and EchoRL will see at the first step.

:func:`rollout_regime` samples ``n`` rollouts per prompt (pure sampling at ``temperature``, as the
engine does, with :func:`echorl.generation.generate_left_padded`) and reports the success rate, the
mean token entropy of the sampled responses (from the temperature-scaled logits, ``H = logsumexp(z) - sum softmax(z) z``), how many distinct
responses a group holds, and the share of all-success, mixed and all-fail groups. The testbed
model (``tiny-chain``) is tuned and checked with it (``scripts/testbed.py``, docs/engine.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from echorl.generation import generate_left_padded
from echorl.prompts import encode_prompts, format_prompts

__all__ = ["rollout_regime"]


@torch.no_grad()
def rollout_regime(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]],
                   score: Callable[[str, str], float], n: int = 8, temperature: float = 1.0,
                   max_new_tokens: int = 64, prompts_per_batch: int = 32, seed: int = 0) -> dict[str, float]:
    """Group statistics of ``n`` sampled rollouts for each row.

    Args:
        rows: task rows (``prompt``, ``answer``).
        score: verifier ``score(response_text, answer) -> float`` (success is ``>= 1``).
        prompts_per_batch: prompts per ``generate`` call (``prompts_per_batch * n`` sequences).

    Returns:
        ``{"success", "entropy" (nats/token over valid response tokens), "distinct" (mean distinct
        responses per group), "groups/all_success", "groups/mixed", "groups/all_fail",
        "prompts", "n"}``.
    """
    if n < 1 or not rows:
        raise ValueError(f"rollout_regime: need n >= 1 and at least one row (n={n}, rows={len(rows)})")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    eos = tokenizer.eos_token_id
    hits: list[list[float]] = []
    distinct: list[int] = []
    ent_sum, ent_tok = 0.0, 0
    for i in range(0, len(rows), prompts_per_batch):
        chunk = rows[i: i + prompts_per_batch]
        ids = encode_prompts(tokenizer, format_prompts(tokenizer, [r["prompt"] for r in chunk], "true"))
        gen = generate_left_padded(model, ids, eos_ids=[eos], pad_id=tokenizer.pad_token_id, max_new_tokens=max_new_tokens,
                                   temperature=temperature, n=n, output_scores=True, return_dict_in_generate=True)
        resp, valid = gen.responses, gen.response_mask.bool()  # [b, T]; valid: up to and including the first eos
        z = torch.stack(gen.output.scores, 1).float()  # [b, T, V], already divided by the temperature
        z = z.masked_fill(~torch.isfinite(z), float("-inf"))
        logp = torch.log_softmax(z, -1)
        h = -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)  # [b, T]
        ent_sum += float(h[valid].sum())
        ent_tok += int(valid.sum())
        decoded = tokenizer.batch_decode(resp, skip_special_tokens=True)
        for j, r in enumerate(chunk):
            group = decoded[j * n:(j + 1) * n]
            hits.append([float(score(t, r["answer"]) >= 1.0) for t in group])
            distinct.append(len(set(group)))
    k = [sum(h) for h in hits]
    P = len(hits)
    return {
        "success": sum(k) / (P * n),
        "entropy": ent_sum / max(ent_tok, 1),
        "distinct": sum(distinct) / P,
        "groups/all_success": sum(x == n for x in k) / P,
        "groups/mixed": sum(0 < x < n for x in k) / P,
        "groups/all_fail": sum(x == 0 for x in k) / P,
        "prompts": float(P),
        "n": float(n),
    }
