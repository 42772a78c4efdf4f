"""The embedded engine on a verl-prepared math parquet (``echorl.data.prepare``: chat-message
prompts, ``reward_model.ground_truth``, a ``data_source`` no built-in task owns) with the
math-verify reward (``reward.score_fn=echorl.rewards.math:compute_score``)."""

from __future__ import annotations

import pytest
from engine_support import base_overrides, make_model

from echorl.data.prepare import convert_rows, write_parquet
from echorl.local import load_config
from echorl.local.train_prompts import prepare_prompts
from echorl.local.trainer import LocalTrainer, import_score_fn
from echorl.rewards.pool import VerifierPool

MATH_SCORE = "echorl.rewards.math:compute_score"
# a Jinja chat template on the character tokenizer (it ships none): real rendering by transformers
TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"


def math_parquet(tmp_path, n: int = 8):
    rows = [{"problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(n)]
    rows = convert_rows(rows, "math", template="{question} Put the answer in \\boxed{}.")
    path = tmp_path / "math.parquet"
    write_parquet(rows, path)
    return path, rows


def test_chat_prompts_are_rendered_with_the_template_and_need_a_verifier_for_their_source(tmp_path):
    path, rows = math_parquet(tmp_path)
    _, tok = make_model()
    tok.chat_template = TEMPLATE
    cfg = load_config(base_overrides(tmp_path, **{"data.task": str(path), "data.max_prompt_length": 256}))
    with pytest.raises(ValueError, match=r"row 0 has data_source='math', which no task verifies.*reward\.score_fn"):
        prepare_prompts(cfg.data, tok)
    ps = prepare_prompts(cfg.data, tok, custom_verifier=True)
    assert [r["data_source"] for r in ps.rows] == ["math"] * len(rows)
    assert [r["answer"] for r in ps.rows] == [r["reward_model"]["ground_truth"] for r in rows]  # ground_truth
    for got, row in zip(ps.ids, rows):
        text = f"<user>{row['prompt'][0]['content']}\n<assistant>"
        assert got == tok(text, add_special_tokens=False)["input_ids"]
    # no template: the last user message, as the text it is
    tok.chat_template = None
    ps = prepare_prompts(cfg.data, tok, custom_verifier=True)
    assert ps.ids[3] == tok(rows[3]["prompt"][0]["content"], add_special_tokens=False)["input_ids"]
    bad = [{**rows[0], "prompt": [{"role": "system", "content": "be brief"}]}]
    with pytest.raises(ValueError, match=r"row 0: the chat prompt has no user message"):
        prepare_prompts(cfg.data, tok, rows=bad, custom_verifier=True)
    bad = [{**rows[0], "prompt": 7}]
    with pytest.raises(ValueError, match=r"row 0: must be a string or a list of chat messages"):
        prepare_prompts(cfg.data, tok, rows=bad, custom_verifier=True)


def test_math_verify_scores_inside_the_engines_verifier_pool():
    """The engine's pool calls the math verifier in its workers, where it checks in-process under
    the engine pool's timeout (no second pool inside each worker)."""
    cases = [("math", "so the sum is \\boxed{\\frac{1}{2}}", "0.5", None),
             ("math", "\\boxed{3}", "4", None),
             ("math", "The answer is 3", "3", None)]  # no boxed answer: 0
    with VerifierPool(import_score_fn(MATH_SCORE), num_workers=1, timeout_s=30.0) as pool:
        scores, stats = pool.score(cases)
    assert scores == [1.0, 0.0, 0.0]
    assert stats["ok"] == 3 and stats["crashes"] == 0 and stats["timeouts"] == 0


def test_engine_trains_a_step_on_the_math_parquet_with_math_verify(tmp_path):
    path, rows = math_parquet(tmp_path)
    model, tok = make_model()
    cfg = load_config(base_overrides(tmp_path, steps=1, **{"data.task": str(path), "data.max_prompt_length": 256,
                                                           "reward.score_fn": MATH_SCORE, "reward.timeout_s": 30}))
    tr = LocalTrainer(cfg, model=model, tokenizer=tok)
    try:
        m = tr.step()
    finally:
        tr.pool.close()
    B = int(cfg.data.train_batch_size) * int(cfg.actor_rollout_ref.rollout.n)
    assert m["reward/crashes"] == 0 and m["reward/timeouts"] == 0 and m["reward/errors"] == 0
    assert tr.pool.totals["ok"] == B  # every rollout was checked by math-verify in a worker
    assert m["reward/mean"] == 0.0  # a random tiny model writes no boxed answer
