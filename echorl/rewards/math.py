"""Math answer verifier on math-verify, usable as verl's custom reward function.

The rule (the paper's, Qwen2.5-Math style prompts ask for the answer "within \\boxed{}"):
score 1.0 when the **last** ``\\boxed{...}`` (or ``\\fbox{...}``) of the response is
mathematically equal to the gold answer according to ``math_verify.verify``, else 0.0. A
response without a boxed answer scores 0.0 (an unboxed "The answer is 3" does not count). The
gold answer may be bare (``\\frac{1}{2}``, ``0.5``), boxed, or a list of acceptable answers.

Every check runs in a worker process of a ``VerifierPool`` with a hard timeout, so a
pathological expression (``\\boxed{9^{9^{9^{9^{9}}}}}`` makes sympy run for minutes) cannot hang
a reward worker: it scores 0.0 and is counted. Inside the worker, math-verify's own timeouts
(``signal.alarm``) are on as a first, softer limit -- they only work in a main thread, which a
pool worker runs in, but verl calls reward functions from executor threads, where math-verify
would raise ``ValueError`` if called directly with timeouts on.

verl 0.9.1 wiring (checked in ``verl/trainer/ppo/reward.py`` and
``verl/experimental/reward_loop/reward_manager/naive.py``)::

    reward.custom_reward_function.path=pkg://echorl.rewards.math
    reward.custom_reward_function.name=compute_score

verl calls ``compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=...)``
by keyword from a thread pool, merging ``reward.custom_reward_function.reward_kwargs`` into the
keywords. Pool settings: keywords ``timeout_s`` / ``num_workers`` (taken at the first call of the
process) or environment variables ``ECHORL_VERIFY_TIMEOUT_S`` (default 10) and
``ECHORL_VERIFY_WORKERS`` (default ``min(4, cpu_count)``).

Tests: ``tests/rewards/test_math.py``.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from math_verify import parse, verify  # at module level: the pool's forkserver preloads it

from echorl.rewards.boxed import last_boxed
from echorl.rewards.pool import VerifierPool, in_verifier_worker

__all__ = ["compute_score", "compute_scores", "last_boxed", "verify_answer", "get_pool", "close_pool"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
# math-verify's own (signal-based, integer-second) limits inside the worker: parse and compare.
MV_PARSE_TIMEOUT_S = 3
MV_VERIFY_TIMEOUT_S = 3

def _gold_strings(ground_truth: Any) -> list[str]:
    items = list(ground_truth) if isinstance(ground_truth, (list, tuple)) else [ground_truth]
    out = []
    for g in items:
        if g is None:
            continue
        s = str(g).strip()
        boxed = last_boxed(s)
        out.append(boxed if boxed is not None else s)
    return [s for s in out if s]


def verify_answer(solution_str: str, ground_truth: Any) -> float:
    """1.0 if the last boxed answer of ``solution_str`` equals ``ground_truth``, else 0.0.

    Runs math-verify in the calling process (no pool): use it inside a worker, or call
    ``compute_score`` anywhere else. math-verify's signal timeouts are on only in a main thread.
    """
    answer = last_boxed(solution_str or "")
    if answer is None or not answer.strip():
        return 0.0
    golds = _gold_strings(ground_truth)
    if not golds:
        raise ValueError(f"verify_answer: empty ground truth {ground_truth!r}")
    in_main = threading.current_thread() is threading.main_thread()
    parse_t = MV_PARSE_TIMEOUT_S if in_main else None
    verify_t = MV_VERIFY_TIMEOUT_S if in_main else None
    pred = parse("\\boxed{" + answer + "}", parsing_timeout=parse_t)
    if not pred:
        return 0.0
    for gold in golds:
        gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=parse_t)
        if gold_parsed and verify(gold_parsed, pred, timeout_seconds=verify_t):
            return 1.0
    return 0.0


# ---------------------------------------------------------------------------- process pool
_pool: VerifierPool | None = None
_pool_pid: int | None = None
_pool_lock = threading.Lock()


def get_pool(timeout_s: float | None = None, num_workers: int | None = None) -> VerifierPool:
    """This process's verifier pool, created at the first call (arguments apply only then)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():  # a forked child must not reuse the parent's
            if timeout_s is None:
                timeout_s = float(os.environ.get("ECHORL_VERIFY_TIMEOUT_S", DEFAULT_TIMEOUT_S))
            if num_workers is None and os.environ.get("ECHORL_VERIFY_WORKERS"):
                num_workers = int(os.environ["ECHORL_VERIFY_WORKERS"])
            # Look the check up under its canonical name: verl may have loaded this file under
            # another module name, whose functions the workers could not unpickle.
            check = importlib.import_module("echorl.rewards.math").verify_answer
            _pool = VerifierPool(check, num_workers=num_workers, timeout_s=timeout_s,
                                 warmup_args=("\\boxed{\\frac{1}{2}}", "0.5"))
            _pool_pid = os.getpid()
        return _pool


def close_pool() -> None:
    """Stop this process's pool (a later call starts a new one)."""
    global _pool
    with _pool_lock:
        if _pool is not None and _pool_pid == os.getpid():
            _pool.close()
        _pool = None


def compute_scores(solutions: Sequence[str], ground_truths: Sequence[Any],
                   **pool_kwargs: Any) -> tuple[list[float], dict]:
    """Batch form for the embedded engine: (scores, pool stats) for aligned lists."""
    if len(solutions) != len(ground_truths):
        raise ValueError(f"compute_scores: {len(solutions)} solutions but {len(ground_truths)} ground truths")
    return get_pool(**pool_kwargs).score(list(zip(solutions, ground_truths)))


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  *, timeout_s: float | None = None, num_workers: int | None = None, **_: Any) -> float:
    """verl custom reward function: 1.0 if the last boxed answer matches ``ground_truth`` else 0.0.

    ``data_source`` and ``extra_info`` are accepted for verl's signature and not used (every
    source is scored as math). A timeout, crash or invalid result scores 0.0 and is counted in
    ``get_pool().totals``. Unknown keywords (verl adds ``reward_router_address`` and
    ``reward_model_tokenizer`` when a reward model is enabled) are ignored. Called inside a
    ``VerifierPool`` worker (the embedded engine's ``reward.score_fn``), it checks in that worker,
    under the engine pool's timeout.
    """
    if in_verifier_worker():
        return verify_answer(solution_str, ground_truth)
    scores, _stats = get_pool(timeout_s=timeout_s, num_workers=num_workers).score([(solution_str, ground_truth)])
    return scores[0]
