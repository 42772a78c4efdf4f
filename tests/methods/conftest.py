"""Fixtures of the LUFFY/UFT tests; the helpers live in ``methods_support``."""

from __future__ import annotations

import pytest
from methods_support import actor_config


@pytest.fixture(scope="session")
def token_mean_actor():
    return actor_config("actor_rollout_ref.actor.loss_agg_mode=token-mean")
