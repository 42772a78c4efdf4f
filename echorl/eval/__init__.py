"""Evaluation of policies: ``echorl eval``, ``echorl eval compare``, ``echorl export`` (docs/evaluation.md).

* :mod:`echorl.eval.metrics`     avg@n, unbiased pass@k, maj@k (pure functions)
* :mod:`echorl.eval.graders`     math-verify, exact task verifiers, multiple choice
* :mod:`echorl.eval.backends`    transformers (CPU/CUDA) and vLLM generation
* :mod:`echorl.eval.benchmarks`  benchmark specs (``NAME=SOURCE[:GROUP]``, YAML, engine config) and rows
* :mod:`echorl.eval.run`         evaluate -> per-sample records -> summary (JSON, CSV, markdown)
* :mod:`echorl.eval.compare`     paired per-problem differences with a seeded bootstrap
* :mod:`echorl.eval.export`      export an engine checkpoint to a Hugging Face folder (loading:
  :func:`echorl.models.loading.load_policy`)

The embedded engine's validation (``echorl.local.heldout``) calls :func:`echorl.eval.run.evaluate`.
"""

from echorl.eval.metrics import avg_at_k, ks_for, maj_at_k, majority_vote, pass_at_k, problem_metrics

__all__ = ["avg_at_k", "ks_for", "maj_at_k", "majority_vote", "pass_at_k", "problem_metrics"]
