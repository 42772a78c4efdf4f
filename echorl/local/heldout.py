"""Validation during training in the embedded engine (docs/evaluation.md, "Validation").

Every ``trainer.test_freq`` steps, at the last step, and before training when
``trainer.val_before_train`` (fresh runs only; logged at step 0 as verl does), the current policy is
evaluated on the held-out benchmarks of ``data.val_files`` by **the evaluation code itself**:
:func:`echorl.eval.run.evaluate` with a :class:`echorl.eval.backends.TransformersBackend` on the
in-memory model. Sampling comes from ``actor_rollout_ref.rollout.val_kwargs`` (verl's keys ``n``,
``temperature``, ``top_p``, ``do_sample``), ``data.max_response_length`` and the run's ``seed``
(the same seed at every validation; the training RNG state is not touched).

Metric names follow verl 0.9.1's scheme (``process_validation_metrics`` / ``_val_metrics_update``:
``val-core/<data_source>/<var>/<metric>``, core = the largest n, the rest ``val-aux``), with the
benchmark name in the data-source slot, ``reward`` as the variable and the estimators of
:mod:`echorl.eval.metrics` (exact, not bootstrapped)::

    val-core/<bench>/reward/mean@n       mean score of the n samples (verl's mean@N)
    val-core/<bench>/reward/pass@n       unbiased pass@n            (n > 1)
    val-core/<bench>/reward/maj@n        majority vote of the n     (n > 1)
    val-aux/<bench>/reward/pass@k, maj@k (k < n), val-aux/<bench>/reward/{timeouts,crashes}
    val-aux/<bench>/response_length/{mean,clip_ratio}
    val-core/macro_<group>/reward/...    unweighted mean over the group's benchmarks (and macro_all)

Each validation also writes ``<output_dir>/validation/step_<k>/`` (``samples.jsonl`` and the
summary files of ``echorl eval``), from which every logged number can be recomputed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from echorl.eval.backends import SamplingSettings, TransformersBackend
from echorl.eval.benchmarks import load_rows, prompt_ids, specs_from_config
from echorl.eval.run import evaluate, make_pool, write_outputs

__all__ = ["Validator", "make_validator", "validation_metrics"]


def validation_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """verl-style ``val-core`` / ``val-aux`` keys of an :func:`echorl.eval.run.summarize` summary."""
    out: dict[str, float] = {}
    entries = [(name, b) for name, b in summary["benchmarks"].items()]
    entries += [(f"macro_{tag}", g) for tag, g in summary["groups"].items()]
    for name, b in entries:
        n = int(b["n"]) if "n" in b else int(next(k for k in b if k.startswith("avg@")).split("@")[1])
        out[f"val-core/{name}/reward/mean@{n}"] = float(b["mean_score"])
        for kind in ("pass", "maj"):
            for key, v in b.items():
                if key.startswith(f"{kind}@"):
                    k = int(key.split("@")[1])
                    if k == n and n == 1:
                        continue  # pass@1 / maj@1 of one sample: mean@1 already says it
                    out[f"{'val-core' if k == n else 'val-aux'}/{name}/reward/{key}"] = float(v)
        out[f"val-aux/{name}/response_length/mean"] = float(b["mean_tokens"])
        out[f"val-aux/{name}/response_length/clip_ratio"] = float(b["truncated"])
        for key in ("timeouts", "crashes"):
            if key in b:
                out[f"val-aux/{name}/reward/{key}"] = float(b[key])
    return out


class Validator:
    """Held-out evaluation of the engine's policy (built by :func:`make_validator`)."""

    def __init__(self, cfg: DictConfig, tokenizer: Any, out_dir: str | Path):
        vk = cfg.actor_rollout_ref.rollout.val_kwargs
        top_k = int(vk.get("top_k", -1))
        if top_k not in (-1, 0):
            raise ValueError(f"actor_rollout_ref.rollout.val_kwargs.top_k={top_k}: validation samples without top-k; "
                             "set it to -1")
        do_sample = bool(vk.get("do_sample", True))
        try:
            self.sampling = SamplingSettings(n=int(vk.n), temperature=float(vk.temperature) if do_sample else 0.0,
                                             top_p=float(vk.top_p), max_new_tokens=int(cfg.data.max_response_length),
                                             seed=int(cfg.seed))
        except ValueError as e:
            raise ValueError(f"actor_rollout_ref.rollout.val_kwargs: {e}") from None
        entries = OmegaConf.to_container(cfg.data.val_files, resolve=True)
        self.benchmarks = [(s, load_rows(s)) for s in specs_from_config(entries, "data.val_files")]
        self.chat_template = cfg.data.chat_template
        for spec, rows in self.benchmarks:  # fail at start-up, not at the first validation
            prompt_ids(tokenizer, rows, self.chat_template, int(cfg.data.max_prompt_length),
                       where=f"data.val_files benchmark {spec.name!r} (limit data.max_prompt_length)")
        self.tok, self.out = tokenizer, Path(out_dir) / "validation"
        self.test_freq = int(cfg.trainer.test_freq)
        self.before_train = bool(cfg.trainer.val_before_train)
        self.batch_size = int(cfg.data.val_batch_size)
        self.num_workers, self.timeout_s = int(cfg.reward.num_workers), float(cfg.reward.timeout_s)
        self.pool = None

    def due(self, step: int, total: int) -> bool:
        """Validate after ``step``: every ``test_freq`` steps and at the last step (as verl)."""
        return self.test_freq > 0 and (step % self.test_freq == 0 or step == total)

    def run(self, model: Any, step: int) -> dict[str, float]:
        """Evaluate ``model`` now; write ``validation/step_<step>/`` and return the val-* metrics."""
        if self.pool is None:
            self.pool = make_pool(self.num_workers, self.timeout_s)
        backend = TransformersBackend(model, self.tok, batch_size=self.batch_size)
        samples, summary = evaluate(backend, self.tok, self.benchmarks, self.sampling, self.pool,
                                    chat_template=self.chat_template)
        settings = {"step": step, "n": self.sampling.n, "temperature": self.sampling.temperature,
                    "top_p": self.sampling.top_p, "max_new_tokens": self.sampling.max_new_tokens,
                    "seed": self.sampling.seed, "batch_size": self.batch_size}
        write_outputs(self.out / f"step_{step}", samples, summary, settings)
        return validation_metrics(summary)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def make_validator(cfg: DictConfig, tokenizer: Any, out_dir: str | Path) -> Validator | None:
    """A :class:`Validator` when ``data.val_files`` lists benchmarks, else None.

    Raises:
        ValueError: ``trainer.test_freq > 0`` with an empty ``data.val_files``.
    """
    files = cfg.data.get("val_files") or []
    if not files:
        if int(cfg.trainer.get("test_freq", -1)) > 0:
            raise ValueError(f"trainer.test_freq={cfg.trainer.test_freq} but data.val_files is empty; list held-out "
                             "benchmarks (e.g. data.val_files=[arithmetic]) or set trainer.test_freq=-1")
        return None
    return Validator(cfg, tokenizer, out_dir)
