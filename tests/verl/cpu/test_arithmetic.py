"""The CPU runs' data (echorl/verl/cpu/arithmetic.py): a raw file in LUFFY's layout, converted by the
repository's converter; the expert trace reaches the converted rows exactly."""

from __future__ import annotations

import pyarrow.parquet as pq

from echorl.methods.luffy import expert_text
from echorl.tasks import arithmetic
from echorl.verl.cpu.arithmetic import SYSTEM, compute_score, write_arithmetic_parquets


def test_converted_rows_carry_the_raw_files_traces(tmp_path):
    paths = write_arithmetic_parquets(tmp_path, n_train=6, n_val=2, seed=3, levels=(1, 2))
    for split, n, seed in (("train", 6, 3), ("val", 2, 4)):
        problems = arithmetic.generate(n, seed=seed, levels=(1, 2))
        raw = pq.read_table(paths[f"raw_{split}"]).to_pylist()
        assert [r["prompt"] for r in raw] == [[{"role": "system", "content": SYSTEM},
                                              {"role": "user", "content": p["prompt"]}] for p in problems]
        assert [r["target"] for r in raw] == [[{"role": "assistant", "content": p["solution"]}] for p in problems]
        rows = pq.read_table(paths[split]).to_pylist()
        assert [expert_text(r) for r in rows] == [p["solution"] for p in problems]
        assert [r["prompt"] for r in rows] == [[{"role": "user", "content": p["prompt"]}] for p in problems]
        assert [r["reward_model"]["ground_truth"] for r in rows] == [p["answer"] for p in problems]
        assert {r["data_source"] for r in rows} == {arithmetic.DATA_SOURCE}
        assert [r["extra_info"] for r in rows] == [{"split": split, "index": i} for i in range(n)]
        # the trace is a correct solution under the runs' reward function
        assert [compute_score(r["data_source"], expert_text(r), r["reward_model"]["ground_truth"]) for r in rows] == [1.0] * n
