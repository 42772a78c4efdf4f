"""The controlled study of EchoRL on the chain testbed (``scripts/study.py``, docs/results.md).

* :mod:`echorl.study.arms`: the arm table (name -> engine overrides) and the study settings.
* :mod:`echorl.study.runner`: one (arm, seed) run -> one result JSON; the resume/skip plan.
* :mod:`echorl.study.gradshare`: the RL vs EchoRL gradient norms on one micro-batch.
* :mod:`echorl.study.splits`: the held-out / OOD sets, checked and hashed before the first run.
* :mod:`echorl.study.stats`: paired differences over seeds (t and bootstrap intervals).
* :mod:`echorl.study.report`: docs/results.md and its figures from a results folder alone.
"""
