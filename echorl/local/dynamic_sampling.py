"""DAPO dynamic sampling for the embedded engine (``algorithm.filter_groups``, verl's keys).

One training step draws generation batches of ``data.train_batch_size`` prompts until
``train_batch_size`` groups with non-zero variance of the filter metric are collected, or
``max_num_gen_batches`` batches were drawn (0: no cap). Surplus surviving groups are discarded
(as DAPO does). With ``echorl.keep_filtered`` the dropped all-success groups are kept for the
EchoRL term only, at most ``train_batch_size`` of them (first come), which bounds their cost: one
old-policy log-prob pass and their clip tokens in the update. Row classification is
:func:`echorl.filtering.plan_rows`, shared with the verl host's checks.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from echorl.core.config import EchoConfig
from echorl.filtering import FilterConfig, check_filter_groups, plan_rows
from echorl.local.rollout import RolloutBatch, generate_rollouts
from echorl.metric_names import timing_name

__all__ = ["Generation", "generate_and_score", "dynamic_sample", "concat_rollouts", "filter_config"]


@dataclass
class Generation:
    """One scored generation batch: ``rows`` (dataset rows, indexed by ``rb.group_index``), the
    rollouts, ``scores`` ``[B] float32`` and the verifier's counters ``stats``."""

    rows: list[dict[str, Any]]
    rb: RolloutBatch
    scores: torch.Tensor
    stats: dict[str, float]


def filter_config(cfg: Any, echo: EchoConfig, method_active: bool) -> FilterConfig:
    """``algorithm.filter_groups`` of the engine's config, checked against the EchoRL options."""
    filt = FilterConfig.from_node(cfg.algorithm.get("filter_groups"))
    check_filter_groups(filt.enable, echo)
    if filt.enable and method_active:
        raise ValueError("algorithm.filter_groups.enable=true is not supported with method.name=luffy/uft in the "
                         "embedded engine (their expert rows and hints are built per generation batch); set "
                         "algorithm.filter_groups.enable=false or method.name=grpo")
    return filt


def generate_and_score(trainer: Any, idx: list[int], t: dict[str, float]) -> Generation:
    """Generate ``rollout.n`` responses for the prompts ``idx`` and score them (the engine's first
    two phases of a step; ``timing_s/gen`` and ``timing_s/reward`` accumulate in ``t``)."""
    import time

    cfg, ro = trainer.cfg, trainer.cfg.actor_rollout_ref.rollout
    t0 = time.perf_counter()
    rows = [trainer.prompts.rows[i] for i in idx]
    prompt_ids = [trainer.prompts.ids[i] for i in idx]
    rb = generate_rollouts(trainer.model, trainer.tok, trainer.method.generation_prompts(prompt_ids, rows, trainer.global_step),
                           n=int(ro.n), max_response_length=int(cfg.data.max_response_length),
                           temperature=float(ro.temperature), top_p=float(ro.top_p), top_k=int(ro.top_k),
                           eos_ids=trainer.eos_ids, pad_id=trainer.pad_id)
    rb = trainer.method.after_rollout(rb, rows, prompt_ids)  # LUFFY expert rows / UFT hints (echorl.methods)
    t[timing_name("gen")] = t.get(timing_name("gen"), 0.0) + time.perf_counter() - t0
    t1 = time.perf_counter()
    texts = trainer.method.verifier_texts(rb)  # the decoded responses (UFT: without the hint; echorl.local.methods)
    args = [(rows[g]["data_source"], texts[i], rows[g]["answer"], rows[g].get("extra_info"))
            for i, g in enumerate(rb.group_index.tolist())]
    score_list, stats = trainer.pool.score(args)
    t[timing_name("reward")] = t.get(timing_name("reward"), 0.0) + time.perf_counter() - t1
    return Generation(rows=rows, rb=rb, scores=torch.tensor(score_list, dtype=torch.float32), stats=dict(stats))


def concat_rollouts(parts: list[tuple[RolloutBatch, torch.Tensor]], pad_id: int) -> tuple[RolloutBatch, torch.Tensor]:
    """Concatenate the rows ``keep`` (``[B_i] bool``) of several rollout batches.

    Prompts are left-padded and responses right-padded to the widest part (verl's layout);
    ``group_index`` is renumbered ``0..G-1`` in order of first appearance. Returns the batch and,
    for each new group code, ``(part, old group index)`` as a ``[G, 2] long`` tensor.
    """
    P = max(rb.prompts.shape[1] for rb, _ in parts)
    L = max(rb.responses.shape[1] for rb, _ in parts)
    prompts, pmask, responses, rmask, gidx = [], [], [], [], []
    for j, (rb, keep) in enumerate(parts):
        p, r = rb.prompts.shape[1], rb.responses.shape[1]
        prompts.append(F.pad(rb.prompts[keep], (P - p, 0), value=pad_id))
        pmask.append(F.pad(rb.attention_mask[keep, :p], (P - p, 0), value=0))
        responses.append(F.pad(rb.responses[keep], (0, L - r), value=pad_id))
        rmask.append(F.pad(rb.response_mask[keep], (0, L - r), value=0))
        gidx.append(torch.stack([torch.full_like(rb.group_index[keep], j), rb.group_index[keep]], dim=1))
    prompts_t, responses_t = torch.cat(prompts), torch.cat(responses)
    rmask_t = torch.cat(rmask)
    keys = torch.cat(gidx)  # [B, 2] (part, group)
    uniq, first = [], {}
    codes = []
    for key in map(tuple, keys.tolist()):
        if key not in first:
            first[key] = len(uniq)
            uniq.append(key)
        codes.append(first[key])
    rb = RolloutBatch(prompts=prompts_t, responses=responses_t, input_ids=torch.cat([prompts_t, responses_t], dim=1),
                      attention_mask=torch.cat([torch.cat(pmask), rmask_t], dim=1), response_mask=rmask_t,
                      group_index=torch.tensor(codes, dtype=torch.long))
    return rb, torch.tensor(uniq, dtype=torch.long).reshape(-1, 2)


def dynamic_sample(first: Generation, next_generation: Callable[[], Generation], filt: FilterConfig,
                   echo: EchoConfig, groups_wanted: int, pad_id: int
                   ) -> tuple[Generation, torch.Tensor, dict[str, float]]:
    """Collect ``groups_wanted`` surviving groups (see the module docstring).

    Args:
        first: the step's first generation batch; ``next_generation`` draws and scores another.
        filt: ``algorithm.filter_groups``; echo: the EchoRL options (``keep_filtered``).

    Returns:
        ``(generation, echo_only, metrics)``: the assembled batch, ``[B] bool`` rows kept for the
        EchoRL term only, and ``filter_groups/*`` counts.

    Raises:
        RuntimeError: no group survived within ``max_num_gen_batches`` batches.
    """
    gens, plans = [], []
    n_rl = n_gen = 0
    gen = first
    while True:
        n_gen += 1
        plan = plan_rows(gen.scores, gen.rb.group_index, filt, echo)
        gens.append(gen)
        plans.append(plan)
        n_rl += int(torch.unique(gen.rb.group_index[plan.rl]).numel())
        if n_rl >= groups_wanted:
            break
        if filt.max_num_gen_batches and n_gen >= filt.max_num_gen_batches:
            if n_rl == 0:
                raise RuntimeError(
                    f"dynamic sampling: no group with non-zero variance of {filt.metric!r} in {n_gen} generation "
                    f"batches (algorithm.filter_groups.max_num_gen_batches={filt.max_num_gen_batches}): every group "
                    "all-success or all-fail. Raise the cap, use an easier/harder task, or set "
                    "algorithm.filter_groups.enable=false.")
            warnings.warn(f"dynamic sampling: {n_rl} of {groups_wanted} groups after max_num_gen_batches={n_gen}; "
                          "training on those", RuntimeWarning, stacklevel=2)
            break
        gen = next_generation()

    rl_left, kept_left = groups_wanted, groups_wanted
    parts, echo_parts, dropped = [], [], 0
    for gen, plan in zip(gens, plans):
        g = gen.rb.group_index
        keep = torch.zeros_like(plan.rl)
        for code in torch.unique(g).tolist():
            rows = g == code
            if bool(plan.rl[rows].any()) and rl_left > 0:
                keep |= rows
                rl_left -= 1
            elif bool(plan.echo_only[rows].any()) and kept_left > 0:
                keep |= rows
                kept_left -= 1
            else:
                dropped += 1
        parts.append((gen.rb, keep))
        echo_parts.append(plan.echo_only[keep])
    rb, origin = concat_rollouts(parts, pad_id)
    rows = [gens[j].rows[i] for j, i in origin.tolist()]
    scores = torch.cat([gen.scores[keep] for gen, (_, keep) in zip(gens, parts)])
    stats: dict[str, float] = {}
    for gen in gens:
        for k, v in gen.stats.items():
            stats[k] = stats.get(k, 0) + v
    echo_only = torch.cat(echo_parts)
    metrics = {
        "filter_groups/num_gen_batches": float(n_gen),
        "filter_groups/rl_groups": float(groups_wanted - rl_left),
        "filter_groups/kept_groups": float(groups_wanted - kept_left),
        "filter_groups/discarded_groups": float(dropped),
    }
    return Generation(rows=rows, rb=rb, scores=scores, stats=stats), echo_only, metrics
