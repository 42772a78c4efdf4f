"""EchoRL for TRL users: :class:`EchoGRPOTrainer` and :class:`EchoGRPOConfig` (docs/trl.md).

``EchoGRPOTrainer`` is TRL's ``GRPOTrainer`` with the EchoRL term; ``EchoGRPOConfig`` is TRL's
``GRPOConfig`` plus the EchoRL options as ``echorl_<field>`` fields generated from
:class:`echorl.EchoConfig`. Launch it as any TRL script: ``python``, ``accelerate launch`` or
``torchrun``. Needs the ``trl`` extra: ``pip install 'echorl[trl]'``.

    python scripts/trl_grpo_chain.py --max-steps 20     # the chain testbed on CPU, TensorBoard logs
"""

from echorl.trl.config import EchoGRPOConfig
from echorl.trl.trainer import EchoGRPOTrainer, EchoStepRecord

__all__ = ["EchoGRPOConfig", "EchoGRPOTrainer", "EchoStepRecord"]
