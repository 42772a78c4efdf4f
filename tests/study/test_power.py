"""echorl.study.stats (t test p-values, Holm) and echorl.study.power against values computed with
scipy 1.17 (``scipy.stats.t``, ``nct``, ``chi2``; scipy is not a dependency, the numbers are
literals) and by hand."""

from __future__ import annotations

import math

import pytest

from echorl.study.power import (
    chi2_cdf,
    chi2_quantile,
    min_detectable,
    paired_sds,
    pooled_sd,
    power_paired_t,
    sd_upper_bound,
    seeds_for_power,
)
from echorl.study.stats import holm, paired_difference, t_test_p

# scipy: 2 * stats.t.sf(t, df)
T_P = [(2.5, 4, 0.06676654481198814), (4.07, 4, 0.015222948887643513), (0.3, 2, 0.7924856608401776),
       (-2.5, 4, 0.06676654481198814), (0.0, 7, 1.0)]
# scipy: stats.nct.sf(c, df, nc) + stats.nct.cdf(-c, df, nc), c = stats.t.ppf(1 - alpha / 2, df)
POWER = [((5, 2, 2, 0.05), 0.40138991737179536), ((13, 2, 2, 0.0125), 0.736363962439758),
         ((3, 1, 1, 0.05), 0.1792553937765518), ((10, 2, 1.63, 0.0125), 0.7569889639726797),
         ((2, 5, 1, 0.05), 0.4209614091495039), ((30, 0.5, 2, 0.01), 0.09975588117441497)]


@pytest.mark.parametrize("t,df,p", T_P)
def test_t_test_p_matches_scipy(t, df, p):
    assert t_test_p(t, df) == pytest.approx(p, abs=1e-9)


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4 * 0.005 = 0.02, 3 * 0.01 = 0.03, 2 * 0.03 = 0.06, max(0.06, 1 * 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    out = holm([0.01, float("nan"), 0.02])  # NaN: no interval, not counted in m
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert holm([]) == []


def test_paired_difference_p_value_by_hand():
    # d = 0.1, 0.05, 0.2: mean 0.116667, sd 0.0763763, t = 0.116667 / (0.0763763 / sqrt 3) = 2.645751
    d = paired_difference({1: 0.5, 2: 0.6, 3: 0.7}, {1: 0.4, 2: 0.55, 3: 0.5})
    assert d["p"] == pytest.approx(0.11808289631180308, abs=1e-9)  # scipy: 2 * t.sf(2.6457513, 2)
    assert d["diffs"] == pytest.approx([0.1, 0.05, 0.2])
    same = paired_difference({1: 0.5, 2: 0.6}, {1: 0.4, 2: 0.5})  # sd 0, mean 0.1: p = 0
    assert same["p"] == 0.0 and same["sd"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("args,power", POWER)
def test_power_matches_scipy_noncentral_t(args, power):
    assert power_paired_t(*args) == pytest.approx(power, abs=1e-7)


def test_seeds_and_min_detectable():
    # sigma = delta: power(9, 1, 1, 0.05) and power(10, ...) bracket 0.8 (scipy: 0.7480, 0.8031)
    assert seeds_for_power(2.0, 2.0, 0.05) == 10
    assert seeds_for_power(2.0, 2.0, 0.0125) == 15
    mde = min_detectable(5, 2.0, 0.05)
    assert power_paired_t(5, mde, 2.0) == pytest.approx(0.8, abs=1e-3)
    assert mde == pytest.approx(3.37, abs=0.01)
    with pytest.raises(ValueError, match="n must be >= 2"):
        power_paired_t(1, 1.0, 1.0)


def test_chi2_matches_scipy():
    assert chi2_cdf(23.36, 30) == pytest.approx(0.19982436322089175, abs=1e-10)
    assert chi2_cdf(100, 80) == pytest.approx(0.935429631078867, abs=1e-10)
    assert chi2_quantile(0.2, 30) == pytest.approx(23.36411457379007, abs=1e-6)
    assert chi2_quantile(0.2, 1) == pytest.approx(0.0641847546673016, abs=1e-8)
    assert chi2_quantile(0.9, 4) == pytest.approx(7.779440339734858, abs=1e-6)
    assert sd_upper_bound(2.0, 30, 0.8) == pytest.approx(2.0 * math.sqrt(30 / 23.36411457379007), abs=1e-6)


def test_pooled_sd_and_paired_sds_by_hand():
    # groups [1, 3] (ss 2, df 1) and [0, 0, 3] (mean 1, ss 1 + 1 + 4 = 6, df 2): sqrt(8 / 3)
    assert pooled_sd([[1, 3], [0, 0, 3]]) == pytest.approx((math.sqrt(8 / 3), 3))
    with pytest.raises(ValueError, match=">= 2 differences"):
        pooled_sd([[1.0]])
    res = {"g": {1: {"v": 1.0}, 2: {"v": 2.0}, 3: {"v": 5.0}}, "a": {1: {"v": 2.0}, 2: {"v": 2.5}, 9: {"v": 0.0}},
           "b": {1: {"v": 0.0}}, "x": {1: {"v": 1.0}, 2: {"v": 1.0}}}
    out = paired_sds(res, {"g": None, "a": "g", "b": "g", "x": "g"}, lambda r: r["v"], exclude=["x"])
    assert out == {"a": [1.0, 0.5]}  # b: one shared seed; x: excluded
