"""Reward verifiers that run in worker processes with timeouts.

- ``echorl.rewards.pool.VerifierPool``: any picklable ``score_fn(*args) -> float`` in worker
  processes; a hang or crash scores 0.0, is counted, and never stalls training.
- ``echorl.rewards.math.compute_score``: math-verify answer checking, usable as verl's custom
  reward function (``reward.custom_reward_function.path=<file of echorl/rewards/math.py>``).

Submodules are imported lazily: ``import echorl.rewards`` does not import math-verify.
"""

from echorl.rewards.pool import STAT_KEYS, VerifierPool

__all__ = ["STAT_KEYS", "VerifierPool"]
