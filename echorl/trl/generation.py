"""Token entropy recorded while TRL samples with transformers ``generate`` (docs/trl.md, "Where the
token entropies come from").

SPEC 2.2's token entropy is the entropy of the policy's temperature-scaled next-token distribution,
``H = -sum_v p_v log p_v`` with ``p = softmax(logits / T)`` over the whole vocabulary: what TRL's
old-policy pass, verl's and the embedded engine's old-policy passes compute (before any top-k /
top-p / min-p truncation). ``generate`` evaluates exactly those logits once per sampled token, so
:class:`GenerationEntropy`, a ``LogitsProcessor`` appended to the call, reads them there and the
trainer needs no forward of its own.

Order inside ``generate`` (transformers 5.x ``_get_logits_processor``): the processors that change
the logits (repetition penalty, n-gram bans, minimum length, suppressed tokens, ...), then the
processors passed as ``logits_processor=``, then the sampling warpers (temperature, top-k, top-p,
min-p, ...). :class:`GenerationEntropy` therefore sees the model's float32 logits unchanged unless
one of :func:`logits_changing_options` is set; then it records nothing and the trainer falls back
to its forward pass, so the entropy is always the policy's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList
from trl.trainer.utils import entropy_from_logits

__all__ = ["GenerationEntropy", "logits_changing_options", "recording_generate"]


def _set(name: str, v: Any) -> bool:
    """Whether generation option ``name`` with value ``v`` makes ``generate`` add a processor that
    changes the logits before the processors passed to it."""
    if v is None or v is False:
        return False
    if name in ("repetition_penalty", "encoder_repetition_penalty", "guidance_scale"):
        return float(v) != 1.0
    if name in ("no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "min_length", "min_new_tokens"):
        return int(v) > 0
    if name in ("bad_words_ids", "sequence_bias", "suppress_tokens", "begin_suppress_tokens"):
        return len(v) > 0
    return True  # forced_bos_token_id, forced_eos_token_id, remove_invalid_values, exponential_decay_length_penalty


_CHANGING = ("repetition_penalty", "encoder_repetition_penalty", "guidance_scale", "no_repeat_ngram_size",
             "encoder_no_repeat_ngram_size", "min_length", "min_new_tokens", "bad_words_ids", "sequence_bias",
             "suppress_tokens", "begin_suppress_tokens", "forced_bos_token_id", "forced_eos_token_id",
             "remove_invalid_values", "exponential_decay_length_penalty")


def logits_changing_options(*configs: Any) -> list[str]:
    """``name=value`` of every option, in any of ``configs`` (``GenerationConfig`` or ``None``), that
    makes ``generate`` change the logits before a ``logits_processor=`` entry sees them."""
    found = []
    for cfg in configs:
        for name in _CHANGING if cfg is not None else ():
            v = getattr(cfg, name, None)
            if _set(name, v) and f"{name}={v!r}" not in found:
                found.append(f"{name}={v!r}")
    return found


class GenerationEntropy(LogitsProcessor):
    """Records ``H(softmax(scores / temperature))`` of every row at every ``generate`` step and returns
    ``scores`` unchanged (the same tensor: sampling, and the RNG, are untouched).

    One generation batch: :meth:`begin`, then one ``generate`` call (:func:`recording_generate`),
    then :meth:`result`. Cost per step: TRL's ``entropy_from_logits`` over ``[b, V]`` (its fused
    kernel on GPU, chunked ``log_softmax`` on CPU) plus one ``[b, V]`` division when ``T != 1``.

    Attributes:
        temperature: the sampling temperature.
        seconds: wall time spent in the processor since :meth:`begin` (host time: on a GPU, the
            kernels are queued, not waited for).
        refused: why the last batch has no record (``None`` while it may have one).
    """

    def __init__(self, temperature: float):
        if not temperature > 0:
            raise ValueError(f"GenerationEntropy needs a positive sampling temperature, got {temperature}")
        self.temperature = float(temperature)
        self.begin()

    def begin(self) -> None:
        """Start a generation batch (drop what the last one recorded)."""
        self._steps: list[torch.Tensor] = []
        self.calls = 0
        self.seconds = 0.0
        self.refused: str | None = None

    def refuse(self, why: str) -> None:
        """This batch will have no record (``why`` says which condition failed)."""
        self.refused = self.refused or why
        self._steps = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """``scores``: ``[b, V]`` float32 logits of the next token (``input_ids``: ``[b, t]``)."""
        if self.refused is None:
            t0 = time.perf_counter()
            z = scores if self.temperature == 1.0 else scores / self.temperature
            self._steps.append(entropy_from_logits(z).float())  # [b]
            self.seconds += time.perf_counter() - t0
        return scores

    def result(self, rows: int, width: int) -> torch.Tensor | None:
        """``[rows, width] float32``: entropy of completion token ``j`` of row ``i`` (step ``j`` of the
        one ``generate`` call), or ``None`` (then :attr:`refused` says why) when there was no single
        call, or its batch is not ``rows`` rows of at least ``width`` steps."""
        if self.refused is None and self.calls != 1:
            self.refuse(f"generate ran {self.calls} times for one generation batch (expected once: no tools, "
                        "no custom rollout function)")
        if self.refused is None and width > 0:
            if not self._steps:
                self.refuse("generate produced no step")
            else:
                got = (self._steps[0].shape[0], len(self._steps))
                if got[0] != rows or got[1] < width:
                    self.refuse(f"generate recorded {got[0]} rows x {got[1]} steps, the batch has {rows} rows x "
                                f"{width} completion tokens")
        if self.refused is not None:
            return None
        if width == 0:
            return torch.zeros(rows, 0)
        return torch.stack(self._steps[:width], dim=1)  # [rows, width]


@contextmanager
def recording_generate(model: torch.nn.Module, recorder: GenerationEntropy) -> Iterator[None]:
    """While open, ``model.generate(...)`` appends ``recorder`` to its ``logits_processor`` (after any
    the caller passes), unless :func:`logits_changing_options` of the call's ``generation_config``
    or the model's are set: then ``recorder`` refuses the batch and ``generate`` runs untouched.

    ``model`` must be the object whose ``generate`` the caller invokes (TRL: the model that
    ``unwrap_model_for_generation`` yields, ``accelerator.unwrap_model(model_wrapped)``); when it is
    not, the recorder sees no call and :meth:`GenerationEntropy.result` says so.
    """
    own = vars(model).get("generate")  # an instance attribute already there, restored afterwards
    inner = model.generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        recorder.calls += 1
        changing = logits_changing_options(kwargs.get("generation_config"), getattr(model, "generation_config", None))
        if changing:
            recorder.refuse("the generation config changes the logits before sampling (" + ", ".join(changing) +
                            "), so generate's scores are not the policy's")
            return inner(*args, **kwargs)
        procs = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
        procs.append(recorder)
        return inner(*args, logits_processor=procs, **kwargs)

    model.generate = generate
    try:
        yield
    finally:
        if own is None:
            del model.generate
        else:
            model.generate = own
