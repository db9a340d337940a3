"""sweeps.ablation.stats against values computed by hand (and by scipy on the same numbers where a quantile is needed)."""

import math

import pytest
from scipy import stats as sps

from sweeps.ablation.settings import Setting, find_setting, setting_of
from sweeps.ablation.stats import (
    BETTER,
    NO_DIFFERENCE,
    WORSE,
    compare_to_baseline,
    holm,
    mean_interval,
    paired_difference,
    verdict_table,
)
from sweeps.format import format_number

T_975_2DF = 4.302652729911275  # Student t quantile, 0.975, 2 degrees of freedom (tables: 4.303)


def test_mean_interval_is_student_t_over_seeds_and_stays_in_range():
    # mean 0.93, sd = sqrt((0.03^2 + 0.01^2 + 0.04^2) / 2) = sqrt(0.0013), half = t * sd / sqrt(3) = 0.08957
    mean, low, high = mean_interval([0.90, 0.92, 0.97])
    half = T_975_2DF * math.sqrt(0.0013) / math.sqrt(3)
    assert mean == pytest.approx(0.93)
    assert low == pytest.approx(0.93 - half) and low == pytest.approx(0.84043, abs=1e-5)
    assert high == 1.0  # 0.93 + 0.0896 > 1: an accuracy interval never leaves [0, 1]
    mean, low, high = mean_interval([0.05, 0.02, 0.01])
    assert low == 0.0 and high == pytest.approx(0.08 / 3 + T_975_2DF * sps.tstd([0.05, 0.02, 0.01]) / math.sqrt(3))
    # The example: two seeds gave [-0.14, 0.61] under a plain t interval.
    assert mean_interval([0.1, 0.37])[1] == 0.0


def test_mean_interval_edge_cases():
    assert mean_interval([0.8, 0.8, 0.8]) == pytest.approx((0.8, 0.8, 0.8))
    mean, low, high = mean_interval([0.7, float("nan")])
    assert mean == 0.7 and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(v) for v in mean_interval([]))


def test_holm_by_hand():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max(0.06, 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.02, float("nan"), 0.5])  # NaN is not a comparison: m = 2
    assert out[0] == pytest.approx(0.04) and math.isnan(out[1]) and out[2] == pytest.approx(0.5)
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1


def test_paired_difference_is_the_paired_t_test():
    setting = {0: 0.95, 1: 0.96, 2: 0.97, 9: 0.5}  # seed 9 has no baseline run: not paired
    baseline = {0: 0.90, 1: 0.93, 2: 0.91}
    c = paired_difference(setting, baseline, "3x3 2d")
    diffs = [0.05, 0.03, 0.06]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)  # 0.015275
    t = mean / (sd / math.sqrt(3))  # 5.2915
    assert c.seeds == (0, 1, 2) and c.difference == pytest.approx(mean)
    assert t == pytest.approx(5.2915, abs=1e-4)
    assert c.p_value == pytest.approx(2 * sps.t.sf(t, 2))  # two-sided, 2 degrees of freedom
    assert c.low == pytest.approx(mean - T_975_2DF * sd / math.sqrt(3))
    assert c.high == pytest.approx(mean + T_975_2DF * sd / math.sqrt(3))


def test_paired_difference_without_spread_or_pairs():
    same = paired_difference({0: 0.9, 1: 0.8}, {0: 0.9, 1: 0.8})
    assert same.difference == 0 and math.isnan(same.p_value)
    one = paired_difference({0: 0.9}, {0: 0.8, 1: 0.7})
    assert one.seeds == (0,) and one.difference == pytest.approx(0.1) and math.isnan(one.low)
    assert math.isnan(paired_difference({3: 0.9}, {0: 0.8}).difference)


def test_compare_to_baseline_corrects_for_the_number_of_comparisons():
    base = {0: 0.90, 1: 0.93, 2: 0.91}
    settings = {
        "none": base,
        "up": {0: 0.95, 1: 0.98, 2: 0.97},  # diffs 0.05, 0.05, 0.06: tight
        "down": {0: 0.80, 1: 0.84, 2: 0.80},  # diffs -0.10, -0.09, -0.11
        "flat": {0: 0.92, 1: 0.91, 2: 0.92},  # diffs 0.02, -0.02, 0.01
    }
    out = {c.setting: c for c in compare_to_baseline(settings, "none")}
    raw = {k: sps.ttest_rel(list(v.values()), list(base.values())).pvalue for k, v in settings.items() if k != "none"}
    order = sorted(raw, key=raw.get)  # Holm by hand: 3 * smallest, then 2 * next (monotone), then 1 * largest
    expected = {order[0]: 3 * raw[order[0]]}
    expected[order[1]] = max(expected[order[0]], 2 * raw[order[1]])
    expected[order[2]] = min(1.0, max(expected[order[1]], raw[order[2]]))
    for name, p in expected.items():
        assert out[name].p_adjusted == pytest.approx(p)
    assert (out["up"].verdict, out["down"].verdict, out["flat"].verdict) == (BETTER, WORSE, NO_DIFFERENCE)
    # Joint intervals: each at 1 - 0.05 / 3 (t quantile 0.99167 with 2 degrees of freedom).
    d = [0.05, 0.05, 0.06]
    half = sps.t.ppf(1 - 0.05 / 3 / 2, 2) * sps.tstd(d) / math.sqrt(3)
    assert out["up"].low == pytest.approx(sum(d) / 3 - half) and out["up"].high == pytest.approx(sum(d) / 3 + half)
    with pytest.raises(KeyError, match="'abs' is not among the settings"):
        compare_to_baseline(settings, "abs")


def test_settings_are_named_as_users_name_them():
    none = setting_of({"enabled": False, "window_size": [7, 7]})
    assert none == Setting("none", "clip", None) and none.key == "none" and none.label == "none"
    learned = setting_of({"enabled": False}, pos_embed="learned")
    assert learned.key == "abs" and learned.label == "abs (learned)"
    local = setting_of({"window_size": "5x5", "bias_type": "2d", "mode": "local"}, pos_embed="sincos")
    assert local.key == "2d-5x5-local+abs-sincos" and local.label == "abs (sincos)+rpb 2d 5x5 local"
    assert setting_of({"window_size": 3, "bias_type": "1d"}).label == "rpb 1d 3x3"
    assert sorted([local, learned, none]) == [local, none, learned]  # bias type, mode, window, position
    assert find_setting("ABS (learned)", [none, learned]) is learned and find_setting("abs", [none, learned]) is learned
    with pytest.raises(KeyError, match="names no setting of this ablation; choose one of: 2d-5x5-local"):
        find_setting("none", [local])


def test_verdict_table_puts_the_baseline_first():
    none, w3 = setting_of({"enabled": False}), setting_of({"window_size": 3})
    header, rows, comparisons = verdict_table({w3: {0: 0.95, 1: 0.98, 2: 0.97}, none: {0: 0.9, 1: 0.93, 2: 0.91}}, none)
    assert header[0] == "setting" and header[-1] == "verdict"
    assert rows[0] == ("none", "3", "0.913", rows[0][3], "baseline", "", "", "")
    # one comparison: no correction; diffs 0.05, 0.05, 0.06 -> mean +0.053
    assert rows[1][0] == "rpb 2d 3x3" and rows[1][4] == "+0.053" and rows[1][-1] == BETTER
    assert comparisons[0].p_adjusted == pytest.approx(comparisons[0].p_value)


@pytest.mark.parametrize(
    "value, text",
    [
        (0.0012520653814999472, "0.00125"),
        (590.3, "590"),
        (1234.5, "1.23k"),
        (999.7, "1k"),
        (1234567, "1.23M"),
        (4321, "4321"),
        (3.12e-5, "3.12e-5"),
        (float("nan"), "n/a"),
        (None, "n/a"),
        ("clip", "clip"),
    ],
)
def test_format_number(value, text):
    assert format_number(value) == text
