"""The embedded single-machine engine: real GRPO-family training + EchoRL in one process.

It reuses, not rewrites: verl's advantage estimators, actor config dataclass and ``ppo_loss``
(through :class:`echorl.loss.EchoLoss`), the EchoRL stage :func:`echorl.stage.run_echo_stage`
and the verifier pool :class:`echorl.rewards.pool.VerifierPool`; rollouts use transformers
``generate``. Run ``python -m echorl.local <hydra overrides>`` or ``echorl train <overrides>``;
see docs/engine.md.

    from echorl.local import load_config, train
    summary = train(load_config(["trainer.total_training_steps=20"]))
"""

from __future__ import annotations

from typing import Any

from echorl.local.config import load_config

__all__ = ["LocalTrainer", "load_config", "train"]


def __getattr__(name: str) -> Any:  # LocalTrainer imports verl (seconds): load it on first use
    if name == "LocalTrainer":
        from echorl.local.trainer import LocalTrainer  # imports verl (seconds): `import echorl.local` stays light

        return LocalTrainer
    raise AttributeError(name)


def train(cfg: Any, **kwargs: Any) -> dict[str, Any]:
    """Build a :class:`LocalTrainer` from a composed config and train; returns its summary."""
    from echorl.local.trainer import LocalTrainer  # imports verl (seconds): `import echorl.local` stays light

    return LocalTrainer(cfg, **kwargs).train()

