"""Shared fixtures of tests/models."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the build and the engine run: multi-threaded tiny matmuls on a shared
    2-core box are many times slower."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
