"""The ``method:`` config node shared by both hosts (``local.yaml`` and the verl recipes).

::

    method:
      name: grpo          # grpo (no expert data), luffy, uft, rl_zvp, forking
      luffy: {num_off_policy: 1, gamma: 0.1, max_target_length: 8192, on_policy_clip: false}
      uft: {hint_steps: 300, lower_prob: 0.05, upper_prob: 0.95, max_segments: 5, segments: uft, coef: 0.001,
            seed: 0, echo_hinted: true, score_hint: false}
      rl_zvp: {alpha: 0.1, positive_above: 0.0, tol: 1.0e-6}
      forking: {rho: 0.2}

Every default is the authors' (docs/methods.md lists each with its source).

``luffy`` and ``uft`` mix expert data into the rollouts (:attr:`MethodConfig.uses_expert_data`).
``rl_zvp`` (:class:`echorl.core.rl_zvp.RlZvpConfig`) and ``forking``
(:class:`echorl.core.forking.ForkingConfig`) change only the actor loss, from the update forward's
token entropy (:attr:`MethodConfig.needs_entropy`), through :mod:`echorl.methods.entropy`.

How they combine with EchoRL (checked by :func:`check_combination`, light enough for start-up checks):

* ``rl_zvp`` + EchoRL ``mode=loss``: allowed. RL-ZVP rewrites the advantages of zero-variance
  rows; the EchoRL term reads ``echo_mask`` / ``echo_denom`` only, so the two add up unchanged.
* ``rl_zvp`` + EchoRL ``mode=advantage``: refused (EchoRL's bonus sits on the advantages of
  all-success groups, which RL-ZVP replaces).
* ``forking`` + EchoRL (active): refused (the term would be trained under the forking mask and
  normaliser). The study compares the two as separate arms.
* ``rl_zvp`` + DAPO's dynamic sampling (``algorithm.filter_groups.enable``): refused (the filter
  drops the zero-variance groups RL-ZVP trains on). ``forking`` + DAPO is the authors' setting.

Every bad value is a ``ValueError`` naming ``method.<key>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from echorl.core.forking import ForkingConfig
from echorl.core.rl_zvp import RlZvpConfig

METHODS = ("grpo", "luffy", "uft", "rl_zvp", "forking")
EXPERT_METHODS = ("luffy", "uft")  # mix expert data into the rollouts
ENTROPY_METHODS = ("rl_zvp", "forking")  # need the update forward's token entropy
SEGMENTS = ("uft", "lines")  # method.uft.segments


def _from(cls, d: Mapping[str, Any] | None, prefix: str):
    d = dict(d or {})
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - valid)
    if unknown:
        raise ValueError(f"unknown key(s) {[f'{prefix}.{k}' for k in unknown]}; valid keys: {sorted(valid)}")
    return cls(**d)


@dataclass(frozen=True)
class LuffyConfig:
    """LUFFY (Yan et al. 2025): ``num_off_policy`` of the ``n`` rollouts of each group are replaced
    by the prompt's expert trace (the first ones of the group); its tokens get the shaped,
    unclipped term ``-A * f(pi_theta)`` with ``f(x) = x / (x + gamma)``. ``on_policy_clip``: false (the
    authors' ``loss_remove_clip=True``) gives the on-policy tokens the unclipped ``-A * ratio``; true keeps
    the base method's clipped policy loss."""

    num_off_policy: int = 1
    gamma: float = 0.1
    max_target_length: int = 8192
    on_policy_clip: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.num_off_policy, int) or self.num_off_policy < 0:
            raise ValueError(f"method.luffy.num_off_policy must be an int >= 0, got {self.num_off_policy!r}")
        if not float(self.gamma) > 0:
            raise ValueError(f"method.luffy.gamma must be > 0 (f(x) = x / (x + gamma)), got {self.gamma!r}")
        if not isinstance(self.max_target_length, int) or self.max_target_length < 1:
            raise ValueError(f"method.luffy.max_target_length must be a positive int, got {self.max_target_length!r}")
        if not isinstance(self.on_policy_clip, bool):
            raise ValueError(f"method.luffy.on_policy_clip must be true or false, got {self.on_policy_clip!r}")


@dataclass(frozen=True)
class UftConfig:
    """UFT (Liu et al. 2025): a hint (the first ``k`` of ``m = min(max_segments, pieces)`` parts of
    the expert solution, ``k ~ Binomial(m, p(t))``) is given to the whole group;
    ``p(t) = lower + (upper - lower) * (1 + cos(pi t / hint_steps)) / 2`` at UFT's 1-based step
    ``t <= hint_steps``, no hint after; ``coef`` weighs the hint tokens' NLL. ``segments``: ``uft``
    (the pieces of UFT's data: a piece ends after every line break and after every ``.`` followed by
    a space or tab) or ``lines``. ``echo_hinted``: whether a hinted rollout's own continuation may
    give an EchoClip (hint tokens never do); false leaves EchoRL only the rollouts of unhinted
    prompts. ``score_hint``: false (UFT: its hints never hold the scored answer) makes the verifier
    read the generated continuation only; true scores hint + continuation."""

    hint_steps: int = 300
    lower_prob: float = 0.05
    upper_prob: float = 0.95
    max_segments: int = 5
    segments: str = "uft"
    coef: float = 0.001
    seed: int = 0
    echo_hinted: bool = True
    score_hint: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.hint_steps, int) or self.hint_steps < 0:
            raise ValueError(f"method.uft.hint_steps must be an int >= 0, got {self.hint_steps!r}")
        for k in ("lower_prob", "upper_prob"):
            v = float(getattr(self, k))
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"method.uft.{k} must be in [0, 1], got {v!r}")
        if self.lower_prob > self.upper_prob:
            raise ValueError(f"method.uft.lower_prob ({self.lower_prob}) must be <= upper_prob ({self.upper_prob})")
        if not isinstance(self.max_segments, int) or self.max_segments < 1:
            raise ValueError(f"method.uft.max_segments must be a positive int, got {self.max_segments!r}")
        if self.segments not in SEGMENTS:
            raise ValueError(f"method.uft.segments must be one of {list(SEGMENTS)}, got {self.segments!r}")
        if float(self.coef) < 0:
            raise ValueError(f"method.uft.coef must be >= 0, got {self.coef!r}")
        for k in ("echo_hinted", "score_hint"):
            if not isinstance(getattr(self, k), bool):
                raise ValueError(f"method.uft.{k} must be true or false, got {getattr(self, k)!r}")


@dataclass(frozen=True)
class MethodConfig:
    """Which base method runs, with its options (the unused ones' options are still validated)."""

    name: str = "grpo"
    luffy: LuffyConfig = field(default_factory=LuffyConfig)
    uft: UftConfig = field(default_factory=UftConfig)
    rl_zvp: RlZvpConfig = field(default_factory=RlZvpConfig)
    forking: ForkingConfig = field(default_factory=ForkingConfig)

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ValueError(f"method.name must be one of {list(METHODS)}, got {self.name!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> MethodConfig:
        """From a plain mapping (a resolved Hydra ``method:`` node); ``None`` gives plain GRPO."""
        d = dict(d or {})
        valid = {"name", "luffy", "uft", "rl_zvp", "forking"}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"unknown key(s) {[f'method.{k}' for k in unknown]}; valid keys: {sorted(valid)}")
        return cls(name=str(d.get("name", "grpo")), luffy=_from(LuffyConfig, d.get("luffy"), "method.luffy"),
                   uft=_from(UftConfig, d.get("uft"), "method.uft"),
                   rl_zvp=RlZvpConfig.from_dict(d.get("rl_zvp"), prefix="method.rl_zvp"),
                   forking=ForkingConfig.from_dict(d.get("forking"), prefix="method.forking"))

    @property
    def is_luffy(self) -> bool:
        return self.name == "luffy"

    @property
    def is_uft(self) -> bool:
        return self.name == "uft"

    @property
    def uses_expert_data(self) -> bool:
        """LUFFY or UFT: the run needs expert traces and the host's rollout hooks."""
        return self.name in EXPERT_METHODS

    @property
    def needs_entropy(self) -> bool:
        """RL-ZVP or forking tokens: the actor loss needs the update forward's token entropy."""
        return self.name in ENTROPY_METHODS

    @property
    def rl_zvp_on(self) -> RlZvpConfig | None:
        """RL-ZVP's options when ``name=rl_zvp``, else None."""
        return self.rl_zvp if self.name == "rl_zvp" else None

    @property
    def forking_on(self) -> ForkingConfig | None:
        """The forking-token options when ``name=forking``, else None."""
        return self.forking if self.name == "forking" else None


def check_forking_actor(actor: Any, echo_adds_term: bool) -> None:
    """The forking-token rule's requirements on the actor loss, read from verl's actor config (its
    dataclass or the ``actor_rollout_ref.actor`` node): token-mean (the authors' kept-token mean),
    no entropy bonus and no KL loss (they mask the policy-gradient term only), no EchoRL term."""
    mode = actor.loss_agg_mode
    if mode != "token-mean":
        raise ValueError(f"the forking-token rule normalises by the kept tokens (token-mean, as its authors); "
                         f"actor_rollout_ref.actor.loss_agg_mode={mode!r}: set it to token-mean")
    if actor.entropy_coeff or actor.use_kl_loss:
        raise ValueError("the forking-token rule masks the policy-gradient term only and its authors train "
                         "without entropy bonus and KL loss; set actor_rollout_ref.actor.entropy_coeff=0 and "
                         "use_kl_loss=false")
    if echo_adds_term:
        raise ValueError("the forking-token rule and the EchoRL term are not combined (the term would see the "
                         "forking mask); set echorl.enable=false")


def check_combination(method: MethodConfig, echo: Any, *, filter_groups: bool, entropy_in_update: bool,
                      actor: Any = None) -> None:
    """Raise ``ValueError`` naming the setting to change when ``method`` cannot run with the rest.

    Args:
        method: the ``method:`` config; echo: the :class:`echorl.core.config.EchoConfig`.
        filter_groups: DAPO's dynamic sampling is on (``algorithm.filter_groups.enable``).
        entropy_in_update: the host computes the token entropy in the update forward (verl:
            ``actor_rollout_ref.actor.calculate_entropy``; the engine always can).
        actor: verl's actor config (dataclass or node); when given, forking's loss requirements
            (:func:`check_forking_actor`) are checked now.
    """
    if not method.needs_entropy:
        return
    name = method.name
    if not entropy_in_update:
        raise ValueError(f"method.name={name} needs the policy's token entropy in the update forward; set "
                         "actor_rollout_ref.actor.calculate_entropy=true")
    if name == "rl_zvp" and echo.adds_advantage_bonus:
        raise ValueError("method.name=rl_zvp replaces the advantages of zero-variance groups, where "
                         "echorl.mode=advantage puts its bonus; use echorl.mode=loss (the two then add up) or "
                         "echorl.enable=false")
    if name == "rl_zvp" and filter_groups:
        raise ValueError("method.name=rl_zvp trains on the zero-variance groups that DAPO's dynamic sampling drops; "
                         "set algorithm.filter_groups.enable=false")
    if name == "forking" and echo.active:
        raise ValueError("method.name=forking and EchoRL are not combined (the EchoRL term would be trained under the "
                         "forking mask and normaliser); set echorl.enable=false")
    if name == "forking" and actor is not None:
        check_forking_actor(actor, echo.adds_loss_term)
