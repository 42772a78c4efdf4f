"""The embedded engine's hooks for LUFFY and UFT (:class:`LocalMethod`), called by
:class:`echorl.local.trainer.LocalTrainer` at five points of a step:

1. :meth:`LocalMethod.generation_prompts` (before ``generate``): the share of prompts with an expert
   trace (a step without any stops the run, :func:`echorl.methods.luffy.trace_share`); UFT appends
   each prompt's hint.
2. :meth:`LocalMethod.after_rollout` (after ``generate``): LUFFY replaces the first
   ``num_off_policy`` rows of each group that has an expert trace by the trace; UFT moves the hint
   from the prompt into the response (``response_mask`` 0, ``hint_mask`` 1 on it).
3. :meth:`LocalMethod.verifier_texts`: what the verifier reads (UFT: the continuation after the hint).
4. :meth:`LocalMethod.echo_response_mask`: the mask EchoRL selects from: off-policy rows emptied
   (so they are never eligible and never group members), hint tokens already 0 (hinted rows
   emptied too with ``method.uft.echo_hinted=false``).
5. :meth:`LocalMethod.batch_fields`: ``off_policy`` / ``hint_mask`` / ``hint_denom`` for
   :class:`echorl.methods.luffy.MethodLoss`.

With ``method.name=grpo`` every hook returns its input object unchanged, so training is
bit-identical to the base method.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from echorl import metric_names as M
from echorl.local.rollout import RolloutBatch
from echorl.methods.config import MethodConfig
from echorl.methods.luffy import (
    HINT_DENOM,
    HINT_MASK,
    OFF_POLICY,
    expert_text,
    expert_trace_ids,
    off_policy_rows,
    rows_zeroed,
    trace_share,
)
from echorl.methods.uft import hint_denominator, hint_probability, hint_token_ids, sample_hints

__all__ = ["LocalMethod", "assemble_batch"]


def assemble_batch(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                   response_mask: Sequence[Sequence[int]], pad_id: int, group_index: torch.Tensor) -> RolloutBatch:
    """A :class:`RolloutBatch` from per-row lists (verl's layout: prompts left-padded, responses
    right-padded; ``attention_mask`` 1 on every prompt and response token, ``response_mask`` as given)."""
    B = len(prompt_ids)
    P = max(len(p) for p in prompt_ids)
    L = max(1, max(len(r) for r in response_ids))
    prompts = torch.full((B, P), pad_id, dtype=torch.long)
    pmask = torch.zeros((B, P), dtype=torch.long)
    responses = torch.full((B, L), pad_id, dtype=torch.long)
    ramask = torch.zeros((B, L), dtype=torch.long)
    rmask = torch.zeros((B, L), dtype=torch.long)
    for i, (p, r, m) in enumerate(zip(prompt_ids, response_ids, response_mask)):
        if len(p):
            prompts[i, P - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
            pmask[i, P - len(p):] = 1
        if len(r):
            responses[i, :len(r)] = torch.as_tensor(list(r), dtype=torch.long)
            ramask[i, :len(r)] = 1
            rmask[i, :len(r)] = torch.as_tensor(list(m), dtype=torch.long)
    return RolloutBatch(prompts=prompts, responses=responses, input_ids=torch.cat([prompts, responses], dim=1),
                        attention_mask=torch.cat([pmask, ramask], dim=1), response_mask=rmask,
                        group_index=group_index.clone())


def _rows_of(rb: RolloutBatch) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """Per-row prompt ids, response ids (attention-valid) and response-mask values of a batch."""
    P = rb.prompts.shape[1]
    pm = rb.attention_mask[:, :P].bool()
    ra = rb.attention_mask[:, P:].bool()
    prompts = [rb.prompts[i][pm[i]].tolist() for i in range(rb.prompts.shape[0])]
    resps = [rb.responses[i][ra[i]].tolist() for i in range(rb.prompts.shape[0])]
    masks = [rb.response_mask[i][ra[i]].tolist() for i in range(rb.prompts.shape[0])]
    return prompts, resps, masks


class LocalMethod:
    """Per-step state and hooks of the base method on the embedded engine (see the module docstring).

    Args:
        cfg: the ``method:`` config.
        tokenizer, eos_id, pad_id: the run's tokenizer and ids.
        n: rollouts per prompt; max_response_length: ``data.max_response_length``.
    """

    def __init__(self, cfg: MethodConfig, tokenizer: Any, *, eos_id: int, pad_id: int, n: int,
                 max_response_length: int):
        self.cfg, self.tok, self.eos_id, self.pad_id = cfg, tokenizer, int(eos_id), int(pad_id)
        self.n, self.max_len = int(n), int(max_response_length)
        if cfg.is_luffy and cfg.luffy.num_off_policy >= self.n:
            raise ValueError(f"method.luffy.num_off_policy ({cfg.luffy.num_off_policy}) must be smaller than "
                             f"actor_rollout_ref.rollout.n ({self.n}): a group needs on-policy rollouts")
        self.off: torch.Tensor | None = None  # [B] bool
        self.hint_mask: torch.Tensor | None = None  # [B, L] bool
        self._hints: list[list[int]] = []
        self.metrics: dict[str, float] = {}

    @property
    def active(self) -> bool:
        return self.cfg.uses_expert_data  # LUFFY / UFT (RL-ZVP and forking change only the loss)

    def generation_prompts(self, prompt_ids: list[list[int]], rows: list[dict], step: int) -> list[list[int]]:
        """UFT: ``prompt + hint`` token ids per prompt; otherwise ``prompt_ids`` itself."""
        self.metrics = {}
        if not self.active:
            return prompt_ids
        texts = [expert_text(r) for r in rows]
        self.metrics[f"{self.cfg.name}/trace_frac"] = trace_share(texts, self.cfg.name)
        if self.cfg.is_luffy:
            self.metrics[M.LUFFY_PROMPTS_WITH_TRACE] = float(sum(t is not None for t in texts))
        if not self.cfg.is_uft:
            return prompt_ids
        hints = sample_hints(texts, step, self.cfg.uft)
        # a hint leaves at least one response token to generate (hint + continuation share the budget)
        self._hints = [hint_token_ids(h, self.tok, self.max_len) for h in hints]
        self.metrics["uft/hint_prob"] = hint_probability(step, self.cfg.uft)
        self.metrics["uft/hinted_prompts"] = float(sum(1 for h in self._hints if h))
        return [list(p) + h for p, h in zip(prompt_ids, self._hints)]

    def after_rollout(self, rb: RolloutBatch, rows: list[dict], prompt_ids: list[list[int]]) -> RolloutBatch:
        """LUFFY: expert rows in; UFT: hint moved into the response. ``prompt_ids``: without hints."""
        B = rb.responses.shape[0]
        self.off, self.hint_mask = None, None
        if self.cfg.is_luffy:
            texts = [expert_text(r) for r in rows]
            off = off_policy_rows(rb.group_index, [t is not None for t in texts], self.n, self.cfg.luffy.num_off_policy)
            self.off = off
            self.metrics["luffy/off_policy_rows"] = float(off.sum())
            if not bool(off.any()):
                return rb
            prompts, resps, masks = _rows_of(rb)
            for i in torch.nonzero(off).flatten().tolist():
                ids = expert_trace_ids(texts[int(rb.group_index[i])], self.tok,
                                       max_target_length=self.cfg.luffy.max_target_length, eos_id=self.eos_id,
                                       response_length=self.max_len)
                resps[i], masks[i] = ids, [1] * len(ids)
            return assemble_batch(prompts, resps, masks, self.pad_id, rb.group_index)
        if self.cfg.is_uft:
            _, resps, masks = _rows_of(rb)
            new_p, new_r, new_m, hints = [], [], [], []
            for i in range(B):
                g = int(rb.group_index[i])
                h = self._hints[g]
                gen = [t for t, m in zip(resps[i], masks[i]) if m]  # generated tokens (to EOS)
                r = (h + gen)[:self.max_len]
                new_p.append(prompt_ids[g])
                new_r.append(r)
                new_m.append(([0] * len(h) + [1] * len(gen))[:self.max_len])
                hints.append(len(h))
            out = assemble_batch(new_p, new_r, new_m, self.pad_id, rb.group_index)
            L = out.responses.shape[1]
            self.hint_mask = torch.arange(L)[None, :] < torch.tensor(hints)[:, None]  # [B, L]
            self.metrics["uft/hint_tokens"] = float(self.hint_mask.sum())
            return out
        return rb

    def verifier_texts(self, rb: RolloutBatch) -> list[str]:
        """The text the verifier scores, per row: the response (its attention-valid tokens, decoded without
        special tokens); UFT leaves the hint out (the generated continuation only) unless
        ``method.uft.score_hint`` is true."""
        lens = rb.attention_mask[:, rb.prompts.shape[1]:].sum(-1).tolist()  # [B] response tokens
        starts = [0] * len(lens)
        if self.cfg.is_uft and not self.cfg.uft.score_hint and self.hint_mask is not None:
            starts = self.hint_mask.sum(1).tolist()  # the hint opens the response
        return self.tok.batch_decode([r[a:k] for r, a, k in zip(rb.responses.tolist(), starts, lens)],
                                     skip_special_tokens=True)

    def echo_response_mask(self, rb: RolloutBatch) -> torch.Tensor:
        """``[B, L]``: the mask EchoRL selects from (off-policy rows emptied; hint tokens are already 0)."""
        if self.off is not None and bool(self.off.any()):
            return rows_zeroed(rb.response_mask, self.off)
        if self.hint_mask is not None and not self.cfg.uft.echo_hinted:  # method.uft.echo_hinted=false
            return rows_zeroed(rb.response_mask, self.hint_mask.any(1))
        return rb.response_mask

    def batch_fields(self, rb: RolloutBatch, num_minibatches: int) -> dict[str, torch.Tensor]:
        """Extra per-row fields of the actor batch for :class:`MethodLoss`."""
        B = rb.responses.shape[0]
        if self.cfg.is_luffy:
            return {OFF_POLICY: self.off if self.off is not None else torch.zeros(B, dtype=torch.bool)}
        if self.cfg.is_uft:
            hm = self.hint_mask if self.hint_mask is not None else torch.zeros_like(rb.response_mask, dtype=torch.bool)
            return {HINT_MASK: hm, HINT_DENOM: torch.full((B,), hint_denominator(hm, num_minibatches))}
        return {}
