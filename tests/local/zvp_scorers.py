"""Verifiers for the RL-ZVP / forking engine tests (module level, so the verifier workers can import them)."""

from __future__ import annotations


def by_answer(data_source, solution_str, answer, extra_info=None):
    """``pos``: always 1 (an all-correct group); ``neg``: always 0 (all wrong); otherwise 1 on odd lengths."""
    if answer == "pos":
        return 1.0
    if answer == "neg":
        return 0.0
    return float(len(solution_str) % 2 == 1)
