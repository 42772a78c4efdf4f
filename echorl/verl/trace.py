"""``echorl_trace.dir``: what the actor update of each step received from the EchoRL stage, for checks.

With ``+echorl_trace.dir=<folder>``, :class:`echorl.verl.trainer.EchoPPOTrainerSync` writes, after
every actor update, ``<folder>/step_<k>.pt`` (``torch.load``-able, tensors on CPU):

* ``uid``: ``[B]`` group ids; ``is_padding``: ``[B]`` bool (rows verl appended to balance the batch);
  ``echo_kept``: ``[B]`` bool (rows kept for the EchoRL term only, ``echorl.keep_filtered``, and their padding);
* ``response_mask``, ``echo_mask`` (bool), ``old_log_probs``: ``[B, L]`` right-padded;
* ``echo_denom``: ``[B]`` float, the stored normaliser ``D_b``;
* ``off_policy``: ``[B]`` bool, LUFFY's expert-trace rows (only in LUFFY runs, :data:`METHOD_FIELDS`);
* ``zvp_sign``: ``[B]`` long, RL-ZVP's +1 / -1 / 0 per row (only in RL-ZVP runs);
* ``metrics``: the step's ``echo/*`` metrics and ``echo/loss`` (as the workers reported it).

It lets a test recompute the EchoRL loss from exactly what the workers trained on (with one
mini-batch and one PPO epoch the update's forward runs at the old weights, so the reported
``echo/loss`` equals ``sum_b sum_t clip(-old_log_prob) / D_b``). Off by default; meant for short
debugging and test runs (one small file per step). For the human-readable EchoClip records see
``echorl_dump`` (:mod:`echorl.verl.dump`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from echorl import metric_names as M
from echorl.verl.fields import _padded, group_ids

FIELDS = ("uid", "response_mask", "echo_mask", "echo_denom", "old_log_probs")
# method.name -> its per-row ``[B]`` fields, traced when it runs, with the dtype they are saved as
METHOD_FIELDS: dict[str, dict[str, torch.dtype]] = {"luffy": {"off_policy": torch.bool},
                                                    "rl_zvp": {"zvp_sign": torch.long}}


def fields_of(method: str) -> list[str]:
    """The stored fields a trace of a ``method.name`` run reads: :data:`FIELDS` plus the method's own."""
    return [*FIELDS, *METHOD_FIELDS.get(method, ())]


def trace_dir_of(config: Any) -> Path | None:
    """``echorl_trace.dir`` of the composed config (None: off)."""
    value = OmegaConf.select(config, "echorl_trace.dir", default=None)
    return Path(str(value)) if value else None


def write_trace(folder: Path, step: int, data: Any, is_padding: Sequence[bool], metrics: dict,
                kept: Sequence[bool] | None = None) -> Path:
    """Write ``step_<step>.pt`` from the stored fields ``data`` (a TensorDict with :func:`fields_of` the
    run's method, nested ``[B, j]`` as TransferQueue returns them) and the step's metrics."""
    record = {
        "uid": group_ids(data["uid"]),
        "is_padding": torch.as_tensor(list(is_padding), dtype=torch.bool),
        "echo_kept": torch.as_tensor(list(kept) if kept is not None else [False] * len(is_padding), dtype=torch.bool),
        "response_mask": _padded(data, "response_mask") != 0,
        "echo_mask": _padded(data, "echo_mask") != 0,
        "old_log_probs": _padded(data, "old_log_probs").float(),
        "echo_denom": torch.as_tensor(data["echo_denom"]).float().reshape(-1),
        "metrics": {k: float(v) for k, v in metrics.items() if k.startswith(M.ECHO_PREFIX)},
    }
    for fields in METHOD_FIELDS.values():
        for key, dtype in fields.items():
            if key in data.keys():
                record[key] = torch.as_tensor(data[key]).to(dtype).reshape(-1)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step}.pt"
    torch.save(record, path)
    return path
