"""Module-level verifiers for the engine tests (picklable by reference for VerifierPool workers).

All take verl's custom reward signature ``(data_source, solution_str, answer, extra_info)``.
"""

import time


def always_one(data_source, solution_str, answer, extra_info=None):
    """Every rollout succeeds: every group is advantage-degenerated (all advantages 0)."""
    return 1.0


def len_mod4(data_source, solution_str, answer, extra_info=None):
    """Success unless the response length is a multiple of 4: mixed and all-success groups."""
    return float(len(solution_str) % 4 != 0)


def hang_on_even(data_source, solution_str, answer, extra_info=None):
    """Hangs (past any timeout) on responses of even length, succeeds on the others."""
    if len(solution_str) % 2 == 0:
        time.sleep(60)
    return 1.0
