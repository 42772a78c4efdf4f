"""Start-up checks of ``algorithm.adv_estimator`` shared by both hosts (embedded engine, verl).

verl's estimators live in ``verl.trainer.ppo.core_algos.ADV_ESTIMATOR_REGISTRY``; each is a function
of keyword tensors (``token_level_rewards [B, L]``, ``response_mask [B, L]``, ``index [B]``, ...).

* :func:`check_estimator_name`: an unknown name is refused with the list of registered names.
* :func:`engine_refusal`: why the embedded engine cannot run an estimator (it passes only
  ``token_level_rewards``, ``response_mask``, ``index``, ``config``, ``norm_adv_by_std_in_grpo``,
  ``gamma``), or None. Read from the function's signature, so a newly registered estimator that
  needs another input is refused by name too.
* :func:`check_group_size`: a group-relative estimator (it takes ``index``, the group ids) with
  ``rollout.n=1`` has no group to compare against.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

__all__ = ["registered", "check_estimator_name", "engine_refusal", "is_group_relative", "check_group_size",
           "ENGINE_INPUTS"]

# What echorl.local.update.compute_advantages passes to an estimator.
ENGINE_INPUTS = frozenset({"token_level_rewards", "response_mask", "index", "config", "norm_adv_by_std_in_grpo",
                           "gamma"})
# Why a required input is missing in the embedded engine.
_MISSING_INPUT_REASON = {
    "values": "needs a critic (values); the embedded engine trains the actor only",
    "lam": "needs a critic (values); the embedded engine trains the actor only",
    "reward_baselines": "needs the reward of a greedy baseline rollout per prompt (ReMax), which the embedded "
                        "engine does not generate",
    "sum_pi_squared": "needs actor.calculate_sum_pi_squared (sum of pi^2 per token), which the embedded engine "
                      "does not compute",
    "old_log_probs": "needs the old log-probs passed to the estimator, which the embedded engine does not do",
}
# Options of verl's AlgoConfig an estimator reads that the engine does not provide.
_NEEDS_CONFIG = {
    "gdpo": ("gdpo_reward_keys", "needs per-component rewards (algorithm.gdpo_reward_keys and a score_fn returning "
             "a dict); the embedded engine's verifier returns one score"),
}


def registered() -> list[str]:
    """Names in verl's ``ADV_ESTIMATOR_REGISTRY`` (registration order)."""
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

    return list(ADV_ESTIMATOR_REGISTRY)


def check_estimator_name(name: str, key: str = "algorithm.adv_estimator") -> Callable:
    """The estimator function of ``name``; ``ValueError`` listing the valid names when unknown."""
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

    if name not in ADV_ESTIMATOR_REGISTRY:
        raise ValueError(f"{key}={name!r} is not a registered advantage estimator; valid names: "
                         f"{', '.join(ADV_ESTIMATOR_REGISTRY)}")
    return ADV_ESTIMATOR_REGISTRY[name]


def engine_refusal(name: str) -> str | None:
    """Why the embedded engine cannot run estimator ``name`` (None: it can)."""
    if name in _NEEDS_CONFIG:
        return _NEEDS_CONFIG[name][1]
    fn = check_estimator_name(name)
    reasons: list[str] = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.default is not p.empty or p.name in ENGINE_INPUTS:
            continue
        r = _MISSING_INPUT_REASON.get(p.name, f"needs the input {p.name!r}, which the embedded engine does not pass "
                                              "to estimators")
        if r not in reasons:
            reasons.append(r)
    return "; ".join(reasons) or None


def is_group_relative(name: str) -> bool:
    """True when the estimator compares rollouts of one prompt (it takes the group ids ``index``)."""
    return "index" in inspect.signature(check_estimator_name(name)).parameters


def check_group_size(name: str, n: int, key: str = "actor_rollout_ref.rollout.n") -> None:
    """Refuse ``rollout.n < 2`` for a group-relative estimator (each group would be one rollout)."""
    if n < 2 and is_group_relative(name):
        raise ValueError(f"{key}={n} leaves algorithm.adv_estimator={name} no group to compare: it scores each "
                         "rollout against the other rollouts of its prompt, so with one rollout every advantage is "
                         f"0 and nothing is learned; set {key} to 2 or more (e.g. 4), or use "
                         "algorithm.adv_estimator=reinforce_plus_plus")
