"""The driver side of LUFFY / UFT on verl 0.9 (:class:`VerlMethod`), called by
:class:`echorl.verl.trainer.EchoPPOTrainerSync` (items 1, 2 and 4; item 3 is the step a trainer runs right
after verl's old-policy pass):

1. :func:`configure` (before the workers and agent loops are built): points verl's
   ``actor_rollout_ref.rollout.agent`` at EchoRL's agent loops (``agent_loops.yaml``) and makes the
   method's loop the default (``luffy_agent`` / ``uft_agent``).
2. :meth:`VerlMethod.prepare_prompts` (``_submit_batch_to_rollout``, training prompts only): marks
   the prompts as training prompts, records which have an expert trace (LUFFY), samples the hints
   of the step (UFT).
3. :meth:`VerlMethod.expert_rollout_fields` (LUFFY, after the old-policy pass): expert rows out of
   verl's rollout-vs-actor checks (:func:`echorl.verl.luffy.align_expert_rollout`).
4. :meth:`VerlMethod.stage_fields` (``_compute_advantage``, before the EchoRL stage): the rows
   EchoRL must ignore (LUFFY's off-policy rows) and the fields the loss reads (``off_policy``;
   ``hint_mask`` / ``hint_denom``).

:func:`method_config` reads the ``method:`` node (absent: plain GRPO, nothing changes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from tensordict import TensorDict
from tensordict.tensorclass import NonTensorData, NonTensorStack
from verl.utils import tensordict_utils as tu

from echorl import metric_names as M
from echorl.methods.config import MethodConfig
from echorl.methods.luffy import HINT_DENOM, HINT_MASK, OFF_POLICY, expert_text, trace_share
from echorl.methods.uft import hint_denominator, hint_probability, sample_hints
from echorl.verl.fields import _padded, _to_nested, group_ids
from echorl.verl.luffy import TRAIN_FLAG, align_expert_rollout, off_policy_rows_of
from echorl.verl.uft import HINT_FIELD, INNER_NAME, INNER_PATH, WRAPPER, hint_mask_of

AGENT_LOOPS_YAML = os.path.join(os.path.dirname(os.path.abspath(__file__)), "agent_loops.yaml")
_AGENTS = {"luffy": "luffy_agent", "uft": "uft_agent"}


def method_config(config: DictConfig) -> MethodConfig:
    """:class:`MethodConfig` from the composed config's ``method:`` node (absent: ``grpo``)."""
    node = OmegaConf.select(config, "method")
    return MethodConfig.from_dict(OmegaConf.to_container(node, resolve=True) if node is not None else None)


def configure(config: DictConfig) -> MethodConfig:
    """Point verl's agent-loop settings at the method's loop; refuse settings it cannot run with."""
    m = method_config(config)
    if not m.uses_expert_data:  # grpo, rl_zvp, forking: verl's own agent loop
        return m
    agent = config.actor_rollout_ref.rollout.agent
    want = _AGENTS[m.name]
    if agent.get("default_agent_loop") not in (None, "single_turn_agent", want):
        raise ValueError(f"method.name={m.name} runs its own agent loop {want!r}, but "
                         f"actor_rollout_ref.rollout.agent.default_agent_loop={agent.default_agent_loop!r}; "
                         f"set it to {want} (or leave verl's default)")
    path = agent.get("agent_loop_config_path")
    if path not in (None, AGENT_LOOPS_YAML):
        raise ValueError(f"method.name={m.name} needs actor_rollout_ref.rollout.agent.agent_loop_config_path="
                         f"{AGENT_LOOPS_YAML} (EchoRL's agent loops), got {path!r}")
    n = int(config.actor_rollout_ref.rollout.n)
    if m.is_luffy and m.luffy.num_off_policy >= n:
        raise ValueError(f"method.luffy.num_off_policy ({m.luffy.num_off_policy}) must be smaller than "
                         f"actor_rollout_ref.rollout.n ({n}): a group needs on-policy rollouts")
    check_trace_files(_as_list(OmegaConf.select(config, "data.train_files")), m.name)
    with open_dict(config):
        agent.default_agent_loop = want
        agent.agent_loop_config_path = AGENT_LOOPS_YAML
    if m.is_uft and not m.uft.score_hint:
        score_continuations(config)
    return m


def score_continuations(config: DictConfig) -> None:
    """Make verl's reward function score UFT's generated continuation (not the hint): wrap
    ``reward.custom_reward_function`` in :func:`echorl.verl.uft.continuation_score`."""
    manager = OmegaConf.select(config, "reward.reward_manager.name", default="naive")
    if manager not in ("naive", "limited"):
        raise ValueError(f"method.uft.score_hint=false scores the continuation the agent loop passes in extra_info, "
                         f"which verl's reward manager {manager!r} does not forward; use reward.reward_manager.name="
                         f"naive (or limited), or set method.uft.score_hint=true (the verifier then reads the hint too)")
    with open_dict(config):
        node = config.reward.get("custom_reward_function")
        if node is None:
            config.reward.custom_reward_function = {}
            node = config.reward.custom_reward_function
        if (node.get("path"), node.get("name")) == WRAPPER:
            return
        kwargs = dict(OmegaConf.to_container(node.get("reward_kwargs") or OmegaConf.create({}), resolve=True))
        kwargs.update({INNER_PATH: node.get("path"), INNER_NAME: node.get("name")})
        node.path, node.name = WRAPPER
        node.reward_kwargs = kwargs


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def trace_columns(path: str) -> set[str] | None:
    """The expert-trace fields a local ``.parquet`` / ``.jsonl`` file can hold (``target``, ``solution``,
    top level or inside ``extra_info``); ``None`` when the file is not local or not one of these."""
    if not os.path.isfile(path):
        return None
    names: set[str] = set()
    if path.endswith(".parquet"):
        schema = pq.read_schema(path)
        names = set(schema.names)
        if "extra_info" in names and pa.types.is_struct(schema.field("extra_info").type):
            names |= {f"extra_info.{f.name}" for f in schema.field("extra_info").type}
    elif path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            first = json.loads(f.readline() or "{}")
        names = set(first)
        if isinstance(first.get("extra_info"), dict):
            names |= {f"extra_info.{k}" for k in first["extra_info"]}
    else:
        return None
    return names & {"target", "solution", "extra_info.target", "extra_info.solution"}


def check_trace_files(files: Sequence[str], method: str) -> None:
    """Start-up check of LUFFY / UFT training files: refuse a local file with no expert-trace field at all
    (every step would train plain GRPO). Files this cannot read are left to the per-step check
    (:func:`echorl.methods.luffy.trace_share`)."""
    for path in files:
        cols = trace_columns(path)
        if cols is not None and not cols:
            raise ValueError(
                f"method.name={method} needs each training row's expert trace, but {path} has no 'target' or "
                f"'solution' field (top level or in 'extra_info'): convert the raw data with scripts/prepare_data.py, "
                f"which carries the trace as 'target' (e.g. --format openr1 for OpenR1-Math-46k), or set method.name=grpo")


def _row_field(batch: TensorDict, key: str, i: int) -> Any:
    """Row ``i`` of a prompt batch's field ``key`` (``None`` when absent)."""
    if key not in batch.keys():
        return None
    value = batch.get(key)
    if isinstance(value, NonTensorData):
        return value.data
    item = value[i]
    return item.data if isinstance(item, (NonTensorData, NonTensorStack)) else item


class VerlMethod:
    """Driver-side state of LUFFY / UFT for one run (see the module docstring)."""

    def __init__(self, cfg: MethodConfig, train_files: str = "data.train_files"):
        self.cfg = cfg
        self.train_files = train_files  # named in the error of a step without expert traces
        self.has_trace: dict[str, bool] = {}
        self.metrics: dict[str, float] = {}

    @property
    def active(self) -> bool:
        return self.cfg.uses_expert_data  # LUFFY / UFT (RL-ZVP and forking change only the loss)

    def prepare_prompts(self, batch: TensorDict, step: int) -> TensorDict:
        """Training prompts: the train flag, LUFFY's trace bookkeeping, UFT's hints."""
        self.metrics = {}
        if not self.active:
            return batch
        tu.assign_non_tensor_data(batch, TRAIN_FLAG, True)
        rows = [{k: _row_field(batch, k, i) for k in ("target", "solution", "extra_info")} for i in range(len(batch))]
        texts = [expert_text(r) for r in rows]
        self.metrics[M.LUFFY_TRACE_FRAC if self.cfg.is_luffy else M.UFT_TRACE_FRAC] = trace_share(texts, self.cfg.name, self.train_files)
        if self.cfg.is_luffy:
            uids = [str(_row_field(batch, "uid", i)) for i in range(len(batch))]
            self.has_trace.update({u: t is not None for u, t in zip(uids, texts)})
            self.metrics[M.LUFFY_PROMPTS_WITH_TRACE] = float(sum(t is not None for t in texts))
        if self.cfg.is_uft:
            hints = sample_hints(texts, step, self.cfg.uft)
            tu.assign_non_tensor_stack(batch, HINT_FIELD, hints)
            self.metrics[M.UFT_HINT_PROB] = hint_probability(step, self.cfg.uft)
            self.metrics[M.UFT_HINTED_PROMPTS] = float(sum(bool(h) for h in hints))
        return batch

    def stage_fields(self, keys: Sequence[str], uids: Sequence[str], response_mask: torch.Tensor,
                     response_lens: torch.Tensor, num_minibatches: int,
                     is_padding: Sequence[bool] | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``(fields, exclude)`` for one step's batch.

        Args:
            keys: TransferQueue row keys; uids: the rows' uids; response_mask: ``[B, L]`` padded;
            response_lens: ``[B]`` response tokens per row; num_minibatches: of the actor update;
            is_padding: rows verl appended to balance the batch.

        Returns:
            ``fields``: padded ``[B]`` / ``[B, L]`` tensors to store (``off_policy``, or ``hint_mask``
            and ``hint_denom``); ``exclude``: ``[B] bool`` rows EchoRL must treat as empty.
        """
        B, L = response_mask.shape
        exclude = torch.zeros(B, dtype=torch.bool)
        if self.cfg.is_luffy:
            off = off_policy_rows_of(keys, uids, self.has_trace, self.cfg.luffy.num_off_policy, is_padding)
            self.metrics[M.LUFFY_OFF_POLICY_ROWS] = float(off.sum())
            self.forget(uids)  # each prompt's group is trained once
            return {OFF_POLICY: off}, off
        if self.cfg.is_uft:
            attention = torch.arange(L)[None, :] < response_lens[:, None]
            hint = hint_mask_of(response_mask, attention)
            self.metrics[M.UFT_HINT_TOKENS] = float(hint.sum())
            if not self.cfg.uft.echo_hinted:  # hinted rows give no EchoClip
                exclude = hint.any(1)
            return {HINT_MASK: hint, HINT_DENOM: torch.full((B,), hint_denominator(hint, num_minibatches))}, exclude
        return {}, exclude

    def stage(self, keys: Sequence[str], data: TensorDict, is_padding: Sequence[bool],
              num_minibatches: int) -> tuple[dict[str, torch.Tensor], list[bool]]:
        """:meth:`stage_fields` on a batch as verl stores it (``uid``, nested ``responses`` and
        ``response_mask``). Returns the fields to store (response-aligned ones nested like
        ``response_mask``) and ``is_padding`` OR the excluded rows (the rows EchoRL ignores)."""
        nested = data["response_mask"]
        mask = _padded(data, "response_mask")
        lens = nested.offsets().diff() if nested.is_nested else torch.full((mask.shape[0],), mask.shape[1])
        fields, exclude = self.stage_fields(keys, group_ids(data["uid"]), mask, lens, num_minibatches, is_padding)
        out = {k: (_to_nested(v, nested) if v.dim() == 2 else v) for k, v in fields.items()}
        return out, [bool(p) or bool(e) for p, e in zip(is_padding, exclude.tolist())]

    def expert_rollout_fields(self, keys: Sequence[str], data: TensorDict,
                              is_padding: Sequence[bool]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """LUFFY, after verl's old-policy pass and before its advantage stage (the trainer's hook):
        the ``rollout_log_probs`` to store (expert rows aligned, :func:`echorl.verl.luffy.align_expert_rollout`)
        and verl's rollout-vs-actor metrics over the policy's own rows (they replace verl's). ``data``:
        ``uid``, ``responses``, ``response_mask``, ``rollout_log_probs``, ``old_log_probs`` as verl stores
        them. Nothing to do (``{}, {}``) for other methods, without expert rows or without
        ``rollout_log_probs``."""
        if not self.cfg.is_luffy or "rollout_log_probs" not in data.keys():
            return {}, {}
        off = off_policy_rows_of(keys, group_ids(data["uid"]), self.has_trace, self.cfg.luffy.num_off_policy, is_padding)
        if not bool(off.any()):
            return {}, {}
        aligned, metrics = align_expert_rollout(_padded(data, "rollout_log_probs"), _padded(data, "old_log_probs"),
                                                _padded(data, "response_mask"), _padded(data, "responses"), off)
        nested = data["response_mask"]
        return {"rollout_log_probs": _to_nested(aligned, nested) if nested.is_nested else aligned}, metrics

    def forget(self, uids: Sequence[str]) -> None:
        """Drop the trace bookkeeping of prompts whose step is done."""
        for u in uids:
            self.has_trace.pop(str(u), None)
