"""The names of the metrics EchoRL logs, one place for every host (verl, the engine, TRL).

Every name is a constant here with one line of meaning (:data:`MEANING`); the hosts and the
readers (study, demo, analysis) use the constants. The names follow verl's conventions, so runs of
different hosts line up on one dashboard:

* ``echo/*``: the EchoRL stage and loss, logged by the driver (both hosts, same names and meaning);
* ``actor/*``: what the actor loss reports, prefixed as verl's ``rename_dict(metrics, "actor/")``
  does (:func:`actor_metric_name`), except ``echo/loss``, which stays with the stage's metrics, and
  the study's gradient measurements ``study/*`` (engine only, :mod:`echorl.study.gradshare`);
* ``timing_s/*``: seconds per step (verl writes ``timing_raw[name]`` as ``timing_s/<name>``);
* ``luffy/*``, ``uft/*``: the driver side of LUFFY / UFT.

``echo/loss`` is logged only when the EchoRL term is trained (``echorl.enable``, ``mode=loss``,
``coef > 0``), on every host; a step without it did not train the term.

Engine runs written before the names were unified used a few other names (``timing/*``, the loss
metrics without ``actor/``): :data:`OLD_NAMES` maps them to the current ones and :func:`canonical`
renames a ``metrics.jsonl`` row, so readers accept both.

The TRL host logs the same ``echo/*`` and ``timing_s/echo`` names into TRL's own metrics, plus
``echo/entropy_pass``, ``echo/entropy_from_generation`` and the timings of its entropy source
(``timing_s/echo_entropy_pass``, ``timing_s/echo_generation_entropy``).

This module is distinct from :mod:`echorl.metrics_file`, which reads a run's ``metrics.jsonl``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["ACTOR_PREFIX", "ECHO_PREFIX", "MEANING", "OLD_NAMES", "STAGE", "TIMING_PREFIX", "actor_metric_name",
           "canonical", "echorl_keys", "timing_name"]

ECHO_PREFIX = "echo/"
ACTOR_PREFIX = "actor/"
STUDY_PREFIX = "study/"  # the study's measurements, reported through the engine's loss (never on verl)
TIMING_PREFIX = "timing_s/"

# ------------------------------------------------------------------ the stage (echorl.stage.run_echo_stage)
GROUPS_ALL_SUCCESS_FRAC = "echo/groups_all_success_frac"
GROUPS_ALL_FAIL_FRAC = "echo/groups_all_fail_frac"
GROUPS_MIXED_FRAC = "echo/groups_mixed_frac"
GROUPS_ZERO_VAR_FRAC = "echo/groups_zero_var_frac"
GROUPS_DEGENERATE_SUCCESS_FRAC = "echo/groups_degenerate_success_frac"
ELIGIBLE_ROLLOUTS = "echo/eligible_rollouts"
CLIPS = "echo/clips"
CLIP_TOKENS = "echo/clip_tokens"
CLIP_LEN_FRAC = "echo/clip_len_frac"
CLIP_END_STEP = "echo/clip_end_step"
NUM_STEPS = "echo/num_steps"
CLIP_END_STEP_REL = "echo/clip_end_step_rel"
PEAK_H = "echo/peak_h"
CLIPS_FROM_ALL_SUCCESS = "echo/clips_from_all_success"
CLIPS_FROM_MIXED = "echo/clips_from_mixed"
STEPS_PER_RESPONSE = "echo/steps_per_response"
SINGLE_STEP_FRAC = "echo/single_step_frac"
GRAD_TOKEN_FRAC_BASE = "echo/grad_token_frac_base"
GRAD_TOKEN_FRAC_ECHO = "echo/grad_token_frac_echo"
ACTIVE = "echo/active"
DENOM = "echo/denom"
KEPT_ROWS = "echo/kept_rows"
KEPT_CLIP_TOKENS = "echo/kept_clip_tokens"
CLIPS_FROM_KEPT = "echo/clips_from_kept"
SINGLE_STEP_WARNING = "echo/single_step_warning"  # only on the step the warning fires
NO_BOUNDARY_WARNING = "echo/no_boundary_warning"  # only on the step the warning fires
# ------------------------------------------------------------------ the hosts' trainers and the loss
NUM_MINIBATCHES = "echo/num_minibatches"
LOSS = "echo/loss"
KEPT_PADDING_ROWS = "echo/kept_padding_rows"
ENTROPY_PASS = "echo/entropy_pass"
ENTROPY_FROM_GENERATION = "echo/entropy_from_generation"
TIMING_ECHO = "timing_s/echo"
TIMING_ECHO_ENTROPY_PASS = "timing_s/echo_entropy_pass"
TIMING_ECHO_GENERATION_ENTROPY = "timing_s/echo_generation_entropy"
# ------------------------------------------------------------------ LUFFY / UFT (driver, then actor loss)
LUFFY_TRACE_FRAC = "luffy/trace_frac"
UFT_TRACE_FRAC = "uft/trace_frac"
LUFFY_PROMPTS_WITH_TRACE = "luffy/prompts_with_trace"
LUFFY_OFF_POLICY_ROWS = "luffy/off_policy_rows"
UFT_HINT_PROB = "uft/hint_prob"
UFT_HINTED_PROMPTS = "uft/hinted_prompts"
UFT_HINT_TOKENS = "uft/hint_tokens"
LUFFY_OFF_PG_LOSS = "luffy/off_pg_loss"  # as the loss names it; logged as actor/luffy/off_pg_loss
LUFFY_OFF_PROB_SUM = "luffy/off_prob_sum"
LUFFY_OFF_TOKENS = "luffy/off_tokens"
LUFFY_OFF_PROB = "luffy/off_prob"  # off_prob_sum / off_tokens after aggregation; logged as actor/luffy/off_prob
UFT_HINT_NLL = "uft/hint_nll"
# ------------------------------------------------------------------ RL-ZVP / forking tokens (actor loss)
RL_ZVP_POS_FRAC = "rl_zvp/pos_frac"  # as the loss names it; logged as actor/rl_zvp/pos_frac
RL_ZVP_NEG_FRAC = "rl_zvp/neg_frac"
FORKING_KEPT_FRAC = "forking/kept_frac"

MEANING: dict[str, str] = {
    GROUPS_ALL_SUCCESS_FRAC: "share of groups whose rollouts all reached the success threshold",
    GROUPS_ALL_FAIL_FRAC: "share of groups whose rollouts all failed",
    GROUPS_MIXED_FRAC: "share of groups with both successes and failures",
    GROUPS_ZERO_VAR_FRAC: "share of groups whose scores are all equal (no GRPO gradient)",
    GROUPS_DEGENERATE_SUCCESS_FRAC: "share of groups that are all-success and zero-variance (EchoRL's source)",
    ELIGIBLE_ROLLOUTS: "rollouts the selector may clip (successful, in an eligible group, not ignored)",
    CLIPS: "EchoClips selected this step (one per clipped rollout at most)",
    CLIP_TOKENS: "response tokens inside EchoClips",
    CLIP_LEN_FRAC: "mean over clips of clip length / response length",
    CLIP_END_STEP: "mean over clips of the reasoning step the clip ends at (0-based)",
    NUM_STEPS: "mean over clips of the reasoning steps of the clipped response",
    CLIP_END_STEP_REL: "mean over clips of (clip end step + 1) / steps of the response",
    PEAK_H: "mean over clips of the highest step-entropy aggregate of the clipped response",
    CLIPS_FROM_ALL_SUCCESS: "clips taken from all-success groups",
    CLIPS_FROM_MIXED: "clips taken from mixed groups",
    STEPS_PER_RESPONSE: "mean reasoning steps of the eligible rollouts",
    SINGLE_STEP_FRAC: "share of eligible rollouts with one reasoning step (no boundary found)",
    GRAD_TOKEN_FRAC_BASE: "share of valid response tokens with a non-zero base advantage",
    GRAD_TOKEN_FRAC_ECHO: "share of valid response tokens carrying gradient once clip tokens are added",
    ACTIVE: "1 when the selection reaches training (echorl.enable), 0 when it is only reported",
    DENOM: "the EchoRL loss normaliser D of the step",
    KEPT_ROWS: "rows kept for the EchoRL term only (echorl.keep_filtered)",
    KEPT_CLIP_TOKENS: "clip tokens in the kept rows",
    CLIPS_FROM_KEPT: "clips taken from the kept rows",
    NUM_MINIBATCHES: "optimizer steps of the actor update the normaliser divides by",
    LOSS: "L_echo of the actor update (logged only when the EchoRL term is trained)",
    SINGLE_STEP_WARNING: "1 on the step the stage warned that most successful responses are one step",
    NO_BOUNDARY_WARNING: "1 on the step the stage warned that no response holds a boundary token",
    KEPT_PADDING_ROWS: "padding rows added to deal the kept rows over verl's ranks (verl only)",
    ENTROPY_PASS: "1 when the host made an extra no-grad forward for the entropy (TRL only)",
    ENTROPY_FROM_GENERATION: "1 when the entropies were recorded during generation (TRL only)",
    TIMING_ECHO: "seconds of the EchoRL stage (inputs, selection, write-back)",
    TIMING_ECHO_ENTROPY_PASS: "seconds of the host's extra no-grad entropy forward (TRL only)",
    TIMING_ECHO_GENERATION_ENTROPY: "seconds spent recording entropies during generation (TRL only)",
    LUFFY_TRACE_FRAC: "share of the step's prompts with an expert trace (LUFFY)",
    UFT_TRACE_FRAC: "share of the step's prompts with an expert trace (UFT)",
    LUFFY_PROMPTS_WITH_TRACE: "prompts of the step with an expert trace (LUFFY)",
    LUFFY_OFF_POLICY_ROWS: "rows holding an expert trace (LUFFY)",
    UFT_HINT_PROB: "the hint probability of the cosine schedule at this step (UFT)",
    UFT_HINTED_PROMPTS: "prompts given a non-empty hint (UFT)",
    UFT_HINT_TOKENS: "response tokens that are hint tokens (UFT)",
    ACTOR_PREFIX + LUFFY_OFF_PG_LOSS: "LUFFY's off-policy policy-gradient loss",
    ACTOR_PREFIX + LUFFY_OFF_PROB_SUM: "sum of the policy's probabilities of the expert tokens",
    ACTOR_PREFIX + LUFFY_OFF_TOKENS: "expert tokens of the update",
    ACTOR_PREFIX + LUFFY_OFF_PROB: "mean probability the policy gives the expert tokens (off_prob_sum / off_tokens)",
    ACTOR_PREFIX + UFT_HINT_NLL: "UFT's NLL of the hint tokens",
    ACTOR_PREFIX + RL_ZVP_POS_FRAC: "share of the update's rows from all-correct groups (RL-ZVP's alpha * H advantages)",
    ACTOR_PREFIX + RL_ZVP_NEG_FRAC: "share of the update's rows from all-wrong groups (RL-ZVP's -alpha * (max H - H))",
    ACTOR_PREFIX + FORKING_KEPT_FRAC: "share of the update's valid response tokens kept by the forking-token rule",
}

# The stage's keys (echorl.stage.run_echo_stage; the echo/kept_* ones only with keep_filtered rows).
STAGE = (GROUPS_ALL_SUCCESS_FRAC, GROUPS_ALL_FAIL_FRAC, GROUPS_MIXED_FRAC, GROUPS_ZERO_VAR_FRAC,
         GROUPS_DEGENERATE_SUCCESS_FRAC, ELIGIBLE_ROLLOUTS, CLIPS, CLIP_TOKENS, CLIP_LEN_FRAC, CLIP_END_STEP, NUM_STEPS,
         CLIP_END_STEP_REL, PEAK_H, CLIPS_FROM_ALL_SUCCESS, CLIPS_FROM_MIXED, STEPS_PER_RESPONSE, SINGLE_STEP_FRAC,
         GRAD_TOKEN_FRAC_BASE, GRAD_TOKEN_FRAC_ECHO, ACTIVE, DENOM)

# old name -> current name, for metrics.jsonl rows written before the names were unified
OLD_NAMES: dict[str, str] = {
    "timing/gen": "timing_s/gen",
    "timing/reward": "timing_s/reward",
    "timing/old_log_prob": "timing_s/old_log_prob",
    "timing/adv": "timing_s/adv",
    "timing/echo": TIMING_ECHO,
    "timing/update": "timing_s/update_actor",
    "timing/step": "timing_s/step",
    LUFFY_OFF_PG_LOSS: ACTOR_PREFIX + LUFFY_OFF_PG_LOSS,
    LUFFY_OFF_PROB_SUM: ACTOR_PREFIX + LUFFY_OFF_PROB_SUM,
    LUFFY_OFF_TOKENS: ACTOR_PREFIX + LUFFY_OFF_TOKENS,
    UFT_HINT_NLL: ACTOR_PREFIX + UFT_HINT_NLL,
}


def timing_name(name: str) -> str:
    """``timing_s/<name>``: the key verl gives ``timing_raw[name]`` (seconds)."""
    return TIMING_PREFIX + name


def actor_metric_name(key: str) -> str:
    """The logged name of a metric the actor loss reports: verl's ``rename_dict(metrics, "actor/")``
    (``actor/`` added unless present), except :data:`LOSS`, which keeps its ``echo/`` name, and the
    study's ``study/*`` measurements."""
    if key == LOSS or key.startswith((ACTOR_PREFIX, STUDY_PREFIX)):
        return key
    return ACTOR_PREFIX + key


def canonical(row: Mapping[str, Any]) -> dict[str, Any]:
    """A ``metrics.jsonl`` row with old names (:data:`OLD_NAMES`) renamed; a current name present
    in the row wins over its old one."""
    return {OLD_NAMES.get(k, k): v for k, v in row.items() if k not in OLD_NAMES or OLD_NAMES[k] not in row}


def echorl_keys(keys: Iterable[str]) -> set[str]:
    """The EchoRL names among ``keys``: ``echo/*``, ``timing_s/echo*``, ``luffy/*``, ``uft/*`` and
    their ``actor/`` forms (what a host must log identically)."""
    own = (ECHO_PREFIX, TIMING_ECHO, "luffy/", "uft/", ACTOR_PREFIX + "luffy/", ACTOR_PREFIX + "uft/")
    return {k for k in keys if k.startswith(own)}
