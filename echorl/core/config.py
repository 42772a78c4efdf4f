"""EchoConfig: every option of the method, typed, defaulted, documented and validated (SPEC 2-3).

Each field carries its help text in ``metadata["help"]``; the docs table and the CLI help are
generated from it, so the text lives in one place. Construction validates every field and raises
``ValueError`` naming the field, the bad value and the fix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from echorl.core.registry import LOSS_AGGS, SELECTORS, STEP_AGGS
from echorl.core.steps import auto_boundary_token_ids

QWEN_NEWLINE_IDS: tuple[int, ...] = (198, 271)  # Qwen2/2.5 "\n", "\n\n": the authors' flags, boundary="fixed"

SCOPES = ("degenerate", "success")
PERS = ("rollout", "group")
# preset name -> the values it gives to the fields that are None (not set explicitly).
# 'paper': the method section's rule (SPEC 2.3-2.4, 2.6); 'degenerate': the abstract's framing;
# 'positive_nll': the positive-example NLL baseline (docs/methods.md, "Positive-example NLL").
PRESETS: dict[str, dict[str, str]] = {
    "paper": {"scope": "success", "per": "group", "selector": "peak", "loss_agg": "clip_mean"},
    "degenerate": {"scope": "degenerate", "per": "rollout", "selector": "peak", "loss_agg": "clip_token_mean"},
    "positive_nll": {"scope": "success", "per": "rollout", "selector": "full", "loss_agg": "clip_mean"},
}
MODES = ("loss", "advantage")
BOUNDARIES = ("auto", "fixed")
_DEFAULT_BOUNDARY = "auto"


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True)
class EchoConfig:
    """Options of EchoRL. Defaults are the paper's setting (SPEC 2).

    ``scope``, ``per``, ``selector`` and ``loss_agg`` left at ``None`` take the value of ``preset``
    (:data:`PRESETS`); a value given explicitly overrides the preset. After construction they are
    always set.
    """

    preset: str = _help(
        "Named reading of the method that fills scope, per, selector and loss_agg when they are null: 'paper' "
        "(success, group, peak, clip_mean), 'degenerate' (degenerate, rollout, peak, clip_token_mean) or "
        "'positive_nll' (success, rollout, full, clip_mean: the NLL of every successful response, the "
        "positive-example NLL baseline). Explicit keys win.",
        default="paper",
    )
    enable: bool = _help("Turn EchoRL on. False trains the base RLVR method bit-identically.", default=True)
    boundary: str = _help(
        "How step boundary tokens are chosen: 'auto' (every token whose text ends with a newline, derived "
        "from the tokenizer via cfg.resolve_boundary(tok)) or 'fixed' (exactly boundary_token_ids). With "
        "Qwen2.5 'fixed' [198, 271] (the authors' flags) misses the merged tokens such as '.\\n\\n' (382): "
        "most responses become one step (docs/method.md).",
        default=_DEFAULT_BOUNDARY,
    )
    boundary_token_ids: tuple[int, ...] | None = _help(
        "Token ids that end a reasoning step. null: with boundary='fixed' the authors' flags (Qwen2/2.5: 198 "
        "'\\n', 271 '\\n\\n'); with boundary='auto' the tokenizer's ids, filled in by cfg.resolve_boundary(tok).",
        default=None,
    )
    success_threshold: float = _help("A rollout succeeds when its outcome reward >= this.", default=1.0)
    tol: float = _help("Scores of a group within this of each other count as equal (zero variance).", default=1e-6)
    scope: str = _help(
        "Which rollouts give clips: 'success' (the successful rollouts of every group, the paper's rule) "
        "or 'degenerate' (only successes of all-success zero-variance groups). null: from the preset.",
        default=None,
    )
    per: str = _help(
        "'group': one clip per group (the candidate rollout with the largest peak step entropy, the "
        "paper); 'rollout': every eligible rollout yields its clip. null: from the preset.",
        default=None,
    )
    step_agg: str = _help("Step entropy from token entropies: 'mean', 'sum' or 'max'.", default="mean")
    min_step_tokens: int = _help("Steps with fewer valid tokens than this cannot be selected.", default=1)
    selector: str = _help(
        "Where the clip ends: 'peak' (highest-entropy step, the method), 'lowest', 'full' (last "
        "eligible step), 'random_prefix' (a uniformly random eligible step, seeded). null: from the preset.",
        default=None,
    )
    seed: int = _help("Seed of the 'random_prefix' selector.", default=0)
    mode: str = _help(
        "'loss': add coef * NLL(clip) to the RL loss (the method); 'advantage': add adv_coef to the "
        "advantage of every clip token (needs no actor change).",
        default="loss",
    )
    coef: float = _help("Weight of the EchoRL NLL term in mode='loss' (authors' flag: 0.001).", default=1e-3)
    adv_coef: float = _help("Advantage bonus on clip tokens in mode='advantage'.", default=0.1)
    loss_agg: str = _help(
        "How clip tokens are weighted, fixed before the update: 'clip_mean' (mean over the mini-batch's "
        "clips of each clip's token mean, the paper), 'clip_token_mean' (every clip token alike) or "
        "'token_mean' (the RL token-mean denominator). null: from the preset.",
        default=None,
    )
    follow_rl_agg: bool = _help(
        "Scale the EchoRL term by the weight the RL loss's aggregation (actor.loss_agg_mode) gives a token "
        "relative to a token mean: seq-mean-token-sum-norm N / (G * loss_scale_factor) for a mini-batch of N "
        "tokens in G sequences, seq-mean-token-sum N / G, token-sum N, token-mean and seq-mean-token-mean 1. "
        "So coef weighs the same next to the RL loss under Dr.GRPO / LUFFY aggregation. false: the paper's term, "
        "whatever the RL aggregation (docs/method.md).",
        default=False,
    )
    keep_filtered: bool = _help(
        "With DAPO dynamic sampling (algorithm.filter_groups.enable=true): the all-success groups it "
        "drops still give their clip to the EchoRL term (no RL gradient, not in the RL denominators).",
        default=False,
    )

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        _choice("boundary", self.boundary, BOUNDARIES)
        ids = self.boundary_token_ids
        if ids is None:  # the setting's default: the authors' ids, or none until resolved from a tokenizer
            ids = QWEN_NEWLINE_IDS if self.boundary == "fixed" else ()
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
            if hasattr(ids, "__iter__") and not isinstance(ids, (str, bytes)):
                ids = tuple(ids)  # e.g. an omegaconf ListConfig
            else:
                raise ValueError(
                    f"EchoConfig.boundary_token_ids must be a sequence of token ids, got {ids!r}; "
                    "for tokenizer-derived ids set boundary='auto'"
                )
        try:
            ids = tuple(int(i) for i in ids)
        except (TypeError, ValueError):
            raise ValueError(f"EchoConfig.boundary_token_ids must hold integers, got {self.boundary_token_ids!r}") from None
        if any(i < 0 for i in ids):
            raise ValueError(f"EchoConfig.boundary_token_ids must be >= 0, got {ids}")
        object.__setattr__(self, "boundary_token_ids", ids)

        _choice("preset", self.preset, list(PRESETS))
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.boundary == "fixed" and not ids:
            raise ValueError("EchoConfig.boundary_token_ids is empty with boundary='fixed'; give ids or use boundary='auto'")
        _choice("scope", self.scope, SCOPES)
        _choice("per", self.per, PERS)
        _choice("mode", self.mode, MODES)
        _choice("step_agg", self.step_agg, STEP_AGGS.names())
        _choice("selector", self.selector, SELECTORS.names())
        _choice("loss_agg", self.loss_agg, LOSS_AGGS.names())
        for name in ("enable", "follow_rl_agg", "keep_filtered"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"EchoConfig.{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("min_step_tokens", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"EchoConfig.{name} must be an int, got {v!r}")
        if self.min_step_tokens < 1:
            raise ValueError(f"EchoConfig.min_step_tokens must be >= 1, got {self.min_step_tokens}")
        for name in ("success_threshold", "tol", "coef", "adv_coef"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
                raise ValueError(f"EchoConfig.{name} must be a finite number, got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.tol < 0:
            raise ValueError(f"EchoConfig.tol must be >= 0, got {self.tol}")
        if self.coef < 0:
            raise ValueError(f"EchoConfig.coef must be >= 0 (it weights an NLL term), got {self.coef}")

    # ------------------------------------------------------------------ helpers
    @property
    def active(self) -> bool:
        """True when EchoRL changes training at all (enabled with a non-zero weight)."""
        if not self.enable:
            return False
        return (self.coef if self.mode == "loss" else self.adv_coef) != 0.0

    @property
    def adds_loss_term(self) -> bool:
        """True when EchoRL adds ``coef * NLL(clip)`` to the actor loss (active, ``mode='loss'``)."""
        return self.active and self.mode == "loss"

    @property
    def adds_advantage_bonus(self) -> bool:
        """True when EchoRL adds ``adv_coef`` to the clip tokens' advantages (active, ``mode='advantage'``)."""
        return self.active and self.mode == "advantage"

    def resolve_boundary(self, tokenizer: Any) -> EchoConfig:
        """Return a config whose ``boundary_token_ids`` are set; with boundary='auto' they are derived
        from ``tokenizer`` (see :func:`echorl.core.steps.auto_boundary_token_ids`)."""
        if self.boundary != "auto":
            return self
        return dataclasses.replace(self, boundary_token_ids=auto_boundary_token_ids(tokenizer))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, prefix: str = "echorl") -> EchoConfig:
        """Build from a plain mapping (e.g. a Hydra ``echorl:`` node). Unknown keys are an error that
        names the dotted key and lists the valid ones. ``preset`` names a reading (:data:`PRESETS`);
        ``scope``, ``per``, ``selector`` and ``loss_agg`` absent or null take its values, explicit ones win, so
        ``echorl.preset=degenerate`` switches the whole reading with one key. ``boundary_token_ids`` given
        with ``boundary='auto'`` (the default) is refused: the tokenizer's ids would replace them.
        ``boundary_token_ids: auto`` is read as ``boundary: auto``."""
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown key(s) {[f'{prefix}.{k}' for k in unknown]}; valid keys: {sorted(names)}")
        ids = d.get("boundary_token_ids")
        if ids == "auto":
            d["boundary"], d["boundary_token_ids"] = "auto", None
        elif isinstance(ids, Sequence) and not isinstance(ids, (str, bytes)) and len(ids) and \
                d.get("boundary", _DEFAULT_BOUNDARY) == "auto":
            raise ValueError(
                f"{prefix}.boundary_token_ids={list(ids)} is given while {prefix}.boundary=auto derives the ids from "
                f"the tokenizer and would ignore them; set {prefix}.boundary=fixed to train with these ids, or drop "
                f"{prefix}.boundary_token_ids (null) to use the tokenizer's newline ids"
            )
        try:
            return cls(**d)
        except ValueError as e:
            raise ValueError(str(e).replace("EchoConfig.", f"{prefix}.")) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain fields (a YAML node): ids as a list, ``None`` while ``boundary='auto'`` is unresolved."""
        d = dataclasses.asdict(self)
        d["boundary_token_ids"] = list(self.boundary_token_ids) or None
        return d

    @classmethod
    def from_preset(cls, preset: str = "paper", **overrides: Any) -> EchoConfig:
        """The config of a named reading (:data:`PRESETS`) with ``overrides`` on top."""
        return cls(preset=preset, **overrides)

    @classmethod
    def help_table(cls) -> list[tuple[str, str, Any, str]]:
        """(name, type, default, help) of every field, for docs and CLI help. The default is the value
        as constructed (fields the preset fills show the default preset's value), except for a field
        left empty until the run fills it (``boundary_token_ids`` under ``boundary='auto'``), which
        shows its declared default (``None``)."""
        base = cls()
        rows = []
        for f in dataclasses.fields(cls):
            value = getattr(base, f.name)
            rows.append((f.name, str(f.type), f.default if value == () else value, f.metadata["help"]))
        return rows


def _choice(name: str, value: Any, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ValueError(f"EchoConfig.{name} must be one of {list(valid)}, got {value!r}")
