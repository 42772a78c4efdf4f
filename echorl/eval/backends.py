"""Generation backends of the evaluation: transformers (CPU / CUDA) and vLLM (optional).

Both return, for each prompt, ``n`` :class:`Completion` s (text, generated token count, whether
it ended with EOS), so the rest of the evaluation does not know which one ran.

* :class:`TransformersBackend` wraps an in-memory model (the engine's policy during validation, or
  a loaded checkpoint): prompts are left-padded, each repeated ``n`` times consecutively, and
  ``model.generate`` (:func:`echorl.generation.generate_left_padded`) runs on ``batch_size`` rows
  at a time (``temperature=0``: greedy). Sampling is seeded once per ``generate`` call inside
  ``torch.random.fork_rng``, so the caller's RNG state (a training run's) is untouched and the
  same seed, model and batch size give the same samples.
* :class:`VLLMBackend` (GPU): ``vllm.LLM`` on a Hugging Face folder; vLLM is imported only when
  this backend is built, with an error naming the fix when it is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from echorl.generation import eos_ids_of, generate_left_padded

__all__ = ["Completion", "SamplingSettings", "TransformersBackend", "VLLMBackend", "make_backend"]


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling of the evaluation (defaults: the paper's protocol, docs/evaluation.md)."""

    n: int = 4
    temperature: float = 0.6
    top_p: float = 1.0
    max_new_tokens: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n (samples per problem) must be an int >= 1, got {self.n!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if self.temperature == 0 and self.n > 1:
            raise ValueError(f"temperature=0 (greedy) gives {self.n} identical samples; use n=1 or temperature > 0")


@dataclass(frozen=True)
class Completion:
    """One sampled response: decoded text (special tokens skipped), token count, ended with EOS."""

    text: str
    num_tokens: int
    finished: bool


class TransformersBackend:
    """Batched ``model.generate`` with left padding.

    Args:
        model: a causal LM (``transformers``), on any device.
        tokenizer: its tokenizer (EOS and pad ids are read from it and the generation config).
        batch_size: rows (prompt x sample) per ``generate`` call.
    """

    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 64):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.model, self.tok, self.batch_size = model, tokenizer, batch_size
        self.eos_ids = eos_ids_of(tokenizer, model)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    def _generate_rows(self, ids: list[list[int]], s: SamplingSettings) -> list[Completion]:
        """``ids``: ``[b]`` prompt token lists (already repeated) -> ``[b]`` completions."""
        gen = generate_left_padded(self.model, ids, eos_ids=self.eos_ids, pad_id=self.pad_id,
                                   max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p)
        responses, mask = gen.responses, gen.response_mask  # [b, L]; mask 1 up to and including EOS
        lens = mask.sum(-1).tolist()
        is_eos = torch.isin(responses, torch.tensor(self.eos_ids))
        texts = self.tok.batch_decode([r[:k] for r, k in zip(responses.tolist(), lens)], skip_special_tokens=True)
        return [Completion(t, int(k), bool(k > 0 and is_eos[i, k - 1])) for i, (t, k) in enumerate(zip(texts, lens))]

    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[Sequence[int]], s: SamplingSettings) -> list[list[Completion]]:
        """``[N]`` prompts (token ids) -> ``[N][n]`` completions; rows of one prompt are consecutive."""
        rows = [list(p) for p in prompt_ids for _ in range(s.n)]
        was_training = self.model.training
        self.model.eval()
        flat: list[Completion] = []
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(s.seed)
                for i in range(0, len(rows), self.batch_size):
                    flat.extend(self._generate_rows(rows[i:i + self.batch_size], s))
        finally:
            self.model.train(was_training)
        return [flat[j * s.n:(j + 1) * s.n] for j in range(len(prompt_ids))]


class VLLMBackend:
    """``vllm.LLM`` on a Hugging Face model folder (GPU; same output as :class:`TransformersBackend`)."""

    name = "vllm"

    def __init__(self, model_dir: str, tokenizer: Any, **llm_kwargs: Any):
        try:
            import vllm
        except ImportError as e:
            raise ImportError(
                "--backend vllm needs the vllm package (GPU): pip install 'echorl[gpu]' (or vllm), or use "
                f"--backend transformers; import failed with: {e}") from None
        self._vllm, self.tok = vllm, tokenizer
        self.llm = vllm.LLM(model=str(model_dir), **llm_kwargs)

    def generate(self, prompt_ids: Sequence[Sequence[int]], s: SamplingSettings) -> list[list[Completion]]:
        params = self._vllm.SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p,
                                           max_tokens=s.max_new_tokens, seed=s.seed, skip_special_tokens=True)
        prompts = [{"prompt_token_ids": list(p)} for p in prompt_ids]
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        return [[Completion(o.text, len(o.token_ids), o.finish_reason == "stop") for o in req.outputs] for req in outs]


def make_backend(name: str, model: Any, tokenizer: Any, model_dir: str | None, batch_size: int) -> Any:
    """``transformers`` (in-memory model) or ``vllm`` (needs ``model_dir``, a Hugging Face folder)."""
    if name == "transformers":
        return TransformersBackend(model, tokenizer, batch_size=batch_size)
    if name == "vllm":
        if model_dir is None:
            raise ValueError("--backend vllm needs a Hugging Face folder; convert an engine checkpoint first with "
                             "`echorl export CKPT OUT_DIR`")
        return VLLMBackend(model_dir, tokenizer)
    raise ValueError(f"--backend must be transformers or vllm, got {name!r}")
