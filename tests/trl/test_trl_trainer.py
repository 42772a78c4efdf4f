"""EchoGRPOTrainer against TRL's own GRPOTrainer on the chain testbed (real TRL loop, tiny-chain model).

* EchoRL off, or on with coef 0: the weights after 3 optimizer steps are bit-identical to
  GRPOTrainer's at the same seed, where TRL makes an old-policy pass (steps_per_generation=2,
  EchoRL reads its entropies) and where it does not (on-policy: EchoRL records them during
  generate, or makes its own no-grad pass).
* EchoRL on: the token entropy the selection read is the entropy of the sampling distribution
  (checked against a plain forward), and the ``echo/loss`` the trainer logs is the clip NLL
  computed independently from the step's stored tensors.
* On-policy, the entropies recorded during generate (T=2, top-k and top-p on) equal a plain
  forward's at T=2 and the forward-pass path's, and both paths select the same clips; a generation
  config that changes the logits before sampling falls back to the forward pass, and says so.
* ``mode='advantage'``: the buffered advantages carry ``adv_coef`` on clip tokens.

Cost: about 12 short trainings (one to three optimizer steps of 8 rollouts each).
"""

from __future__ import annotations

import pytest
import torch
from trl import GRPOConfig, GRPOTrainer
from trl_support import N_GEN, all_success, plain_logprobs_entropy, run

from echorl.trl import EchoGRPOConfig, EchoGRPOTrainer
from echorl.trl.testbed import load_chain_model

SETTINGS = {"reuse": dict(steps_per_generation=2), "on_policy": dict(steps_per_generation=1)}


class ForwardPassTrainer(EchoGRPOTrainer):
    """On-policy entropies from EchoRL's own forward pass instead of generate."""

    generation_entropy = False


TRAINERS = {"generation": EchoGRPOTrainer, "forward_pass": ForwardPassTrainer}
SOURCE = {("reuse", "generation"): "old_policy_pass", ("on_policy", "generation"): "generation",
          ("on_policy", "forward_pass"): "forward_pass"}


@pytest.mark.slow
@pytest.mark.parametrize("setting,path,echo", [("reuse", "generation", dict(echorl_enable=False)),
                                               ("on_policy", "generation", dict(echorl_coef=0.0)),
                                               ("on_policy", "forward_pass", dict(echorl_enable=False))],
                         ids=["reuse-enable_false", "on_policy-generation-coef_0", "on_policy-forward_pass-enable_false"])
def test_off_trains_bit_identically_to_grpo_trainer(tmp_path, setting, path, echo):
    kw = dict(SETTINGS[setting], max_steps=3)
    ref = run(GRPOTrainer, GRPOConfig, str(tmp_path / "trl"), **kw)
    ours = run(TRAINERS[path], EchoGRPOConfig, str(tmp_path / "echo"), **kw, **echo)
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
    assert ours.echo_last.entropy_source == SOURCE[setting, path]
    from_gen = [h["echo/entropy_from_generation"] for h in hist if "echo/clips" in h]
    generations = -(-3 // SETTINGS[setting]["steps_per_generation"])  # one per steps_per_generation steps
    assert from_gen == [float(SOURCE[setting, path] == "generation")] * generations
    assert [h.get("loss") for h in ref.state.log_history] == [h.get("loss") for h in hist]


@pytest.mark.parametrize("setting", ["on_policy", "reuse"])
def test_logged_echo_loss_is_the_clip_nll_of_the_step(tmp_path, setting):
    """One optimizer step from the shipped weights: recompute entropy, clips' NLL and L_echo with a
    plain forward of those weights on the buffered micro-batch."""
    spg = SETTINGS[setting]["steps_per_generation"]
    tr = run(EchoGRPOTrainer, EchoGRPOConfig, str(tmp_path), reward=all_success, echorl_coef=0.5, **SETTINGS[setting])
    rec = tr.echo_last
    assert rec.entropy_source == SOURCE[setting, "generation"]
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

    tr = run(ForwardPassTrainer, EchoGRPOConfig, str(tmp_path), echorl_coef=0.5, **SETTINGS["on_policy"])
    rec = tr.echo_last
    assert rec.entropy_pass and rec.entropy_source == "forward_pass"
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


def test_generation_entropies_equal_a_forward_pass_and_select_the_same_clips(tmp_path):
    """T=2 with top-k and top-p truncation: the entropies recorded during generate are those of
    softmax(logits / 2.0) over the whole vocabulary (SPEC 2.2, as TRL's, verl's and the engine's
    old-policy passes), equal to a plain forward's and to the forward-pass path's; both paths
    sample the same completions and select the same clips."""
    kw = dict(SETTINGS["on_policy"], temperature=2.0, top_k=3, top_p=0.95, echorl_coef=0.5)
    gen = run(EchoGRPOTrainer, EchoGRPOConfig, str(tmp_path / "gen"), reward=all_success, **kw).echo_last
    fwd = run(ForwardPassTrainer, EchoGRPOConfig, str(tmp_path / "fwd"), reward=all_success, **kw).echo_last
    assert (gen.entropy_source, fwd.entropy_source) == ("generation", "forward_pass")
    assert torch.equal(gen.completion_ids, fwd.completion_ids)  # the recorder leaves sampling untouched
    assert torch.equal(gen.loss_mask, fwd.loss_mask)
    valid = gen.loss_mask.bool()
    assert int(valid.sum()) > 100
    model0, _ = load_chain_model()
    model0.eval()
    logits = None

    def keep(_m, _i, out):
        nonlocal logits
        logits = out.logits.float()

    handle = model0.register_forward_hook(keep)
    _, ent = plain_logprobs_entropy(model0, gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.loss_mask,
                                    temperature=2.0)
    handle.remove()
    torch.testing.assert_close(gen.entropy[valid], ent[valid], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gen.entropy[valid], fwd.entropy[valid], rtol=1e-5, atol=1e-5)
    assert (gen.entropy[~valid] == 0).all()
    # not the truncated distribution's: top-k=3 of T=2 gives other values
    L = gen.completion_ids.shape[1]
    z = logits[:, -L - 1:-1] / 2.0
    z = z.masked_fill(z < z.topk(3, dim=-1).values[..., -1:], float("-inf"))
    logp = torch.log_softmax(z, dim=-1)
    truncated = -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)
    assert (gen.entropy[valid] - truncated[valid]).abs().max() > 1e-3
    # the same clips, denominators and metrics from either path
    assert gen.metrics["echo/clips"] == gen.completion_ids.shape[0] // N_GEN
    assert torch.equal(gen.echo_mask, fwd.echo_mask)
    assert torch.equal(gen.echo_denom, fwd.echo_denom)
    assert gen.metrics == pytest.approx(fwd.metrics, rel=1e-5)  # peak_h: the entropies to float rounding


def test_a_config_that_changes_the_logits_falls_back_to_the_forward_pass(tmp_path, caplog):
    """repetition_penalty acts before the processors passed to generate: the scores there are not
    the policy's, so the trainer makes its own pass, logs why once, and reports it in the metrics."""
    with caplog.at_level("INFO", logger="echorl.trl.trainer"):
        tr = run(EchoGRPOTrainer, EchoGRPOConfig, str(tmp_path), reward=all_success, echorl_coef=0.5,
                 repetition_penalty=1.1, max_steps=2, **SETTINGS["on_policy"])
    assert tr.echo_last.entropy_source == "forward_pass"
    hist = [h for h in tr.state.log_history if "echo/clips" in h]
    assert [(h["echo/entropy_pass"], h["echo/entropy_from_generation"]) for h in hist] == [(1.0, 0.0)] * 2
    lines = [r for r in caplog.records if "EchoRL token entropies" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelname == "WARNING"
    assert "repetition_penalty=1.1" in lines[0].getMessage()
