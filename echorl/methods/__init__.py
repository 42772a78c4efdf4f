"""Base methods that mix expert data into RLVR: LUFFY (off-policy expert traces in each group) and UFT
(annealed hint prefixes of the expert solution). docs/method.md, "Base methods: LUFFY and UFT".

The host-neutral parts, shared by both hosts; each host's adaptor lives in the host.

* :mod:`echorl.methods.config`: the ``method:`` config node (:class:`MethodConfig`).
* :mod:`echorl.methods.luffy`: mixed groups, the shaped off-policy term, :class:`MethodLoss`.
* :mod:`echorl.methods.uft`: the hint schedule, hint sampling, the hint log-likelihood term.
* :mod:`echorl.methods.entropy`: ``method.name=rl_zvp`` / ``forking`` (no expert data: the loss
  wrapper and the ``zvp_sign`` field both hosts use; docs/methods.md, "The zero-variance competitors").
* :mod:`echorl.local.methods`: the embedded engine's step hooks (rollout rewrite, EchoRL mask).
* :mod:`echorl.verl` ``.luffy`` / ``.uft``: verl 0.9 agent loops and driver hooks.
"""

from echorl.methods.config import LuffyConfig, MethodConfig, UftConfig

__all__ = ["LuffyConfig", "MethodConfig", "UftConfig"]
