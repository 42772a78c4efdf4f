"""echorl/analysis/entropy.py: the chunked entropy pass against a full-vocabulary reference, step
profiles and summaries against hand computations, batched generation against a literal greedy loop."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from echorl.analysis.entropy import (
    Solution,
    dump_solutions,
    encode_prompts_of,
    expert_solutions,
    expert_text,
    generate,
    profile_solutions,
    rows_with_user_prompts,
    summarize,
    token_entropies,
)


def _full_vocab_entropy(model, sol: Solution, temperature: float) -> torch.Tensor:
    """One unpadded sequence, every position projected onto the whole vocabulary, float64."""
    ids = torch.tensor([sol.prompt_ids + sol.response_ids])
    with torch.no_grad():
        z = model(input_ids=ids).logits[0].double() / temperature  # [P+L, V]
    P, L = len(sol.prompt_ids), len(sol.response_ids)
    logp = torch.log_softmax(z[P - 1:P - 1 + L], dim=-1)  # row j predicts response token j
    return -(logp.exp() * logp).sum(-1)


def test_chunked_entropy_equals_full_vocabulary_reference(tiny):
    model, tok = tiny
    rows = rows_with_user_prompts("arithmetic", 5, seed=3)  # levels 1..5: prompts and responses of different lengths
    pids = encode_prompts_of(tok, rows)
    sols = expert_solutions(tok, rows, pids)
    sols += [Solution("wrong", pids[0], tok.encode("12+7=1", add_special_tokens=False), 0, 0.0)]  # no EOS
    ents = token_entropies(model, sols, pad_id=tok.pad_token_id, temperature=0.7, chunk_rows=2)  # 3 padded chunks
    assert len({len(s.prompt_ids) for s in sols}) > 2 and len({len(s.response_ids) for s in sols}) > 2
    for s, e in zip(sols, ents):
        ref = _full_vocab_entropy(model, s, 0.7)
        assert e.shape == (len(s.response_ids),) and e.dtype == torch.float32
        torch.testing.assert_close(e.double(), ref, rtol=0, atol=2e-5)
    assert max(float(e.max()) for e in ents) <= math.log(len(tok)) + 1e-4


def test_profile_matches_hand_computation():
    # boundary id 3; steps: [5 6 3] [7 3 3] [8 9 2] and a one-step response [4 4]
    sols = [Solution("expert", [1], [5, 6, 3, 7, 3, 3, 8, 9, 2], 0, 1.0), Solution("correct", [1], [4, 4], 0, 1.0)]
    ents = [torch.tensor([1.0, 2.0, 0.0, 3.0, 0.5, 0.5, 2.0, 2.0, 0.5]), torch.tensor([0.2, 0.4])]
    p, q = profile_solutions(sols, ents, boundary_ids=(3,))
    assert p["num_steps"] == 3 and p["step_len"] == [3, 3, 3]
    np.testing.assert_allclose(p["step_h"], [1.0, 4.0 / 3, 1.5], rtol=0, atol=1e-6)
    assert p["peak_step"] == 2 and p["peak_pos"] == 1.0
    assert p["peak_h"] == pytest.approx(1.5, abs=1e-6)
    assert p["peak_excess"] == pytest.approx(1.5 - (1.0 + 4.0 / 3 + 1.5) / 3, abs=1e-6)
    assert p["token_h"] == pytest.approx(11.5 / 9, abs=1e-6)
    assert q["num_steps"] == 1 and q["peak_step"] == 0 and math.isnan(q["peak_pos"])
    # a tie goes to the earliest step; sum aggregation; min_step_tokens makes short steps ineligible
    (t,) = profile_solutions([Solution("expert", [1], [5, 3, 6, 3, 7, 7, 2], 0, 1.0)],
                             [torch.tensor([2.0, 0.0, 2.0, 0.0, 0.1, 0.1, 0.1])], boundary_ids=(3,))
    assert t["step_h"] == [1.0, 1.0, pytest.approx(0.1)] and t["peak_step"] == 0 and t["peak_pos"] == 0.0
    (u,) = profile_solutions([Solution("expert", [1], [5, 3, 6, 3, 7, 7, 2], 0, 1.0)],
                             [torch.tensor([2.0, 0.0, 2.0, 0.0, 0.9, 0.9, 0.9])], boundary_ids=(3,),
                             step_agg="sum", min_step_tokens=3)
    assert u["step_h"] == pytest.approx([2.0, 2.0, 2.7]) and u["peak_step"] == 2


def _prof(kind, row, token_h, step_h, peak_step, tokens=10):
    n = len(step_h)
    return {"kind": kind, "row": row, "tokens": tokens, "token_h": token_h, "step_h": step_h, "num_steps": n,
            "peak_step": peak_step, "peak_h": step_h[peak_step], "peak_pos": peak_step / (n - 1) if n > 1 else float("nan"),
            "peak_excess": step_h[peak_step] - float(np.mean(step_h))}


def test_summary_and_same_prompt_differences():
    profs = [_prof("expert", 0, 1.0, [0.5, 1.5], 1), _prof("expert", 1, 2.0, [2.0, 1.0, 3.0], 2, tokens=30),
             _prof("correct", 0, 0.4, [0.2, 0.6], 1), _prof("correct", 0, 0.6, [0.9, 0.1], 0),
             _prof("wrong", 1, 3.0, [3.0], 0), _prof("expert", 2, 5.0, [5.0, 4.0], 0)]
    s = summarize(profs, num_bins=2)
    e = s["expert"]
    assert e["solutions"] == 3 and e["token_h"]["mean"] == pytest.approx(8.0 / 3)
    assert e["token_h_pooled"] == pytest.approx((1.0 * 10 + 2.0 * 30 + 5.0 * 10) / 50)
    assert e["num_steps"]["mean"] == pytest.approx(7 / 3) and e["peak_pos"]["mean"] == pytest.approx(2 / 3)
    assert e["peak_on_last_step"] == pytest.approx(2 / 3)
    # bins of k / (S - 1): [0, 0.5) and [0.5, 1]; S=3 puts step 1 (0.5) in the second bin
    assert e["step_h_by_position"] == pytest.approx([np.mean([0.5, 2.0, 5.0]), np.mean([1.5, 1.0, 3.0, 4.0])])
    sd = np.std([1.0, 2.0, 5.0], ddof=1)
    assert e["token_h"]["ci95"] == pytest.approx([8 / 3 - 1.96 * sd / math.sqrt(3), 8 / 3 + 1.96 * sd / math.sqrt(3)])
    assert s["wrong"]["solutions"] == 1 and s["wrong"]["peak_pos"]["n"] == 0  # one-step: no position
    assert "peak_is_hard_step" not in e
    profs[0]["hard_step"], profs[1]["hard_step"] = 1, 0  # peaks at 1 and 2
    assert summarize(profs)["expert"]["peak_is_hard_step"] == 0.5
    pd = s["paired"]  # only row 0 has both an expert and a correct solution
    assert pd["rows"] == 1
    assert pd["expert_minus_correct_token_h"]["mean"] == pytest.approx(1.0 - 0.5)
    assert pd["expert_minus_correct_peak_h"]["mean"] == pytest.approx(1.5 - (0.6 + 0.9) / 2)


def test_expert_text_reads_solution_and_verl_target():
    assert expert_text({"solution": "1+1=2\nAnswer: 2"}) == "1+1=2\nAnswer: 2"
    assert expert_text({"target": "x"}) == "x"
    assert expert_text({"target": {"role": "assistant", "content": "y"}}) == "y"
    assert expert_text({"target": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "z"}]}) == "z"
    assert expert_text({"solution": "  ", "target": None}) is None


def test_batched_generation_equals_literal_greedy_loop(tiny):
    model, tok = tiny
    rows = rows_with_user_prompts("arithmetic", 4, seed=5)
    pids = encode_prompts_of(tok, rows)
    got = generate(model, pids, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, max_new_tokens=12,
                   temperature=0.0, batch_size=3)  # left padding inside a batch of different prompt lengths
    for p, g in zip(pids, got):
        seq = list(p)
        for _ in range(12):
            with torch.no_grad():
                nxt = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            seq.append(nxt)
            if nxt == tok.eos_token_id:
                break
        assert g == seq[len(p):]


def test_dump_solutions_reencode_records_and_kind_by_score(tmp_path, tiny):
    _, tok = tiny
    recs = [{"prompt": "Compute 1+2.", "tokens": ["1", "+", "2", "=", "3", "\n", "A", "nswer: 3", "<|im_end|>"], "score": 1.0},
            {"prompt": "Compute 2+2.", "tokens": ["Answer: 5"], "score": 0.0}]
    (tmp_path / "echo_clips.json").write_text(json.dumps(recs))
    sols = dump_solutions(tmp_path, tok)  # a folder holding echo_clips.json
    assert [s.kind for s in sols] == ["correct", "wrong"]
    assert sols[0].response_ids == tok.encode("1+2=3\nAnswer: 3", add_special_tokens=False) + [tok.eos_token_id]
    assert sols[0].prompt_ids == encode_prompts_of(tok, [{"prompt": "Compute 1+2."}])[0]
    with pytest.raises(FileNotFoundError, match="echo_clips.json"):
        dump_solutions(tmp_path / "nope", tok)


def test_cli_entropy_writes_summary_and_figure(tmp_path):
    from echorl.cli import main

    assert main(["analyze", "entropy", "--model", "tiny", "--rows", "6", "--samples", "2", "--threads", "1",
                 "--max-new-tokens", "40", "--out", str(tmp_path), "--name", "t"]) == 0
    res = json.loads((tmp_path / "t_entropy.json").read_text())
    assert (tmp_path / "t_entropy.png").stat().st_size > 1000
    kinds = [p["kind"] for p in res["profiles"]]
    assert kinds.count("expert") == 6 and kinds.count("correct") + kinds.count("wrong") == 12
    assert res["summary"]["expert"]["solutions"] == 6 and res["settings"]["boundary_ids"] == [3]
