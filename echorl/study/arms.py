"""The arms of the controlled study on the testbed (``scripts/study.py``) and their settings.

An arm is a name and the engine overrides that make it, on top of ``echorl/config/testbed.yaml``
(the ``chain`` task, the ``tiny-chain`` model, 16 prompts x 8 rollouts at T=1.0). Every arm runs
with the same steps, batch, rollouts and seeds, so compute is matched (DAPO's dynamic sampling
generates extra batches per step: its generation cost is logged, not matched). Adding an arm is one
line of :data:`ARMS`.

Seed ``k`` sets the run's ``seed`` (sampling, the update's shuffle) and ``data.seed`` (the training
rows and their order), so two arms at seed ``k`` see the same prompts in the same order: the
paired differences of the report pair runs by seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["ARMS", "Arm", "COMPETITORS", "COMPETITOR_ARMS", "COMPETITOR_SHARED", "CONFIRM", "CONFIRM_ARMS",
           "CONFIRM_SEEDS", "FULL", "PILOT", "QUICK", "STUDIES", "Settings", "arm_overrides", "arms_of", "compose",
           "get_arms"]

# DAPO's two changes the engine has (recipes/dapo): dynamic sampling and clip-higher.
DAPO = ("algorithm.filter_groups.enable=true", "++actor_rollout_ref.actor.clip_ratio_low=0.2",
        "++actor_rollout_ref.actor.clip_ratio_high=0.28")
OFF = ("echorl.enable=false",)


@dataclass(frozen=True)
class Arm:
    """One arm: ``overrides`` (Hydra strings; ``{steps}`` is replaced by the run's step count),
    ``base`` (the arm without EchoRL it is paired with, None for a base method), ``seeds`` (how many
    seeds the full study runs), ``group`` (the report's section) and ``what`` (one line)."""

    name: str
    overrides: tuple[str, ...]
    base: str | None
    seeds: int
    group: str
    what: str


# Priority order = run order of the full study (the report keeps it too).
ARMS: tuple[Arm, ...] = (
    Arm("grpo", OFF, None, 5, "main", "GRPO (EchoRL off)"),
    Arm("echorl", (), "grpo", 5, "main", "GRPO + EchoRL, paper preset (scope=success, per=group, clip_mean, coef 1e-3)"),
    Arm("degenerate", ("echorl.preset=degenerate",), "grpo", 3, "reading", "preset=degenerate (all-success groups only, per rollout)"),
    Arm("coef_1e-2", ("echorl.coef=0.01",), "grpo", 3, "coef", "paper preset, coef 1e-2"),
    Arm("coef_1e-1", ("echorl.coef=0.1",), "grpo", 3, "coef", "paper preset, coef 1e-1"),
    Arm("nll_success_full", ("echorl.scope=success", "echorl.per=rollout", "echorl.selector=full"), "grpo", 3, "baseline",
        "NLL of every successful rollout's full response (VAPO / NeMo-RL positive_example_nll_weight)"),
    Arm("sel_random_prefix", ("echorl.selector=random_prefix",), "grpo", 3, "selector", "clip ends at a random step"),
    Arm("sel_full", ("echorl.selector=full",), "grpo", 3, "selector", "clip = whole response (one per group)"),
    Arm("sel_lowest", ("echorl.selector=lowest",), "grpo", 3, "selector", "clip ends at the lowest-entropy step"),
    Arm("dapo", DAPO + OFF, None, 3, "dapo", "DAPO: dynamic sampling + clip-higher (0.2/0.28)"),
    Arm("dapo_echorl", DAPO, "dapo", 3, "dapo", "DAPO + EchoRL (paper preset)"),
    Arm("rloo", ("algorithm.adv_estimator=rloo",) + OFF, None, 3, "rloo", "RLOO"),
    Arm("rloo_echorl", ("algorithm.adv_estimator=rloo",), "rloo", 3, "rloo", "RLOO + EchoRL"),
    Arm("advantage", ("echorl.mode=advantage",), "grpo", 3, "mode", "mode=advantage (adv_coef 0.1 on clip tokens)"),
    Arm("luffy", ("method.name=luffy",) + OFF, None, 3, "luffy", "LUFFY (1 expert trace per group)"),
    Arm("luffy_echorl", ("method.name=luffy",), "luffy", 3, "luffy", "LUFFY + EchoRL"),
    Arm("uft", ("method.name=uft", "method.uft.hint_steps={steps}") + OFF, None, 3, "uft", "UFT (hints annealed over the run)"),
    Arm("uft_echorl", ("method.name=uft", "method.uft.hint_steps={steps}"), "uft", 3, "uft", "UFT + EchoRL"),
)


@dataclass(frozen=True)
class Settings:
    """Compute and evaluation settings shared by every arm of one study.

    Evaluation (``echorl.eval``, the code of ``echorl eval``): ``test_rows`` / ``ood_rows`` first rows
    of the fixed ``test`` / ``ood`` splits with ``eval_n`` samples each at ``eval_temperature``
    (avg@n); pass@k on the first ``passk_rows`` test problems with ``passk_n`` samples at
    ``passk_temperature``. Validation during training (the engine's, on ``dev``): every
    ``test_freq`` steps, ``dev_rows`` problems x ``dev_n`` samples at ``eval_temperature``.
    ``grad_share_every``: the RL and EchoRL gradient norms on the first micro-batch every k steps
    (0: off). ``eval_steps``: steps before the last at which ``test`` and ``ood`` are also evaluated
    (the result's ``checkpoints`` block and ``final.test_ckpt`` / ``final.ood_ckpt``, the means over
    these steps and the last). ``ood_split``: the ``chain`` split of the ``ood`` set. ``seed_list``:
    the seeds of every arm (None: ``1..seeds`` or ``1..arm.seeds``)."""

    name: str
    folder: str
    steps: int
    arms: tuple[str, ...] | None  # None: every arm
    seeds: int | None  # None: each arm's own count
    test_freq: int
    dev_rows: int
    dev_n: int
    test_rows: int
    ood_rows: int
    eval_n: int
    eval_temperature: float
    passk_rows: int
    passk_n: int
    passk_temperature: float
    max_new_tokens: int
    grad_share_every: int
    model: str = "tiny-chain"  # model.name of every run (a folder for an interim build)
    eval_seed: int = 1234
    eval_batch_size: int = 256
    extra: tuple[str, ...] = field(default_factory=tuple)  # overrides for every arm (tests: tiny settings)
    eval_steps: tuple[int, ...] = ()
    ood_split: str = "ood"
    seed_list: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        bad = [k for k in self.eval_steps if not 0 < int(k) < self.steps]
        if bad:
            raise ValueError(f"study settings {self.name!r}: eval_steps {bad} must lie in 1..{self.steps - 1} "
                             "(the last step is always evaluated)")

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(self)
        for k in ("arms", "extra", "eval_steps", "seed_list"):
            d[k] = list(d[k]) if d[k] is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Settings:
        """The inverse of :meth:`to_dict` (a result file's ``settings``; fields it lacks keep their defaults)."""
        d = dict(d)
        for k in ("arms", "extra", "eval_steps", "seed_list"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        d.setdefault("extra", ())
        d["extra"] = d["extra"] or ()
        return cls(**d)


FULL = Settings(name="full", folder="results/study", steps=150, arms=None, seeds=None, test_freq=25, dev_rows=200,
                dev_n=2, test_rows=500, ood_rows=500, eval_n=4, eval_temperature=0.6, passk_rows=64, passk_n=64,
                passk_temperature=1.0, max_new_tokens=96, grad_share_every=10)
# A pilot that fits a shared 2-core box in about an hour: the main pair, 2 seeds, 60 steps, smaller evaluation.
PILOT = Settings(name="pilot", folder="results/study_pilot", steps=60, arms=("grpo", "echorl"), seeds=2, test_freq=20,
                 dev_rows=128, dev_n=1, test_rows=256, ood_rows=128, eval_n=2, eval_temperature=0.6, passk_rows=32,
                 passk_n=32, passk_temperature=1.0, max_new_tokens=96, grad_share_every=5)
QUICK = Settings(name="quick", folder="results/study_quick", steps=30, arms=("grpo", "echorl"), seeds=1, test_freq=15,
                 dev_rows=64, dev_n=1, test_rows=128, ood_rows=64, eval_n=2, eval_temperature=0.6, passk_rows=16,
                 passk_n=16, passk_temperature=1.0, max_new_tokens=96, grad_share_every=5)
CONFIRM_SEEDS = tuple(range(101, 115))  # never used by any run before (results/confirm/PLAN.md)
# The confirmatory study: the full study's settings, fresh seeds, test and ood also at steps 100 and
# 125 (primary endpoint: mean test accuracy at 100/125/150), and the chain `tail` split as the ood set
# (GRPO is at floor on the 6-operation `ood` split; results/confirm/PLAN.md).
CONFIRM = Settings(name="confirm", folder="results/confirm", steps=150, arms=None, seeds=None, test_freq=25,
                   dev_rows=200, dev_n=2, test_rows=500, ood_rows=500, eval_n=4, eval_temperature=0.6, passk_rows=64,
                   passk_n=64, passk_temperature=1.0, max_new_tokens=96, grad_share_every=10, eval_steps=(100, 125),
                   ood_split="tail", seed_list=CONFIRM_SEEDS)
# The zero-variance competitors (results/confirm/PLAN_competitors.md): the confirmatory study's
# settings, seeds and results folder; only the arms differ (COMPETITOR_ARMS below).
COMPETITORS = replace(CONFIRM, name="competitors")
STUDIES = {"full": FULL, "quick": QUICK, "pilot": PILOT, "confirm": CONFIRM, "competitors": COMPETITORS}


# The confirmatory study (results/confirm/PLAN.md): fresh seeds, a dose-response of the paper preset
# on GRPO, and the clip rules at the gradient share of the highest-entropy clip at coef 3e-2 (coefs
# from `python scripts/power.py`: the shares the exploratory study measured at coef 1e-3).
NLL_FULL = ("echorl.scope=success", "echorl.per=rollout", "echorl.selector=full")
CONFIRM_ARMS: tuple[Arm, ...] = (
    Arm("grpo", OFF, None, len(CONFIRM_SEEDS), "dose", "GRPO (EchoRL off)"),
    Arm("coef_1e-3", ("echorl.coef=0.001",), "grpo", len(CONFIRM_SEEDS), "dose", "paper preset, coef 1e-3 (the paper's)"),
    Arm("coef_3e-3", ("echorl.coef=0.003",), "grpo", len(CONFIRM_SEEDS), "dose", "paper preset, coef 3e-3"),
    Arm("coef_1e-2", ("echorl.coef=0.01",), "grpo", len(CONFIRM_SEEDS), "dose", "paper preset, coef 1e-2"),
    Arm("coef_3e-2", ("echorl.coef=0.03",), "grpo", len(CONFIRM_SEEDS), "dose",
        "paper preset, coef 3e-2 (also the highest-entropy clip of the clip-rule comparison)"),
    Arm("rule_random_prefix", ("echorl.selector=random_prefix", "echorl.coef=0.043"), "coef_3e-2", len(CONFIRM_SEEDS),
        "rule", "clip ends at a random step, coef 0.043 (matched gradient share)"),
    Arm("rule_full", ("echorl.selector=full", "echorl.coef=0.057"), "coef_3e-2", len(CONFIRM_SEEDS), "rule",
        "clip = whole response (one per group), coef 0.057 (matched gradient share)"),
    Arm("rule_nll_full", NLL_FULL + ("echorl.coef=0.11",), "coef_3e-2", len(CONFIRM_SEEDS), "rule",
        "NLL of every successful rollout's full response, coef 0.11 (matched gradient share)"),
)


# The addendum of the zero-variance competitors (results/confirm/PLAN_competitors.md): the new arms only,
# in the plan's run order (the DAPO pair first, then the two rules; plan_runs interleaves each group
# seed by seed). They write to results/confirm/ next to the confirmatory arms.
COMPETITOR_ARMS: tuple[Arm, ...] = (
    Arm("dapo", DAPO + OFF, None, len(CONFIRM_SEEDS), "dapo", "DAPO: dynamic sampling + clip-higher (0.2/0.28)"),
    Arm("dapo_echorl_kf", DAPO + ("echorl.coef=0.03", "echorl.keep_filtered=true"), "dapo", len(CONFIRM_SEEDS), "dapo",
        "DAPO + EchoRL (paper preset, coef 3e-2), all-success groups kept for the EchoRL term"),
    Arm("rl_zvp", OFF + ("method.name=rl_zvp", "method.rl_zvp.alpha=0.1"), None, len(CONFIRM_SEEDS), "competitors",
        "RL-ZVP on GRPO (entropy-guided advantages on zero-variance groups, alpha 0.1)"),
    Arm("forking", OFF + ("method.name=forking", "method.forking.rho=0.2"), None, len(CONFIRM_SEEDS), "competitors",
        "forking tokens on GRPO (policy gradient of the top 20% tokens by entropy)"),
)
# The plan's shared arms: plan name -> the confirmatory arm whose results/confirm/<arm>/seed<k>.json
# runs it is (same config, same seeds: read, never re-run; positive_nll is rule_nll_full,
# tests/core/test_presets.py).
COMPETITOR_SHARED = {"grpo": "grpo", "coef_1e-3": "coef_1e-3", "coef_3e-2": "coef_3e-2", "positive_nll": "rule_nll_full"}


def get_arms(names: Sequence[str] | None = None, table: Sequence[Arm] = ARMS) -> list[Arm]:
    """Arms of ``table`` by name in table order (``None``: all). Unknown names are an error listing the
    valid ones."""
    by = {a.name: a for a in table}
    if names is None:
        return list(table)
    bad = [n for n in names if n not in by]
    if bad:
        raise ValueError(f"unknown arm(s) {bad}; valid arms: {list(by)}")
    return [a for a in table if a.name in set(names)]


def arms_of(s: Settings) -> tuple[Arm, ...]:
    """The arm table of a study: :data:`CONFIRM_ARMS` for the confirmatory study, :data:`COMPETITOR_ARMS`
    for its competitors addendum, else :data:`ARMS`."""
    return {"confirm": CONFIRM_ARMS, "competitors": COMPETITOR_ARMS}.get(s.name, ARMS)


def arm_overrides(arm: Arm, steps: int) -> list[str]:
    """The arm's overrides with ``{steps}`` filled in."""
    return [o.replace("{steps}", str(steps)) for o in arm.overrides]


def run_overrides(arm: Arm, seed: int, s: Settings, out_dir: str) -> list[str]:
    """Every override of one (arm, seed) run: the study's common ones, then the arm's."""
    val = (f"data.val_files=[{{name: dev, source: chain, group: id, num_rows: {s.dev_rows}, "
           "task_kwargs: {split: dev}}]")
    common = [f"model.name={s.model}", f"output_dir={out_dir}", "resume=auto", f"seed={seed}", f"data.seed={seed}",
              f"trainer.total_training_steps={s.steps}", "trainer.logger=[]", "trainer.make_report=false",
              f"trainer.save_freq={max(1, min(50, s.steps))}", "trainer.max_ckpt_to_keep=1",
              val, f"trainer.test_freq={s.test_freq}", "trainer.val_before_train=true",
              f"actor_rollout_ref.rollout.val_kwargs.n={s.dev_n}",
              f"actor_rollout_ref.rollout.val_kwargs.temperature={s.eval_temperature}", "data.val_batch_size=256"]
    return common + list(s.extra) + arm_overrides(arm, s.steps)


def compose(arm: Arm, seed: int, s: Settings, out_dir: str):
    """The composed engine config of one run (``load_config(..., config_name="testbed")``)."""
    from echorl.local import load_config  # Hydra loads when a run is composed, not for the report
    return load_config(run_overrides(arm, seed, s, out_dir), config_name="testbed")
