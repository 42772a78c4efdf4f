"""method.name=rl_zvp / forking: the config node and the combination rules (echorl.methods.entropy)."""

from __future__ import annotations

import pytest
from verl.workers.config import FSDPActorConfig

from echorl.core.config import EchoConfig
from echorl.core.forking import ForkingConfig
from echorl.core.rl_zvp import RlZvpConfig
from echorl.methods.config import METHODS, MethodConfig, check_combination
from echorl.methods.entropy import method_loss
from echorl.methods.entropy_loss import EntropyMethodLoss

OFF = EchoConfig(enable=False)


def test_the_node_reads_both_methods_with_the_papers_defaults():
    assert {"rl_zvp", "forking"} <= set(METHODS)
    m = MethodConfig.from_dict({"name": "rl_zvp", "rl_zvp": {"alpha": 0.2}})
    assert m.rl_zvp_on == RlZvpConfig(alpha=0.2) and m.forking_on is None
    assert m.needs_entropy and not m.uses_expert_data
    f = MethodConfig.from_dict({"name": "forking"})
    assert f.forking_on == ForkingConfig(rho=0.2) and f.rl_zvp_on is None and RlZvpConfig().alpha == 0.1
    g = MethodConfig.from_dict(None)
    assert not g.needs_entropy and not g.uses_expert_data and g.rl_zvp_on is None
    assert MethodConfig.from_dict({"name": "luffy"}).uses_expert_data


@pytest.mark.parametrize("node, match", [
    ({"name": "forking", "forking": {"rho": 1.5}}, r"method\.forking\.rho must be a number in \(0, 1\]"),
    ({"name": "forking", "forking": {"rho": 0}}, r"method\.forking\.rho must be a number in \(0, 1\]"),
    ({"name": "rl_zvp", "rl_zvp": {"alpha": 0}}, r"method\.rl_zvp\.alpha must be > 0"),
    ({"name": "rl_zvp", "rl_zvp": {"beta": 1}}, r"method\.rl_zvp\.beta"),
    ({"name": "zvp"}, "method.name must be one of"),
])
def test_bad_values_name_their_key(node, match):
    with pytest.raises(ValueError, match=match):
        MethodConfig.from_dict(node)


def _actor(**kw):
    return FSDPActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, **kw)


def test_a_host_without_the_update_entropy_is_refused():
    for name in ("rl_zvp", "forking"):
        with pytest.raises(ValueError, match="calculate_entropy=true"):
            check_combination(MethodConfig(name=name), OFF, filter_groups=False, entropy_in_update=False)
    check_combination(MethodConfig(name="grpo"), OFF, filter_groups=True, entropy_in_update=False)  # nothing needed


def test_combinations():
    loss_mode = EchoConfig(coef=0.01)
    adv_mode = EchoConfig(mode="advantage")
    zvp, fork = MethodConfig(name="rl_zvp"), MethodConfig(name="forking")
    check_combination(zvp, loss_mode, filter_groups=False, entropy_in_update=True, actor=_actor())
    check_combination(fork, OFF, filter_groups=True, entropy_in_update=True, actor=_actor())  # DAPO base
    with pytest.raises(ValueError, match="echorl.mode=loss"):
        check_combination(zvp, adv_mode, filter_groups=False, entropy_in_update=True)
    with pytest.raises(ValueError, match="filter_groups.enable=false"):
        check_combination(zvp, OFF, filter_groups=True, entropy_in_update=True)
    for echo in (loss_mode, adv_mode):
        with pytest.raises(ValueError, match="echorl.enable=false"):
            check_combination(fork, echo, filter_groups=False, entropy_in_update=True)
    with pytest.raises(ValueError, match="entropy_coeff=0"):
        check_combination(fork, OFF, filter_groups=False, entropy_in_update=True, actor=_actor(entropy_coeff=0.01))


def test_method_loss_wraps_only_the_entropy_methods():
    def inner(*a):
        return None

    assert method_loss(inner, _actor(), MethodConfig(name="grpo"), OFF) is inner
    assert method_loss(inner, _actor(), MethodConfig(name="luffy"), OFF) is inner
    w = method_loss(inner, _actor(), MethodConfig(name="forking"), OFF)
    assert isinstance(w, EntropyMethodLoss) and w.forking == ForkingConfig() and w.rl_zvp is None and w.inner is inner
    z = method_loss(inner, _actor(), MethodConfig(name="rl_zvp"), EchoConfig(coef=0.01))
    assert z.rl_zvp == RlZvpConfig() and z.forking is None
