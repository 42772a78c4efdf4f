"""The verl host refuses an unknown algorithm.adv_estimator with the registered names, and
rollout.n=1 with a group-relative estimator for that reason (echorl/estimators.py)."""

from __future__ import annotations

import pytest
from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY
from verl_cfg_helpers import with_keys

from echorl.verl.config_checks import validate_config


def test_unknown_estimator_lists_the_registered_names(echorl_cfg):
    with pytest.raises(ValueError) as e:
        validate_config(with_keys(echorl_cfg, **{"algorithm.adv_estimator": "nope"}))
    assert "algorithm.adv_estimator='nope' is not a registered advantage estimator; valid names: " in str(e.value)
    assert all(name in str(e.value) for name in ADV_ESTIMATOR_REGISTRY)


def test_n1_refused_for_group_relative_estimators_only(echorl_cfg):
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.rollout\.n=1 leaves algorithm\.adv_estimator=rloo no group"):
        validate_config(with_keys(echorl_cfg, **{"algorithm.adv_estimator": "rloo", "actor_rollout_ref.rollout.n": 1}))
    validate_config(with_keys(echorl_cfg, **{"algorithm.adv_estimator": "reinforce_plus_plus",
                                         "actor_rollout_ref.rollout.n": 1}))
