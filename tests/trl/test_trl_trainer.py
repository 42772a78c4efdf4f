"""EchoGRPOTrainer against TRL's own GRPOTrainer on the chain testbed (real TRL loop, tiny-chain model).

* EchoRL off, or on with coef 0: the weights after 3 optimizer steps are bit-identical to
  GRPOTrainer's at the same seed, both where TRL makes an old-policy pass (steps_per_generation=2,
  EchoRL reads its entropies) and where it does not (on-policy, EchoRL makes its own no-grad pass).
* EchoRL on: the token entropy the selection read is the entropy of the sampling distribution
  (checked against a plain forward), and the ``echo/loss`` the trainer logs is the clip NLL
  computed independently from the step's stored tensors.
* ``mode='advantage'``: the buffered advantages carry ``adv_coef`` on clip tokens.

Cost: about 8 short trainings (one to three optimizer steps of 8 rollouts each).
"""

from __future__ import annotations

import pytest
import torch
from trl import GRPOConfig, GRPOTrainer
from trl_support import N_GEN, all_success, plain_logprobs_entropy, run

from echorl.trl import EchoGRPOConfig, EchoGRPOTrainer
from echorl.trl.testbed import load_chain_model

SETTINGS = {"reuse": dict(steps_per_generation=2), "on_policy": dict(steps_per_generation=1)}


@pytest.mark.slow
@pytest.mark.parametrize("setting,echo", [("reuse", dict(echorl_enable=False)), ("on_policy", dict(echorl_coef=0.0))],
                         ids=["reuse-enable_false", "on_policy-coef_0"])
def test_off_trains_bit_identically_to_grpo_trainer(tmp_path, setting, echo):
    kw = dict(SETTINGS[setting], max_steps=3)
    ref = run(GRPOTrainer, GRPOConfig, str(tmp_path / "trl"), **kw)
    ours = run(EchoGRPOTrainer, EchoGRPOConfig, str(tmp_path / "echo"), **kw, **echo)
    a, b = ref.model.state_dict(), ours.model.state_dict()
    assert a.keys() == b.keys()
    init = load_chain_model()[0].state_dict()
    changed = [k for k in a if not torch.equal(a[k], init[k])]
    assert changed  # training moved the weights
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    # the selection still ran and was reported (what EchoRL would echo), and no echo term was added
    hist = ours.state.log_history
    assert any(h.get("echo/active") == 0.0 and "echo/clips" in h for h in hist)
    assert not any("echo/loss" in h for h in hist)
    assert ours.echo_last.entropy_pass == (setting == "on_policy")
    assert [h.get("loss") for h in ref.state.log_history] == [h.get("loss") for h in hist]


@pytest.mark.parametrize("setting", ["on_policy", "reuse"])
def test_logged_echo_loss_is_the_clip_nll_of_the_step(tmp_path, setting):
    """One optimizer step from the shipped weights: recompute entropy, clips' NLL and L_echo with a
    plain forward of those weights on the buffered micro-batch."""
    spg = SETTINGS[setting]["steps_per_generation"]
    tr = run(EchoGRPOTrainer, EchoGRPOConfig, str(tmp_path), reward=all_success, echorl_coef=0.5, **SETTINGS[setting])
    rec = tr.echo_last
    assert rec.entropy_pass == (setting == "on_policy")
    model0, _ = load_chain_model()
    model0.eval()
    # the entropies the selection read: the sampling distribution's (T=1), at every valid position
    _, ent = plain_logprobs_entropy(model0, rec.prompt_ids, rec.prompt_mask, rec.completion_ids, rec.loss_mask)
    valid = rec.loss_mask.bool()
    torch.testing.assert_close(rec.entropy[valid], ent[valid], rtol=1e-4, atol=1e-5)
    # the clips: one per group (all succeed), a prefix of valid tokens
    clips = int(rec.metrics["echo/clips"])
    assert clips == rec.completion_ids.shape[0] // N_GEN
    assert int(rec.echo_mask.any(1).sum()) == clips
    assert not (rec.echo_mask & ~valid).any()
    # echo/loss of step 1 = the first buffered micro-batch's clips: sum of clip token-mean NLL / (C / M)
    mb = tr._buffered_inputs[0]
    logp, _ = plain_logprobs_entropy(model0, mb["prompt_ids"], mb["prompt_mask"], mb["completion_ids"],
                                     mb["completion_mask"])
    m = mb["echo_mask"]
    has = m.any(1)
    assert has.any()
    clip_nll = -(logp * m).sum(1)[has] / m.sum(1)[has]  # per clip token mean
    expected = float(clip_nll.sum()) / (clips / spg)
    torch.testing.assert_close(mb["echo_denom"][has], (m.sum(1)[has] * clips / spg).float())
    logged = tr.state.log_history[0]["echo/loss"]
    assert logged == pytest.approx(expected, rel=2e-5)
    assert tr.state.log_history[0]["echo/active"] == 1.0


def test_advantage_mode_adds_the_bonus_to_clip_tokens(tmp_path):
    tr = run(EchoGRPOTrainer, EchoGRPOConfig, str(tmp_path), reward=all_success, echorl_mode="advantage",
             echorl_adv_coef=0.25)
    rec = tr.echo_last
    assert not rec.echo_mask.any()  # no loss term in mode='advantage'
    adv = tr._buffered_inputs[0]["advantages"]
    assert adv.dim() == 2  # [b, L]: TRL's [b] advantages plus the bonus on clip tokens
    assert (rec.advantages == 0).all()  # all-success groups: GRPO's advantages vanish...
    assert set(adv.unique().tolist()) == {0.0, 0.25}  # ...the clips carry adv_coef
    assert int((adv == 0.25).sum()) == int(rec.metrics["echo/clip_tokens"])


def test_refuses_a_plain_grpo_config(tmp_path):
    from trl_support import base_kwargs

    model, tok = load_chain_model()
    with pytest.raises(TypeError, match="EchoGRPOConfig"):
        EchoGRPOTrainer(model=model, reward_funcs=all_success, args=GRPOConfig(**base_kwargs(str(tmp_path))),
                        processing_class=tok)


def test_refuses_follow_rl_agg_with_a_summing_loss_type(tmp_path):
    from trl_support import base_kwargs

    model, tok = load_chain_model()
    args = EchoGRPOConfig(**base_kwargs(str(tmp_path), loss_type="dr_grpo", echorl_follow_rl_agg=True))
    with pytest.raises(ValueError, match="echorl_follow_rl_agg=True with loss_type='dr_grpo'.*echorl_follow_rl_agg=False"):
        EchoGRPOTrainer(model=model, reward_funcs=all_success, args=args, processing_class=tok)


def test_own_entropy_pass_covers_the_rows_that_can_be_eligible(tmp_path):
    """On-policy (no TRL old-policy pass): EchoRL's pass forwards only the successful rows; the
    selection from those entropies is the selection from every row's."""
    from echorl.stage import run_echo_stage

    tr = run(EchoGRPOTrainer, EchoGRPOConfig, str(tmp_path), echorl_coef=0.5, **SETTINGS["on_policy"])
    rec = tr.echo_last
    assert rec.entropy_pass
    cand = (rec.scores >= 1.0) & rec.loss_mask.bool().any(1)
    assert 0 < int(cand.sum()) < len(cand)  # successes and failures: the case is not vacuous
    model0, _ = load_chain_model()
    model0.eval()
    _, ent = plain_logprobs_entropy(model0, rec.prompt_ids, rec.prompt_mask, rec.completion_ids, rec.loss_mask)
    valid = rec.loss_mask.bool()
    assert (rec.entropy[~cand] == 0).all()
    torch.testing.assert_close(rec.entropy[cand.unsqueeze(1) & valid], ent[cand.unsqueeze(1) & valid], rtol=1e-4,
                               atol=1e-5)
    full = run_echo_stage(rec.completion_ids, rec.loss_mask, ent, rec.scores, torch.arange(len(cand)) // N_GEN,
                          tr.echo_cfg)
    assert rec.metrics["echo/clips"] >= 1
    assert torch.equal(rec.echo_mask, full.echo_mask)
