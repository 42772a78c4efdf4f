"""Startup checks of a composed EchoRL + verl config: one function, clear refusals.

:func:`validate_config` is called by ``python -m echorl.main`` before Ray starts. Each refusal is a
``ValueError`` that names the config key, says why EchoRL cannot run with it, and gives the fix.
Imports nothing heavy (no Ray, no TransferQueue), so tests and tools can call it directly.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from echorl.core.config import EchoConfig
from echorl.filtering import check_filter_groups
from echorl.verl.entropy_methods import check_entropy_method

SUPPORTED_TRAINER_MODES = ("sync",)


def _get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default)


def validate_config(config: DictConfig) -> EchoConfig:
    """Check that EchoRL can run with this verl config; return the parsed :class:`EchoConfig`.

    Refuses (``ValueError`` naming the key and the fix):

    * an unknown ``algorithm.adv_estimator`` (the registered names are listed), and
      ``actor_rollout_ref.rollout.n=1`` with a group-relative estimator (:mod:`echorl.estimators`);

    * a missing ``echorl:`` node or bad ``echorl.*`` keys/values (via ``EchoConfig.from_dict``);
    * ``trainer.use_v1=false``: the deprecated v0 trainer drops the old-policy entropy;
    * ``trainer.v1.trainer_mode`` other than ``sync``: EchoRL's stage is wired into the sync trainer;
    * ``algorithm.rollout_correction.bypass_mode=true``: no old-policy pass, so no token entropy;
    * ``algorithm.filter_groups.enable=true`` with ``echorl.scope=degenerate``: dynamic sampling
      drops every group that scope could take a clip from (``scope=success`` works: clips from
      the mixed groups that survive) unless ``echorl.keep_filtered=true``; ``keep_filtered``
      without dynamic sampling, or with what would change DAPO's RL term or hold rows nothing
      trains on (:func:`check_keep_filtered`, :mod:`echorl.filtering`);
    * ``distillation.enabled=true`` with the EchoRL loss on: :class:`~echorl.loss.EchoLoss`
      wraps ``ppo_loss`` and would replace verl's distillation loss.
    """
    if _get(config, "echorl") is None:
        raise ValueError(
            "config has no `echorl:` node; compose EchoRL's config (defaults: [echorl_trainer, _self_] with "
            "hydra.searchpath [pkg://echorl.config]) or launch with `python -m echorl.main`"
        )
    node = config.echorl
    echo = EchoConfig.from_dict(OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node)
    est = _get(config, "algorithm.adv_estimator")
    if est is not None:  # before verl's own checks: unknown names listed, n=1 refused for its reason
        from echorl.estimators import check_estimator_name, check_group_size

        check_estimator_name(str(est))
        check_group_size(str(est), int(_get(config, "actor_rollout_ref.rollout.n", 1)))

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
    filter_on = bool(_get(config, "algorithm.filter_groups.enable", False))
    if echo.keep_filtered and echo.enable:
        check_keep_filtered(config)
    check_filter_groups(filter_on, echo)  # scope=degenerate would select nothing under dynamic sampling
    check_entropy_method(config, echo)  # method.name=rl_zvp / forking (echorl.verl.entropy_methods)
    if bool(_get(config, "distillation.enabled", False)) and echo.adds_loss_term:
        raise ValueError(
            "distillation.enabled=true is not supported with echorl.mode=loss: EchoLoss wraps verl's ppo_loss "
            "and would replace the distillation loss. Fix: set distillation.enabled=false, or "
            "echorl.mode=advantage (no loss change)."
        )
    return echo


def check_keep_filtered(config) -> None:
    """``echorl.keep_filtered=true`` on verl (:mod:`echorl.verl.keep_filtered`): refuse what would
    make the RL term differ from DAPO's or hold rows nothing trains on.

    Every critic-free estimator keeps DAPO's RL term exactly: verl's advantage stage runs on the RL
    rows alone (:func:`echorl.verl.keep_filtered.advantages_without_kept`), so batch-level
    statistics (``reinforce_plus_plus``'s whitening, ``gpg``'s score count) never see the kept rows.
    ``gae`` is refused: its critic update would train on the kept rows."""
    custom = _get(config, "trainer.v1.sampler.custom_sampler.path", None)
    if custom:
        raise ValueError(
            f"echorl.keep_filtered=true replaces verl's ReplayBuffer, but trainer.v1.sampler.custom_sampler.path={custom!r} "
            "sets another one. Fix: drop the custom sampler or set echorl.keep_filtered=false.")
    if bool(_get(config, "actor_rollout_ref.actor.shuffle", False)):
        raise ValueError(
            "echorl.keep_filtered=true places the kept rows inside DAPO's mini-batches, which "
            "actor_rollout_ref.actor.shuffle=true would reshuffle (changing the RL mini-batches). Fix: "
            "actor_rollout_ref.actor.shuffle=false (verl's default) or echorl.keep_filtered=false.")
    if _get(config, "algorithm.adv_estimator", "grpo") == "gae":
        raise ValueError(
            "echorl.keep_filtered=true with algorithm.adv_estimator=gae: the critic update would train on the kept "
            "rows. Fix: a critic-free estimator (grpo, rloo, ...) or echorl.keep_filtered=false.")
    method = _get(config, "method.name", "grpo")
    if method != "grpo":
        why = {"luffy": "LUFFY lays out its own expert rows", "uft": "UFT lays out its own hinted rows",
               "rl_zvp": "RL-ZVP trains the zero-variance groups DAPO's filter drops",
               "forking": "forking tokens are not combined with EchoRL"}.get(method, "only GRPO's rows are laid out")
        raise ValueError(f"echorl.keep_filtered=true is not supported with method.name={method!r} ({why}). Fix: "
                         "echorl.keep_filtered=false.")


# ---------------------------------------------------------------------------- model context
# Qwen2.5-Math-7B's config.json has max_position_embeddings 4096. LUFFY (and the EchoRL authors'
# setting, prompt 1024 + response 8192) train it from a copy whose config.json says
# "max_position_embeddings": 16384 and "rope_theta": 40000.
LUFFY_MAX_POSITIONS = 16384
LUFFY_ROPE_THETA = 40000
_ROPE_OVERRIDE_KEYS = ("rope_theta", "rope_scaling", "rope_parameters")
_logger = logging.getLogger(__name__)


def read_model_config(path: str) -> tuple[dict | None, str]:
    """The model's ``config.json`` as a dict, read locally; ``(None, why)`` when that needs a download.

    ``path`` is a local folder or a hub id; a hub id is read only from the local HF cache
    (``huggingface_hub.try_to_load_from_cache``), never fetched.
    """
    if "://" in path:
        return None, f"{path!r} is a remote URL (verl copies it to each node at start-up)"
    local = os.path.expanduser(path)
    if os.path.isdir(local):
        file = os.path.join(local, "config.json")
        if not os.path.isfile(file):
            return None, f"{local} has no config.json"
    elif local.startswith(("/", ".")) or path.count("/") > 1:  # a hub id is "name" or "org/name"
        return None, f"{local} does not exist on this machine"
    else:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.errors import HFValidationError

        try:
            file = try_to_load_from_cache(repo_id=path, filename="config.json")
        except HFValidationError as e:
            return None, f"{path!r} is neither a local folder nor a hub id ({e})"
        if not isinstance(file, str):
            return None, f"hub id {path!r} is not in the local HF cache (no download at start-up)"
    with open(file) as f:
        return json.load(f), file


def _max_positions(hf: dict) -> int | None:
    value = hf.get("max_position_embeddings")
    if value is None and isinstance(hf.get("text_config"), dict):  # multimodal models
        value = hf["text_config"].get("max_position_embeddings")
    return None if value is None else int(value)


def _rope_theta(hf: dict) -> float | None:
    for node in (hf, hf.get("text_config") or {}):
        if "rope_theta" in node:
            return float(node["rope_theta"])
        if isinstance(node.get("rope_parameters"), dict) and "rope_theta" in node["rope_parameters"]:
            return float(node["rope_parameters"]["rope_theta"])
    return None


def _as_dict(value: Any, key: str) -> dict:
    """An override node as a dict: absent -> ``{}``; JSON text (vLLM's ``--hf-overrides`` and
    SGLang's ``json_model_override_args`` take it) is parsed; anything else is a ``ValueError`` naming ``key``."""
    if value is None:
        return {}
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"{key}={value!r} is not valid JSON ({e.msg}); give a mapping, e.g. "
                             f"'+{key}={{max_position_embeddings: 9216}}' or a JSON object string") from e
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be a mapping of model config fields, got {type(value).__name__} {value!r}")
    return value


def _rollout_override_key(rollout_name: str) -> str | None:
    """Where a rollout engine takes HF config overrides (verl forwards ``engine_kwargs.<engine>`` verbatim)."""
    return {"vllm": "actor_rollout_ref.rollout.engine_kwargs.vllm.hf_overrides",
            "sglang": "actor_rollout_ref.rollout.engine_kwargs.sglang.json_model_override_args"}.get(rollout_name)


def check_model_context(config: DictConfig) -> dict | None:
    """Refuse a model whose position limit is below the sequences the config trains on.

    need = ``data.max_prompt_length + data.max_response_length`` (or ``rollout.max_model_len`` when
    larger). Two limits are checked against it, each the model's ``config.json``
    ``max_position_embeddings`` unless overridden:

    * the actor (and verl's own rollout check): ``actor_rollout_ref.model.override_config.max_position_embeddings``;
    * the rollout engine, which loads ``config.json`` itself and never sees ``override_config``:
      ``rollout.engine_kwargs.vllm.hf_overrides`` (SGLang: ``engine_kwargs.sglang.json_model_override_args``).

    ``override_config`` rope keys are refused outright: with transformers 5 (verl[vllm] 0.9.1 pins
    5.9) the rotary base is read into ``rope_parameters`` when ``config.json`` loads, so verl's later
    ``setattr(rope_theta)`` changes nothing and a nested ``rope_parameters`` override raises; the
    rollout would not see it either. Returns what it found, or ``None`` (logged) when the model's
    ``config.json`` cannot be read without a download.
    """
    model = _get(config, "actor_rollout_ref.model")
    actor_key = "actor_rollout_ref.model.override_config"
    actor_over = _as_dict(_get(config, actor_key, {}), actor_key)
    actor_over = _as_dict(actor_over.get("model_config"), f"{actor_key}.model_config") or actor_over  # verl accepts either shape
    rope = [k for k in _ROPE_OVERRIDE_KEYS if k in actor_over]
    if rope:
        raise ValueError(
            f"actor_rollout_ref.model.override_config.{rope[0]}={actor_over[rope[0]]!r} does not change the model "
            "in verl 0.9.1: transformers 5 reads the rotary settings into config.rope_parameters when config.json "
            "loads, verl sets attributes afterwards (a nested rope_parameters override raises), and the rollout "
            "engine never sees override_config, so actor and rollout would disagree. Fix: remove it and edit a copy "
            f"of the model folder's config.json (LUFFY's setting for Qwen2.5-Math-7B: \"rope_theta\": {LUFFY_ROPE_THETA}, "
            f"\"max_position_embeddings\": {LUFFY_MAX_POSITIONS}), then point actor_rollout_ref.model.path at the copy."
        )
    if model is None or _get(config, "actor_rollout_ref.model.path") is None:
        return None
    path = str(model.path)
    prompt, response = _get(config, "data.max_prompt_length"), _get(config, "data.max_response_length")
    if prompt is None or response is None:
        return None  # no fixed lengths: nothing to compare
    prompt, response = int(prompt), int(response)
    max_model_len = _get(config, "actor_rollout_ref.rollout.max_model_len")
    need = max(prompt + response, int(max_model_len or 0))
    hf, where = read_model_config(path)
    if hf is None:
        _logger.warning("EchoRL: model context not checked before start-up: %s. verl checks it when the "
                        "rollout starts (need %d positions).", where, need)
        return None
    own = _max_positions(hf)
    if own is None:
        _logger.warning("EchoRL: %s has no max_position_embeddings; model context not checked.", where)
        return None

    rollout_name = str(_get(config, "actor_rollout_ref.rollout.name", ""))
    rollout_key = _rollout_override_key(rollout_name)
    rollout_over = _as_dict(_get(config, rollout_key), rollout_key) if rollout_key else {}
    actor_limit = int(actor_over.get("max_position_embeddings", own))
    rollout_limit = int(rollout_over.get("max_position_embeddings", own))
    short = [f"the actor ({actor_limit})"] if actor_limit < need else []
    if rollout_limit < need:
        short.append(f"the {rollout_name} rollout ({rollout_limit})")
    found = {"model": path, "config_json": where, "need": need, "model_max_positions": own,
             "actor_max_positions": actor_limit, "rollout_max_positions": rollout_limit,
             "rope_theta": _rope_theta(hf)}
    if short:
        target = max(LUFFY_MAX_POSITIONS, 1 << (need - 1).bit_length())
        lens = f"data.max_prompt_length {prompt} + data.max_response_length {response}"
        if need > prompt + response:
            lens += f", actor_rollout_ref.rollout.max_model_len {need}"
        rollout_fix = (f" ++{rollout_key}.max_position_embeddings={target}" if rollout_key == _rollout_override_key("vllm")
                       else f" ++{rollout_key}='{{\"max_position_embeddings\": {target}}}'" if rollout_key else "")
        raise ValueError(
            f"actor_rollout_ref.model.path={path!r}: config.json has max_position_embeddings={own}, below the {need} "
            f"positions this run needs ({lens}); too short for {' and '.join(short)}. vLLM/verl would refuse it after "
            f"the models load. Fix: (a) LUFFY's setting for Qwen2.5-Math-7B: copy the model folder, set "
            f"\"max_position_embeddings\": {target} and \"rope_theta\": {LUFFY_ROPE_THETA} in the copy's config.json and "
            f"point actor_rollout_ref.model.path (MODEL_PATH) at it; or (b) raise only the position limit, keeping the "
            f"model's rotary base, on the actor and the rollout engine: "
            f"++actor_rollout_ref.model.override_config.max_position_embeddings={target}{rollout_fix}; "
            "or (c) shorten data.max_response_length."
        )
    if own < need:
        _logger.warning(
            "EchoRL: %s: max_position_embeddings raised from %d to %d (actor) / %d (%s rollout) by config overrides; "
            "the rotary base stays at config.json's rope_theta=%s. LUFFY's setting for Qwen2.5-Math-7B also sets "
            "rope_theta=%d: for that, edit both in a copy of config.json.",
            path, own, actor_limit, rollout_limit, rollout_name, found["rope_theta"], LUFFY_ROPE_THETA)
    return found
