"""EchoRL: Reinforcement Learning via Rollout Echoing (arXiv 2605.31228).

From the verified-success rollouts of each group, EchoRL takes one *EchoClip* -- the prefix ending at
the highest-entropy reasoning step -- and adds its NLL as a small auxiliary term to the RL loss
(preset ``paper``; preset ``degenerate`` restricts it to all-success groups, whose group-relative
advantages are all 0).

Public API (SPEC 3)::

    from echorl import EchoConfig, select_echo_clips
    cfg = EchoConfig().resolve_boundary(tokenizer)  # steps end at every token whose text ends with a newline
    sel = select_echo_clips(responses, response_mask, entropy, scores, group_ids, cfg)
    sel.mask     # [B, L] bool EchoClip tokens
    sel.metrics  # echo/* scalars
"""

from echorl.core import (
    EchoConfig,
    EchoSelection,
    apply_echo_advantage,
    auto_boundary_token_ids,
    echo_loss_term,
    echo_normalizer,
    echo_row_denominators,
    segment_steps,
    select_echo_clips,
    step_aggregates,
)
from echorl.stage import EchoStageOutput, run_echo_stage

__version__ = "0.1.0"

__all__ = [
    "EchoConfig",
    "EchoSelection",
    "EchoStageOutput",
    "apply_echo_advantage",
    "auto_boundary_token_ids",
    "echo_loss_term",
    "echo_normalizer",
    "echo_row_denominators",
    "run_echo_stage",
    "segment_steps",
    "select_echo_clips",
    "step_aggregates",
]
