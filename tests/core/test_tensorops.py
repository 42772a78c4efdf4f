"""echorl/core/tensorops.py: count_true against literal counts, including the blocked path (rows of
128 tokens and more, summed per 128-block in uint8 where one full block is 128 < 256)."""

from __future__ import annotations

import pytest
import torch

from echorl.core.tensorops import count_true


@pytest.mark.parametrize("L", [1, 127, 128, 129, 255, 256, 300, 1024])
def test_count_true_matches_a_literal_count(L):
    g = torch.Generator().manual_seed(L)
    m = torch.rand(5, L, generator=g) < 0.5
    m[0] = True  # a full row: every 128-block sums to 128, the most a uint8 block sum holds here
    m[1] = False
    want = [sum(1 for x in row.tolist() if x) for row in m]  # slow literal count
    got = count_true(m)
    assert got.dtype == torch.long and got.tolist() == want
    assert want[0] == L and want[1] == 0


def test_count_true_blocked_path_literal_values():
    m = torch.zeros(3, 384, dtype=torch.bool)
    m[0, :256] = True  # two full blocks: 256 would overflow a uint8 sum of the whole row
    m[1, 127:130] = True  # crosses the first block boundary
    m[2, ::3] = True  # 128 of 384
    assert count_true(m).tolist() == [256, 3, 128]
    m2 = torch.ones(2, 1000, dtype=torch.bool)  # 7 full blocks + a tail of 104
    m2[1, 999] = False
    assert count_true(m2).tolist() == [1000, 999]
