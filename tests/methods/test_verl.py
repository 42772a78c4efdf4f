"""LUFFY / UFT on verl 0.9's layout, without Ray: the driver hooks (agent-loop configuration, prompt
marking, per-row fields from TransferQueue keys and nested masks) and ``MethodLoss`` on nested
micro-batches cut by verl's own ``prepare_micro_batches`` (same gradient for 1, 2 and 4 micro-batches)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from methods_support import actor_config
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from verl.workers.engine.utils import prepare_micro_batches

from echorl.core.config import EchoConfig
from echorl.methods.config import MethodConfig
from echorl.methods.luffy import MethodLoss
from echorl.verl.luffy import TRAIN_FLAG, off_policy_rows_of, session_of
from echorl.verl.methods import AGENT_LOOPS_YAML, VerlMethod, configure
from echorl.verl.uft import HINT_FIELD, hint_mask_of

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _compose(*overrides: str):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="echorl.config", version_base=None):
        return compose(config_name="echorl_trainer", overrides=[
            f"hydra.searchpath=[pkg://verl.trainer.config,file://{RECIPES}]", *overrides])


def test_configure_points_verl_at_the_methods_agent_loop():
    import yaml

    cfg = _compose("+luffy=luffy")
    assert configure(cfg).name == "luffy"
    agent = cfg.actor_rollout_ref.rollout.agent
    assert agent.default_agent_loop == "luffy_agent" and agent.agent_loop_config_path == AGENT_LOOPS_YAML
    entries = {e["name"]: e["_target_"] for e in yaml.safe_load(Path(AGENT_LOOPS_YAML).read_text())}
    assert entries == {"luffy_agent": "echorl.verl.luffy.LuffyAgentLoop", "uft_agent": "echorl.verl.uft.UftAgentLoop"}
    for target in entries.values():  # hydra can build what the file names
        mod, cls = target.rsplit(".", 1)
        assert getattr(__import__(mod, fromlist=[cls]), cls).__name__ == cls
    plain = _compose()
    assert configure(plain).name == "grpo" and plain.actor_rollout_ref.rollout.agent.agent_loop_config_path is None
    with pytest.raises(ValueError, match=r"method\.luffy\.num_off_policy \(8\)"):
        configure(_compose("+luffy=luffy", "method.luffy.num_off_policy=8"))
    with pytest.raises(ValueError, match=r"default_agent_loop='tool_agent'"):
        configure(_compose("+uft=uft", "actor_rollout_ref.rollout.agent.default_agent_loop=tool_agent"))


def test_session_and_off_policy_rows_from_keys():
    assert session_of("4f1c-9a_3_0") == 3
    with pytest.raises(ValueError, match="unexpected TransferQueue row key"):
        session_of("pad")
    keys = ["a_0_0", "a_1_0", "b_0_0", "b_1_0", "pad_0_0"]
    uids = ["a", "a", "b", "b", "pad"]
    off = off_policy_rows_of(keys, uids, {"a": True, "b": False, "pad": True}, 1, [False] * 4 + [True])
    assert off.tolist() == [True, False, False, False, False]


def test_hint_mask_is_the_leading_masked_run():
    rmask = torch.tensor([[0, 0, 1, 1, 0], [1, 0, 1, 0, 0], [0, 0, 0, 0, 0]])
    att = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    assert hint_mask_of(rmask, att).long().tolist() == [[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 0, 0, 0]]


def _prompt_batch():
    batch_dict = {
        "uid": np.array(["u0", "u1"], dtype=object),
        "raw_prompt": np.array([[{"role": "user", "content": "q0"}], [{"role": "user", "content": "q1"}]],
                               dtype=object),
        "target": np.array([[{"role": "assistant", "content": "a\nb\nc\nAnswer: 1"}], None], dtype=object),
        "dummy_tensor": torch.zeros(2, 1, dtype=torch.uint8),
    }
    return tu.get_tensordict(batch_dict)


def test_prepare_prompts_marks_training_prompts_and_samples_hints():
    luffy = VerlMethod(MethodConfig(name="luffy"))
    batch = luffy.prepare_prompts(_prompt_batch(), step=0)
    from echorl.verl.methods import _row_field

    assert _row_field(batch, TRAIN_FLAG, 0) is True and _row_field(batch, TRAIN_FLAG, 1) is True
    assert luffy.has_trace == {"u0": True, "u1": False}
    uft = VerlMethod(MethodConfig.from_dict({"name": "uft", "uft": {"lower_prob": 1.0, "upper_prob": 1.0}}))
    batch = uft.prepare_prompts(_prompt_batch(), step=0)
    from echorl.verl.methods import _row_field

    assert [_row_field(batch, HINT_FIELD, i) for i in range(2)] == ["a\nb\nc\nAnswer: 1", ""]
    assert uft.metrics["uft/hinted_prompts"] == 1.0
    plain = VerlMethod(MethodConfig())
    assert TRAIN_FLAG not in plain.prepare_prompts(_prompt_batch(), step=0).keys()


def test_steps_without_traces_stop_and_partial_shares_are_logged():
    luffy = VerlMethod(MethodConfig(name="luffy"))
    luffy.prepare_prompts(_prompt_batch(), step=0)
    assert luffy.metrics["luffy/trace_frac"] == 0.5
    batch = _prompt_batch()
    batch["target"] = tu.get_tensordict({"target": np.array([None, None], dtype=object),
                                         "dummy_tensor": torch.zeros(2, 1)})["target"]
    for name in ("luffy", "uft"):
        with pytest.raises(ValueError, match=rf"method.name={name}: none of the 2 prompts.*data.train_files.*"
                                             r"scripts/prepare_data.py"):
            VerlMethod(MethodConfig(name=name)).prepare_prompts(batch, step=0)


def test_start_up_check_names_a_training_file_without_traces(tmp_path):
    import pandas as pd

    from echorl.verl.methods import check_trace_files, trace_columns

    bare, top, nested = tmp_path / "bare.parquet", tmp_path / "top.parquet", tmp_path / "nested.parquet"
    pd.DataFrame({"prompt": ["q"], "extra_info": [{"index": 0}]}).to_parquet(bare)
    pd.DataFrame({"prompt": ["q"], "target": ["t"]}).to_parquet(top)
    pd.DataFrame({"prompt": ["q"], "extra_info": [{"index": 0, "solution": "s"}]}).to_parquet(nested)
    assert trace_columns(str(bare)) == set() and trace_columns(str(top)) == {"target"}
    assert trace_columns(str(nested)) == {"extra_info.solution"} and trace_columns(str(tmp_path / "no.parquet")) is None
    check_trace_files([str(top), str(nested), "hdfs://remote/file.parquet"], "luffy")
    with pytest.raises(ValueError, match=rf"method.name=uft .*{bare}.*scripts/prepare_data.py"):
        check_trace_files([str(top), str(bare)], "uft")
    jl = tmp_path / "rows.jsonl"
    jl.write_text('{"prompt": "q", "answer": "1"}\n')
    with pytest.raises(ValueError, match="rows.jsonl has no 'target'"):
        check_trace_files([str(jl)], "luffy")


def _nested(rows):
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def test_stage_fields_on_verl_layout():
    rmask = _nested([torch.tensor([1, 1, 1]), torch.tensor([1, 1]), torch.tensor([0, 0, 1, 1]), torch.tensor([1])])
    data = TensorDict({"response_mask": rmask, "uid": np.array(["a", "a", "b", "b"], dtype=object)}, batch_size=[4])
    keys = ["a_0_0", "a_1_0", "b_0_0", "b_1_0"]
    luffy = VerlMethod(MethodConfig(name="luffy"))
    luffy.has_trace = {"a": True, "b": True}
    fields, ignored = luffy.stage(keys, data, [False, False, False, True], num_minibatches=1)
    assert fields["off_policy"].tolist() == [True, False, True, False]
    assert ignored == [True, False, True, True] and luffy.has_trace == {}
    uft = VerlMethod(MethodConfig(name="uft"))
    fields, ignored = uft.stage(keys, data, [False] * 4, num_minibatches=2)
    assert fields["hint_mask"].is_nested and fields["hint_mask"].values().long().tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 0, 0]
    assert fields["hint_denom"].tolist() == [1.0] * 4 and ignored == [False] * 4  # 2 hint tokens / 2 mini-batches
    strict = VerlMethod(MethodConfig.from_dict({"name": "uft", "uft": {"echo_hinted": False}}))
    assert strict.stage(keys, data, [False] * 4, num_minibatches=2)[1] == [False, False, True, False]


def _method_minibatch(seed: int):
    """8 rows in verl's v1 layout: rows 0 and 4 off-policy (LUFFY), rows 1 and 5 open with 2 hint tokens."""
    g = torch.Generator().manual_seed(seed)
    B = 8
    thetas, fields = [], {k: [] for k in ("prompts", "responses", "input_ids", "response_mask", "loss_mask",
                                          "old_log_probs", "advantages", "hint_mask")}
    for i in range(B):
        p, r = int(torch.randint(2, 5, (1,), generator=g)), int(torch.randint(4, 9, (1,), generator=g))
        theta = torch.randn(p + r, generator=g)
        thetas.append(theta)
        prompt, resp = torch.randint(0, 50, (p,), generator=g), torch.randint(0, 50, (r,), generator=g)
        hint = torch.zeros(r, dtype=torch.bool)
        if i in (1, 5):
            hint[:2] = True
        m = (~hint).long()
        lp = torch.nn.functional.logsigmoid(theta[p - 1:p - 1 + r])
        for k, v in (("prompts", prompt), ("responses", resp), ("input_ids", torch.cat([prompt, resp])),
                     ("response_mask", m), ("loss_mask", m), ("old_log_probs", lp + 0.3 * torch.randn(r, generator=g)),
                     ("advantages", torch.randn(1, generator=g).expand(r).clone()), ("hint_mask", hint)):
            fields[k].append(v)
    data = TensorDict({k: _nested(v) for k, v in fields.items()}, batch_size=[B])
    data["off_policy"] = torch.tensor([i % 4 == 0 for i in range(B)])
    data["hint_denom"] = torch.full((B,), 4.0)
    data["echo_mask"] = _nested([m.bool() & (i % 4 == 2) for i, m in enumerate(fields["response_mask"])])
    data["echo_denom"] = torch.full((B,), 10.0)
    data["row"] = torch.arange(B)
    return data, thetas


def _run(loss_fn, data, thetas, n_micro):
    leaves = [t.clone().requires_grad_(True) for t in thetas]
    d = tu.index_select_tensor_dict(data, torch.arange(len(thetas)))
    tu.assign_non_tensor(d, dp_size=1, batch_num_tokens=int(data["loss_mask"].values().sum()),
                         global_batch_size=len(thetas), use_dynamic_bsz=False,
                         micro_batch_size_per_gpu=len(thetas) // n_micro)
    micro_batches, _ = prepare_micro_batches(d, dp_group=None)
    assert len(micro_batches) == n_micro
    total = 0.0
    for mb in micro_batches:
        rows = mb["row"].tolist()
        packed = torch.cat([torch.nn.functional.logsigmoid(leaves[i]) for i in rows])
        offsets = torch.tensor([0] + [len(leaves[i]) for i in rows]).cumsum(0)
        loss, _ = loss_fn({"log_probs": torch.nested.nested_tensor_from_jagged(packed, offsets)}, mb)
        loss.backward()
        total += float(loss.detach())
    return [leaf.grad for leaf in leaves], total


@pytest.mark.parametrize("name", ["luffy", "uft"])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum-norm"])
def test_method_loss_is_the_same_for_any_micro_batch_split(name, agg):
    # seq-mean-token-sum-norm needs a fixed scale (verl's default is the micro-batch width)
    actor = actor_config(f"actor_rollout_ref.actor.loss_agg_mode={agg}", "+actor_rollout_ref.actor.loss_scale_factor=16")
    loss_fn = MethodLoss(actor, EchoConfig(coef=0.5, boundary_token_ids=(9,)), MethodConfig(name=name))
    data, thetas = _method_minibatch(seed=3)
    g1, l1 = _run(loss_fn, data, thetas, 1)
    for n_micro in (2, 4):
        g, total = _run(loss_fn, data, thetas, n_micro)
        assert total == pytest.approx(l1, rel=1e-5, abs=1e-6)
        for a, b in zip(g1, g):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    if name == "luffy" and agg == "token-mean":  # off-policy row 0: the gradient of -A f(p) / N, by hand
        n_tok = int(data["loss_mask"].values().sum())
        theta, r = thetas[0], data["responses"][0].numel()
        p_len = len(theta) - r
        prob = torch.sigmoid(theta[p_len - 1:p_len - 1 + r])  # log p = logsigmoid(theta): dlogp/dtheta = 1 - p
        a = float(data["advantages"][0][0])
        want = -a * 0.1 * prob / (prob + 0.1) ** 2 / n_tok * (1 - prob)
        assert torch.allclose(g1[0][p_len - 1:p_len - 1 + r], want, rtol=1e-5, atol=1e-8)
    elif name == "uft":  # hint tokens of row 1: only the hint NLL, -coef * (1 - p) / D (RL mask 0 there)
        theta, r = thetas[1], data["responses"][1].numel()
        p_len = len(theta) - r
        prob = torch.sigmoid(theta[p_len - 1:p_len + 1])
        want = -0.001 * (1 - prob) / 4.0
        assert torch.allclose(g1[1][p_len - 1:p_len + 1], want, rtol=1e-5, atol=1e-9)
    assert not math.isnan(l1)


def test_expert_rows_are_left_out_of_verls_rollout_checks():
    """verl's rollout rejection sampling (token_k1, ratio bounds 0.5-2) drops the expert row's tokens when
    they carry the placeholder rollout log-prob 0.0; aligned, only the on-policy row with a real mismatch
    (ratio 4) is dropped, and verl's rollout-vs-actor metrics are those of the policy's own rows."""
    from verl import DataProto
    from verl.trainer.config.algorithm import RolloutCorrectionConfig
    from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_add_to_batch
    from verl.utils.debug.metrics import calculate_debug_metrics

    from echorl.verl.luffy import align_expert_rollout

    old = torch.log(torch.tensor([[0.2, 0.3, 0.4], [0.5, 0.5, 0.5], [0.4, 0.1, 0.3]]))
    rollout = torch.stack([torch.zeros(3), old[1] + 0.05, old[2] - math.log(4.0)])  # row 0: expert placeholder
    mask = torch.ones(3, 3, dtype=torch.long)
    responses = torch.ones(3, 3, dtype=torch.long)
    off = torch.tensor([True, False, False])
    rs = RolloutCorrectionConfig(rollout_rs="token_k1", rollout_rs_threshold="0.5_2.0")

    def rejected(rlp):
        batch = DataProto.from_dict({"old_log_probs": old, "rollout_log_probs": rlp, "response_mask": mask.clone()})
        out, _ = compute_rollout_correction_and_add_to_batch(batch, rs)
        return out.batch["response_mask"].sum(1).tolist()

    assert rejected(rollout) == [0, 3, 0]  # the placeholder drops the expert row
    aligned, metrics = align_expert_rollout(rollout, old, mask, responses, off)
    assert torch.equal(aligned[0], old[0]) and torch.equal(aligned[1:], rollout[1:])
    assert rejected(aligned) == [3, 3, 0]
    own = calculate_debug_metrics(DataProto.from_dict({"rollout_log_probs": rollout[1:], "old_log_probs": old[1:],
                                                       "response_mask": mask[1:], "responses": responses[1:]}))
    assert metrics.keys() == own.keys() and all(metrics[k] == pytest.approx(float(own[k])) for k in own)
    # the placeholder would have given a probability difference of 1 - 0.2 = 0.8 on the first token
    assert metrics["training/rollout_probs_diff_max"] == pytest.approx(0.4 - 0.1, rel=1e-5)


def test_expert_rollout_fields_on_verl_layout():
    rlp = _nested([torch.zeros(2), torch.tensor([-1.0, -2.0, -3.0])])
    old = _nested([torch.tensor([-0.5, -0.7]), torch.tensor([-1.1, -2.1, -2.9])])
    data = TensorDict({"uid": np.array(["a", "a"], dtype=object), "response_mask": _nested([torch.ones(2), torch.ones(3)]),
                       "responses": _nested([torch.ones(2, dtype=torch.long), torch.ones(3, dtype=torch.long)]),
                       "rollout_log_probs": rlp, "old_log_probs": old}, batch_size=[2])
    luffy = VerlMethod(MethodConfig(name="luffy"))
    luffy.has_trace = {"a": True}
    fields, metrics = luffy.expert_rollout_fields(["a_0_0", "a_1_0"], data, [False, False])
    out = fields["rollout_log_probs"]
    assert out.is_nested and torch.equal(out.values(), torch.tensor([-0.5, -0.7, -1.0, -2.0, -3.0]))
    assert metrics["training/rollout_probs_diff_valid"] == 1
    assert VerlMethod(MethodConfig(name="uft")).expert_rollout_fields(["a_0_0", "a_1_0"], data, [False] * 2) == ({}, {})


SCORER = '''
def score(data_source, solution_str, ground_truth, extra_info=None, bonus=0.0):
    """1 when the text's last boxed answer is the ground truth (+ bonus, a reward_kwargs pass-through)."""
    i = solution_str.rfind("\\\\boxed{")
    got = solution_str[i + 7:solution_str.find("}", i)] if i >= 0 else None
    return float(got == ground_truth) + bonus
'''


def test_uft_verifier_scores_the_continuation_through_verls_reward_manager(tmp_path):
    """The hint is the whole solution (with its boxed answer); the policy stopped at once. verl's naive
    reward manager decodes hint + continuation; wrapped by configure(), the score is the continuation's."""

    from verl import DataProto
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
    from verl.trainer.ppo.reward import get_custom_reward_fn

    from echorl.models.char_tokenizer import build_char_tokenizer
    from echorl.verl.uft import CONTINUATION_FIELD, WRAPPER

    scorer = tmp_path / "scorer.py"
    scorer.write_text(SCORER)
    tok = build_char_tokenizer()
    hint, gen = "1+4=5, \\boxed{5}\n", "so 5"

    def score_row(cfg, continuation):
        rm = NaiveRewardManager(cfg, tok, compute_score=get_custom_reward_fn(cfg))
        ids = tok(hint + gen, add_special_tokens=False)["input_ids"]
        extra = {"turn_scores": []} if continuation is None else {CONTINUATION_FIELD: continuation}
        data = DataProto.from_dict(
            {"prompts": torch.ones(1, 2, dtype=torch.long), "responses": torch.tensor([ids]),
             "attention_mask": torch.ones(1, 2 + len(ids), dtype=torch.long)},
            non_tensors={"data_source": np.array(["t"], dtype=object),
                         "reward_model": np.array([{"ground_truth": "5"}], dtype=object),
                         "extra_info": np.array([{}], dtype=object),
                         "tool_extra_fields": np.array([extra], dtype=object)})
        return rm.loop.run_until_complete(rm.run_single(data))["reward_score"]

    base = [f"reward.custom_reward_function.path={scorer}", "reward.custom_reward_function.name=score",
            "+reward.custom_reward_function.reward_kwargs.bonus=0.25"]
    cfg = _compose("+uft=uft", *base)
    configure(cfg)
    node = cfg.reward.custom_reward_function
    assert (node.path, node.name) == WRAPPER and node.reward_kwargs.bonus == 0.25
    assert score_row(cfg, gen) == 0.25  # "so 5" has no boxed answer: only the pass-through bonus
    assert score_row(cfg, "\\boxed{5}") == 1.25
    assert score_row(cfg, None) == 1.25  # an unhinted row: the whole response
    configure(cfg)  # idempotent
    assert cfg.reward.custom_reward_function.reward_kwargs.echorl_inner_path == str(scorer)
    whole = _compose("+uft=uft", "method.uft.score_hint=true", *base)
    configure(whole)
    assert whole.reward.custom_reward_function.path == str(scorer)
    assert score_row(whole, gen) == 1.25  # the hint's boxed answer scores
    with pytest.raises(ValueError, match=r"reward manager 'dapo'.*method.uft.score_hint=true"):
        configure(_compose("+uft=uft", "reward.reward_manager.name=dapo"))
