"""Startup checks of a composed EchoRL + verl config: one function, clear refusals.

:func:`validate_config` is called by ``python -m echorl.main`` before Ray starts. Each refusal is a
``ValueError`` that names the config key, says why EchoRL cannot run with it, and gives the fix.
Imports nothing heavy (no Ray, no TransferQueue), so tests and tools can call it directly.
"""

from __future__ import annotations

import warnings
from typing import Any

from omegaconf import DictConfig, OmegaConf

from echorl.core.clips import EchoBoundaryWarning
from echorl.core.config import EchoConfig

SUPPORTED_TRAINER_MODES = ("sync",)


def _get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default)


def validate_config(config: DictConfig) -> EchoConfig:
    """Check that EchoRL can run with this verl config; return the parsed :class:`EchoConfig`.

    Refuses (``ValueError`` naming the key and the fix):

    * a missing ``echorl:`` node or bad ``echorl.*`` keys/values (via ``EchoConfig.from_dict``);
    * ``trainer.use_v1=false``: the deprecated v0 trainer drops the old-policy entropy;
    * ``trainer.v1.trainer_mode`` other than ``sync``: EchoRL's stage is wired into the sync trainer;
    * ``algorithm.rollout_correction.bypass_mode=true``: no old-policy pass, so no token entropy;
    * ``algorithm.filter_groups.enable=true`` with EchoRL on: DAPO dynamic sampling deletes the
      all-success groups EchoRL learns from;
    * ``distillation.enabled=true`` with the EchoRL loss on: :class:`~echorl.verl.loss.EchoLoss`
      wraps ``ppo_loss`` and would replace verl's distillation loss.
    """
    if _get(config, "echorl") is None:
        raise ValueError(
            "config has no `echorl:` node; compose EchoRL's config (defaults: [echorl_trainer, _self_] with "
            "hydra.searchpath [pkg://echorl.config]) or launch with `python -m echorl.main`"
        )
    node = config.echorl
    echo = EchoConfig.from_dict(OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node)

    if not bool(_get(config, "trainer.use_v1", False)):
        raise ValueError(
            "trainer.use_v1=false is not supported by EchoRL: the deprecated v0 trainer drops the old-policy "
            "token entropy (`entropys`) after logging, and EchoRL's stage lives in the v1 trainer. Fix: set "
            "trainer.use_v1=true (verl 0.9's default)."
        )
    mode = _get(config, "trainer.v1.trainer_mode", "sync")
    if mode not in SUPPORTED_TRAINER_MODES:
        raise ValueError(
            f"trainer.v1.trainer_mode={mode!r} is not supported by EchoRL yet: its stage is wired into verl's "
            "synchronous v1 trainer (PPOTrainerSync); the async trainers are not. Fix: set trainer.v1.trainer_mode=sync."
        )
    if bool(_get(config, "algorithm.rollout_correction.bypass_mode", False)):
        raise ValueError(
            "algorithm.rollout_correction.bypass_mode=true is not supported by EchoRL: bypass mode skips the "
            "old-policy log-prob pass, which is where verl computes the token entropy that EchoRL's step "
            "entropies need. Fix: set algorithm.rollout_correction.bypass_mode=false (decoupled mode keeps "
            "rollout correction and the entropy)."
        )
    if bool(_get(config, "algorithm.filter_groups.enable", False)) and echo.enable:
        raise ValueError(
            "algorithm.filter_groups.enable=true is not supported with EchoRL on: DAPO dynamic sampling "
            "deletes every zero-variance group, including the all-success groups EchoRL learns from, so "
            "EchoRL would never see a clip. Fix: set algorithm.filter_groups.enable=false (DAPO's clip-higher, "
            "token-mean and overlong shaping still apply), or echorl.enable=false for the DAPO baseline."
        )
    if bool(_get(config, "distillation.enabled", False)) and echo.active and echo.mode == "loss":
        raise ValueError(
            "distillation.enabled=true is not supported with echorl.mode=loss: EchoLoss wraps verl's ppo_loss "
            "and would replace the distillation loss. Fix: set distillation.enabled=false, or "
            "echorl.mode=advantage (no loss change)."
        )
    return echo


def check_boundary_ids(echo: EchoConfig, tokenizer: Any) -> None:
    """Check ``echorl.boundary_token_ids`` against the tokenizer the run uses.

    Ids outside the vocabulary are refused (``ValueError``); ids whose text holds no newline give an
    :class:`EchoBoundaryWarning` (they likely belong to another tokenizer family, e.g. the Qwen ids
    198/271 on a Llama tokenizer). With ``boundary='auto'`` there is nothing to check.
    """
    if echo.boundary == "auto":
        return
    vocab = len(tokenizer)
    bad = [i for i in echo.boundary_token_ids if i >= vocab]
    if bad:
        raise ValueError(
            f"echorl.boundary_token_ids {bad} are outside the tokenizer's vocabulary (size {vocab}). Fix: give "
            "this tokenizer's newline token ids, or set echorl.boundary=auto."
        )
    texts = {i: tokenizer.decode([i]) for i in echo.boundary_token_ids}
    no_newline = [i for i, t in texts.items() if "\n" not in t]
    if no_newline:
        warnings.warn(
            f"echorl.boundary_token_ids {no_newline} decode to {[texts[i] for i in no_newline]!r}, not newlines: "
            "steps may never end. Set this tokenizer's newline ids or echorl.boundary=auto.",
            EchoBoundaryWarning,
            stacklevel=2,
        )
