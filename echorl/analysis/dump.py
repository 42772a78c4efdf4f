"""EchoClip dumps: ``echo_clips.json`` records of a training step, the same on every host.

A dump is a list of viewer records (:func:`echorl.analysis.viewer.clip_records`: prompt, response
tokens, token entropy, step ids, clip length, peak step, score, group) for a sample of a step's
rollouts (the viewer's default sample), plus the training ``step``. ``echorl analyze clips PATH``
renders it; ``echorl analyze entropy --dump PATH`` profiles its rollouts. The embedded engine
writes the same records at the end of a run (:mod:`echorl.local.report`).

The verl trainer writes a dump every ``echorl_dump.freq`` steps (:class:`DumpConfig`, config node
``echorl_dump`` of ``echorl_trainer.yaml``) through :mod:`echorl.verl.dump`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from echorl.analysis.viewer import clip_records

__all__ = ["DumpConfig", "dump_records", "write_dump"]


@dataclass(frozen=True)
class DumpConfig:
    """Options of the periodic EchoClip dump (config node ``echorl_dump``).

    Attributes:
        freq: write a dump every ``freq`` training steps (``0``: never).
        dir: output folder; ``None``: ``<trainer.default_local_dir>/echo_clips`` (verl).
        max_records: rollouts per dump.
    """

    freq: int = 10
    dir: str | None = None
    max_records: int = 12

    def __post_init__(self) -> None:
        for name in ("freq", "max_records"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"echorl_dump.{name} must be an integer >= 0, got {v!r}")
        if self.max_records == 0 and self.freq > 0:
            raise ValueError("echorl_dump.max_records=0 with echorl_dump.freq>0 writes empty dumps; "
                             "set max_records >= 1 or freq=0 to turn dumps off")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> DumpConfig:
        """From a mapping (``None``: the defaults); an unknown key raises ``ValueError`` listing the valid ones."""
        d = dict(d or {})
        valid = ("freq", "dir", "max_records")
        bad = sorted(set(d) - set(valid))
        if bad:
            raise ValueError(f"unknown key(s) {['echorl_dump.' + k for k in bad]}; valid: {['echorl_dump.' + k for k in valid]}")
        return cls(**d)

    def due(self, step: int) -> bool:
        """True on steps ``freq, 2 freq, ...``."""
        return self.freq > 0 and step > 0 and step % self.freq == 0


def dump_records(responses: torch.Tensor, response_mask: torch.Tensor, entropy: torch.Tensor, selection: Any,
                 tokenizer: Any, boundary_ids: Sequence[int], *, prompts: Sequence[str], scores: torch.Tensor,
                 group_ids: Sequence[Any], step: int, max_records: int = 12) -> list[dict[str, Any]]:
    """The dump of one step: :func:`~echorl.analysis.viewer.clip_records` of the viewer's default
    row sample (at most ``max_records`` rows), each record with ``step`` added.

    Args:
        responses, response_mask, entropy: ``[B, L]`` (mask 0 on padding rows: never dumped).
        selection: the step's :class:`echorl.core.EchoSelection`.
        prompts: ``B`` prompt texts; scores: ``[B]``; group_ids: ``B`` uids.
    """
    recs = clip_records(responses, response_mask, entropy, selection, tokenizer, boundary_ids, prompts=prompts,
                        scores=scores, group_ids=list(group_ids), max_records=max_records)
    for r in recs:
        r["step"] = int(step)
    return recs


def write_dump(records: Sequence[dict[str, Any]], out_dir: str | os.PathLike, step: int) -> Path:
    """Write ``<out_dir>/echo_clips_step<step>.json`` and update ``<out_dir>/echo_clips.json`` (the
    latest dump, what ``echorl analyze clips <out_dir>`` renders); each file replaced atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(list(records), default=str)
    for name in (f"echo_clips_step{int(step):06d}.json", "echo_clips.json"):
        fd, tmp = tempfile.mkstemp(prefix=".echo_clips.", dir=out)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, out / name)
    return out / "echo_clips.json"
