"""Fixtures of the analysis tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def tiny():
    """``(model, tokenizer)``: the shipped tiny model in eval mode, on one torch thread."""
    from echorl.models.tiny import load_tiny_model

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    model, tok = load_tiny_model()
    yield model.eval(), tok
    torch.set_num_threads(prev)
