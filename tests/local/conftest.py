"""Fixtures of the embedded-engine tests; the helpers live in ``engine_support``."""

from __future__ import annotations

import pytest
from engine_support import make_model


@pytest.fixture
def tiny_model():
    return make_model()
