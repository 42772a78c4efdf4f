"""The EchoRL method as pure torch code (SPEC sections 2-3).

This package imports torch and the standard library only: no verl, no Hydra. Both hosts (the verl
integration in :mod:`echorl.verl` and the embedded engine in :mod:`echorl.local`) call it; neither
re-implements any part of it.

Shape notation, used in every docstring of the project:

* ``B``  rollouts in a batch (``B = prompts x n``),
* ``L``  response length (padded),
* ``S``  steps per response (padded to the batch maximum),
* ``E``  eligible rollouts (a subset of ``B``),
* ``V``  vocabulary size (never materialised by EchoRL).

``[B, L] float`` means a tensor of that shape with a floating dtype.
"""

from echorl.core.clips import EchoSelection, select_echo_clips
from echorl.core.config import EchoConfig
from echorl.core.loss import (
    apply_echo_advantage,
    echo_loss_term,
    echo_normalizer,
    echo_row_denominators,
)
from echorl.core.steps import auto_boundary_token_ids, segment_steps, step_aggregates

__all__ = [
    "EchoConfig",
    "EchoSelection",
    "apply_echo_advantage",
    "auto_boundary_token_ids",
    "echo_loss_term",
    "echo_normalizer",
    "echo_row_denominators",
    "segment_steps",
    "select_echo_clips",
    "step_aggregates",
]
