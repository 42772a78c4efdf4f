"""The periodic EchoClip dump of the verl trainer: verl's batch layout -> ``echo_clips.json``.

:class:`echorl.verl.trainer.EchoPPOTrainerSync` calls :func:`write_verl_dump` in
``_compute_advantage`` every ``echorl_dump.freq`` steps, with the fields the EchoRL stage read
(:data:`echorl.verl.fields.READ_FIELDS`, nested ``[B, j]`` as TransferQueue returns them), the
``prompts`` field, the ``is_padding`` tags and the stage's selection. The records are those of the
embedded engine (:func:`echorl.analysis.dump.dump_records`); ``echorl analyze clips <dir>`` renders
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from echorl.analysis.dump import DumpConfig, dump_records, write_dump
from echorl.core.config import EchoConfig
from echorl.verl.fields import _padded, group_ids

__all__ = ["dump_config_of", "write_verl_dump"]


def dump_config_of(config: Any) -> DumpConfig:
    """:class:`DumpConfig` from the composed config's ``echorl_dump`` node; ``dir: null`` becomes
    ``<trainer.default_local_dir>/echo_clips``."""
    node = OmegaConf.select(config, "echorl_dump", default=None)
    d = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    cfg = DumpConfig.from_dict(d)
    if cfg.dir is None:
        root = OmegaConf.select(config, "trainer.default_local_dir", default="checkpoints")
        cfg = DumpConfig(**{**cfg.__dict__, "dir": str(Path(str(root)) / "echo_clips")})
    return cfg


def _prompt_texts(prompts: torch.Tensor, tokenizer: Any) -> list[str]:
    """Decode verl's ``prompts`` field (jagged ``[B, j]`` or left-padded ``[B, P]``), special tokens dropped."""
    rows = prompts.unbind(0) if prompts.is_nested else list(prompts)
    return [tokenizer.decode(r.tolist(), skip_special_tokens=True) for r in rows]


def write_verl_dump(data: Any, prompts: torch.Tensor, is_padding: Sequence[bool] | None, selection: Any,
                    tokenizer: Any, echo_cfg: EchoConfig, dump_cfg: DumpConfig, step: int) -> Path:
    """Build the step's records from verl's layout and write them (:func:`echorl.analysis.dump.write_dump`).

    Args:
        data: ``TensorDict`` with ``uid``, ``responses``, ``response_mask``, ``entropy``, ``rm_scores``.
        prompts: verl's ``prompts`` field of the same rows.
        is_padding: ``[B]`` rows verl added to balance the batch (never dumped).
        selection: the stage's :class:`echorl.core.EchoSelection`.

    Returns:
        the path of ``echo_clips.json``.
    """
    responses = _padded(data, "responses").long()  # [B, L]
    mask = _padded(data, "response_mask") != 0  # [B, L]
    if is_padding is not None:
        mask = mask & ~torch.as_tensor(list(is_padding), dtype=torch.bool)[:, None]
    entropy = _padded(data, "entropy").float()
    scores = _padded(data, "rm_scores").float().sum(dim=-1)  # [B]
    records = dump_records(responses, mask, entropy, selection, tokenizer, echo_cfg.boundary_token_ids,
                           prompts=_prompt_texts(prompts, tokenizer), scores=scores, group_ids=group_ids(data["uid"]),
                           step=step, max_records=dump_cfg.max_records)
    return write_dump(records, dump_cfg.dir, step)
