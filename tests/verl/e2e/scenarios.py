"""The end-to-end runs of verl's V1 loop on CPU, as one spec for :mod:`tests.verl.e2e.driver`.

Every run uses :func:`echorl.verl.cpu.smoke.cpu_overrides` (``+cpu=cpu``, the shipped tiny model,
the arithmetic data, 4 prompts x 4 rollouts in one mini-batch) and writes under ``<out>/<name>``.
Every recipe but those in :data:`NOT_RUN_END_TO_END` runs on 2 trainer ranks (:data:`RECIPE_RUNS`);
the other runs on one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from echorl.verl.cpu.smoke import SMOKE_METHOD, cpu_overrides

REPO = Path(__file__).resolve().parents[3]
RECIPES = REPO / "recipes"
PROJECT = "e2e"


def compose(entry: str, overrides: list[str]):
    """The composed config of a run: ``echorl_trainer`` for EchoRL's entry, verl's ``ppo_trainer``
    (with ``hydra.searchpath=[pkg://echorl.config]`` for ``+cpu=cpu``) for ``entry='verl'``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    if entry == "verl":
        with initialize_config_module(config_module="verl.trainer.config", version_base=None):
            return hydra_compose(config_name="ppo_trainer", overrides=["hydra.searchpath=[pkg://echorl.config]", *overrides])
    with initialize_config_module(config_module="echorl.config", version_base=None):
        return hydra_compose(config_name="echorl_trainer", overrides=overrides)


def recipe_names() -> list[str]:
    """Every recipe folder on disk (``recipes/<m>/<m>.yaml``)."""
    return sorted(p.parent.name for p in RECIPES.glob("*/*.yaml") if p.stem == p.parent.name)


# Recipes without an end-to-end run of their own (the set is the suite's critical path: each run
# costs 60-140 s of its 25-minute budget on 2 cores), with where what they add runs instead.
NOT_RUN_END_TO_END = {
    "forking": ("its loss wrapper, the update-forward entropy switch and the start-up checks are RL-ZVP's "
                "(recipe_rl_zvp runs them on 2 ranks); its token mask and kept-token normaliser run through verl's "
                "real ppo_loss on nested micro-batches in these tests",
                ("tests/test_entropy_methods.py", "tests/verl/test_entropy_methods_verl.py")),
    "positive_nll": ("recipe_grpo's run with other EchoRL options (every success whole, clip_token_mean, coef 0.1): "
                     "the recipe as launched through the verl stage on verl's stored layout, the term against "
                     "VAPO's formula on micro-batch splits, and clip_token_mean through verl's loop in the echo3 run",
                     ("tests/verl/test_trainer_stage.py", "tests/core/test_presets.py")),
}


def e2e_recipe_names() -> list[str]:
    """The recipes with an end-to-end run: every one but :data:`NOT_RUN_END_TO_END`."""
    return [m for m in recipe_names() if m not in NOT_RUN_END_TO_END]


def _run(name: str, out: Path, data: dict, steps: int, extra: list[str], entry: str = "echorl",
         pre: list[str] | None = None, trace: bool = True, prompts: int = 4) -> dict:
    over = [*(pre or []), *cpu_overrides(data, out / name, steps=steps, prompts=prompts), f"trainer.project_name={PROJECT}",
            f"trainer.experiment_name={name}", *extra]
    if trace:
        over.append(f"+echorl_trace.dir={out / name / 'trace'}")
    if entry == "verl":  # verl's own config has no echorl node
        over = [o for o in over if not o.lstrip("+").startswith("echorl")]
    return {"name": name, "entry": entry, "overrides": over}


@dataclass(frozen=True)
class RecipeRun:
    """How a recipe's end-to-end run differs from one plain step of 4 prompts x 4 rollouts."""

    steps: int = 1
    prompts: int = 4
    extra: tuple[str, ...] = ()


TWO_RANKS = "trainer.n_gpus_per_node=2"
# One row per micro-batch (no dynamic batch size): with 3 prompts x 4 rollouts, 6 rows per rank and
# 1 expert trace per group (LUFFY), the 3 expert rows split unevenly over the 2 ranks, so the ranks
# hold different numbers of micro-batches with expert rows (UFT: with hint rows, whenever the hinted
# prompts split unevenly). Every method metric must still reach verl's cross-rank aggregation with
# the same number of values from each rank.
UNEVEN_MICRO_BATCHES = ("actor_rollout_ref.actor.use_dynamic_bsz=false",
                        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
                        "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=false",
                        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
                        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2")  # UFT's KL reference

# Every recipe runs on 2 trainer ranks (FSDP2 over gloo, 2 rollout replicas), with the recipe's own
# GPU settings where CPU allows them. Where a recipe's run does more than one plain step:
# * grpo (the paper's setting) keeps the recipe's packed sequences (use_remove_padding=true, which
#   +cpu=cpu turns off) next to its dynamic batch size: docs/verl.md, "Try your config on CPU";
# * dapo runs 2 steps (dynamic sampling refills the batch from a second generation batch when
#   groups are evicted) with its overlong buffer sized to the CPU run's 48-token responses
#   (verl's DAPO reward asserts that the buffer fits inside them);
# * luffy and uft: 3 prompts, one row per micro-batch (UNEVEN_MICRO_BATCHES).
RECIPE_RUNS = {
    "grpo": RecipeRun(extra=("actor_rollout_ref.model.use_remove_padding=true",)),
    "dapo": RecipeRun(steps=2, extra=("reward.reward_kwargs.overlong_buffer_cfg.len=16",)),
    "luffy": RecipeRun(prompts=3, extra=UNEVEN_MICRO_BATCHES),
    "uft": RecipeRun(prompts=3, extra=UNEVEN_MICRO_BATCHES),
}


def recipe_run(method: str) -> RecipeRun:
    """The recipe's :class:`RecipeRun` (a plain one where :data:`RECIPE_RUNS` has none)."""
    return RECIPE_RUNS.get(method, RecipeRun())


def spec(out: Path, data: dict) -> dict:
    """All runs, in the order the driver executes them."""
    off = [o.replace("echorl.enable=true", "echorl.enable=false") for o in SMOKE_METHOD]
    runs = [
        # GRPO + EchoRL, 3 steps, checkpoint after step 2 (and after the last step), EchoClip dump every step
        _run("echo3", out, data, 3, [*SMOKE_METHOD, "trainer.save_freq=2", "echorl_dump.freq=1",
                                     f"echorl_dump.dir={out / 'echo3' / 'clips'}", "echorl_dump.max_records=64"]),
        # resumed from echo3's step-2 checkpoint: step 3 again
        _run("echo_resume", out, data, 3, [*SMOKE_METHOD, "trainer.save_freq=-1", "trainer.resume_mode=resume_path",
                                           f"trainer.resume_from_path={out / 'echo3' / 'ckpt' / 'global_step_2'}"]),
        # EchoRL off through echorl.main vs plain verl main_ppo: same seed, same settings
        _run("off_echorl", out, data, 2, [*off, "trainer.save_freq=2"], trace=False),
        _run("off_verl", out, data, 2, [*off, "trainer.save_freq=2", "actor_rollout_ref.actor.use_dynamic_bsz=true",
                                        "algorithm.adv_estimator=grpo"], entry="verl", trace=False),
        # workers that never report echo/loss: the driver must stop the run
        _run("verl_loss", out, data, 1, SMOKE_METHOD, entry="echorl_verl_loss", trace=False),
    ]
    searchpath = f"hydra.searchpath=[pkg://verl.trainer.config,file://{RECIPES}]"
    for m in e2e_recipe_names():  # only model, data and CPU overrides changed
        r = recipe_run(m)
        runs.append(_run(f"recipe_{m}", out, data, r.steps, [TWO_RANKS, *r.extra], pre=[searchpath, f"+{m}={m}"],
                         prompts=r.prompts))
    # DAPO + EchoRL with the all-success groups dynamic sampling drops kept for the EchoRL term (1 rank)
    runs.append(_run("dapo_keep", out, data, 2, [*RECIPE_RUNS["dapo"].extra, "echorl.keep_filtered=true"],
                     pre=[searchpath, "+dapo=dapo"]))
    return {"out": str(out), "num_gpus": 2, "runs": runs}
