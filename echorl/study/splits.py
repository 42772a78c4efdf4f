"""The study's held-out and OOD sets, checked and written down before any run.

The sets come from the ``chain`` task (:mod:`echorl.tasks.chain`): ``dev`` (validation during
training, tuning decisions only), ``test`` (final held-out numbers; its first ``passk_rows`` rows are
the pass@k subset) and ``ood`` (the split ``Settings.ood_split``: 6-operation chains in the
exploratory study). They are drawn from fixed seeds whatever the
run's seed, and training rows exclude every ``dev``/``test`` prompt. :func:`split_record` verifies
that for the training rows of every study seed and records a SHA-256 of each set's prompts and
answers, so a change of the task generator shows up as a changed hash (``results/study/splits.json``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from echorl.tasks import chain

__all__ = ["split_record", "rows_hash"]


def rows_hash(rows: Sequence[dict[str, Any]]) -> str:
    """SHA-256 of ``prompt\\tanswer`` lines, in order."""
    h = hashlib.sha256()
    for r in rows:
        h.update(f"{r['prompt']}\t{r['answer']}\n".encode())
    return h.hexdigest()


def split_record(s: Any, seeds: Sequence[int], train_rows: int) -> dict[str, Any]:
    """Definitions, sizes, hashes and overlap checks of the study's evaluation sets.

    Args:
        s: the study :class:`~echorl.study.arms.Settings`.
        seeds: the training seeds (``data.seed``) whose rows are checked against the held-out sets.
        train_rows: ``data.num_rows`` of training.

    Raises:
        ValueError: a training row equals a held-out prompt, or ``test`` and ``dev`` share a prompt.
    """
    ood = getattr(s, "ood_split", "ood")
    sets = {"dev": ("dev", s.dev_rows), "test": ("test", s.test_rows), "ood": (ood, s.ood_rows),
            "passk": ("test", s.passk_rows)}
    rec: dict[str, Any] = {"task": "chain", "sets": {}}
    prompts = {}
    for name, (split, n) in sets.items():
        rows = chain.generate(n, split=split)
        prompts[name] = {r["prompt"] for r in rows}
        rec["sets"][name] = {"split": split, "rows": n, "first_rows_of_fixed_split": True, "sha256": rows_hash(rows),
                             "num_ops": sorted({int(r["level"]) for r in rows})}
    full = {sp: {r["prompt"] for r in chain.generate(chain.HELDOUT_SIZE, split=sp)} for sp in ("dev", "test", ood)}
    if full["dev"] & full["test"]:
        raise ValueError("chain: the fixed dev and test splits share prompts")
    rec["dev_test_overlap"] = 0
    rec["train_overlap"] = {}
    for seed in seeds:
        train = {r["prompt"] for r in chain.generate(train_rows, seed=seed, split="train")}
        bad = {sp: len(train & p) for sp, p in full.items()}
        if any(bad.values()):
            raise ValueError(f"chain: training rows of data.seed={seed} overlap held-out splits: {bad}")
        rec["train_overlap"][str(seed)] = bad
    rec["train_rows"] = train_rows
    return rec
