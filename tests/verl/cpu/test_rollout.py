"""The hf_cpu rollout server against the tiny model itself (no Ray: the class the actor runs)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from echorl.models.tiny import SHIPPED_DIR
from echorl.verl.cpu.rollout import HFGenerateServer, request_seed


@pytest.fixture(scope="module")
def server():
    from verl.workers.config import HFModelConfig, RolloutConfig

    torch.set_num_threads(1)
    rollout = RolloutConfig(name="hf_cpu", tensor_model_parallel_size=1, prompt_length=32, response_length=24, seed=7)
    model = HFModelConfig(path=str(SHIPPED_DIR), use_remove_padding=False)
    return HFGenerateServer(rollout, model, replica_rank=0)


def _prompt(server, text="Compute 3+4."):
    chat = server.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                add_generation_prompt=True)
    return server.tokenizer.encode(chat, add_special_tokens=False)


def _gen(server, prompt, request_id, **params):
    sp = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True, **params}
    return asyncio.run(server.generate(prompt_ids=prompt, sampling_params=sp, request_id=request_id))


def test_log_probs_are_the_models_at_the_sampling_temperature(server):
    prompt = _prompt(server)
    out = _gen(server, prompt, "det-0", temperature=0.7)
    assert 1 <= len(out.token_ids) <= 24 and len(out.log_probs) == len(out.token_ids)
    ids = torch.tensor([prompt + out.token_ids])
    with torch.no_grad():
        logits = server.model(ids).logits[0, len(prompt) - 1 : -1] / 0.7  # [R, V]
    expected = torch.log_softmax(logits.double(), -1).gather(-1, torch.tensor(out.token_ids)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(out.log_probs, dtype=torch.float64), expected, rtol=1e-4, atol=1e-5)
    assert out.extra_fields == {"global_steps": None} and out.stop_reason == "completed"
    assert server.eos_ids == [server.tokenizer.eos_token_id]


def test_sampling_is_fixed_by_seed_step_request_and_occurrence(server):
    """verl sends a group's n rollouts with one request id: they must differ from each other, and
    the same requests under the same weight version must give the same samples again."""
    prompt = _prompt(server, "Compute 9-2.")
    weights = {k: v.clone() for k, v in server.model.state_dict().items() if k != "lm_head.weight"}
    asyncio.run(server.update_weights(weights, global_steps=5))
    a = [_gen(server, prompt, "det-0", temperature=1.5).token_ids for _ in range(4)]
    asyncio.run(server.update_weights(weights, global_steps=5))  # same version again: counts restart
    b = [_gen(server, prompt, "det-0", temperature=1.5).token_ids for _ in range(4)]
    assert a == b
    assert len({tuple(x) for x in a}) > 1  # the group's rollouts are not copies of one sample
    asyncio.run(server.update_weights(weights, global_steps=6))
    c = [_gen(server, prompt, "det-0", temperature=1.5).token_ids for _ in range(4)]
    assert c != a  # another weight version samples anew
    assert request_seed(7, 0, "det-1") != request_seed(7, 1, "det-1") != request_seed(8, 1, "det-1")


def test_greedy_and_max_tokens(server):
    prompt = _prompt(server)
    g1 = _gen(server, prompt, "x", temperature=0)
    g2 = _gen(server, prompt, "y", temperature=0)
    assert g1.token_ids == g2.token_ids
    assert len(_gen(server, prompt, "z", max_tokens=3).token_ids) == 3


def test_update_weights_loads_the_trainers_tensors(server):
    state = {k: v.clone() for k, v in server.model.state_dict().items()}
    new = {k: v + 0.01 for k, v in state.items() if k != "lm_head.weight"}  # tied head omitted, as FSDP sends it
    assert asyncio.run(server.update_weights(new, global_steps=3)) == len(new)
    emb = server.model.get_input_embeddings().weight
    assert torch.equal(emb, new["model.embed_tokens.weight"]) and server.global_steps == 3
    assert server.model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()  # still tied
    with pytest.raises(RuntimeError, match=r"weight sync does not match the model.*unexpected \['bogus'\]"):
        asyncio.run(server.update_weights({**new, "bogus": torch.zeros(1)}, global_steps=4))
    asyncio.run(server.update_weights({k: v for k, v in state.items() if k != "lm_head.weight"}, global_steps=0))
