"""The intervals tt-report quotes, against a hand-written t table and hand-computed means and deviations."""
from __future__ import annotations

import math

import pytest

from twinturbo.train.report.stats import mean_interval, paired_difference, t_quantile

# t_{0.975, df} from any printed table
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_t_quantile_matches_the_printed_table(df):
    assert t_quantile(df) == pytest.approx(T_TABLE[df], abs=5e-4)


def test_mean_interval_of_three_seeds_by_hand():
    # values 68, 70, 72: mean 70, sample sd 2, half-width 4.303 * 2 / sqrt(3) = 4.969
    interval = mean_interval([68.0, 70.0, 72.0])
    assert interval.mean == 70.0 and interval.n == 3
    assert interval.half_width == pytest.approx(4.303 * 2 / math.sqrt(3), abs=1e-3)
    assert interval.text() == "70.00 ± 4.97"
    single = mean_interval([65.5])
    assert math.isnan(single.half_width) and single.text() == "65.50 (n=1)"


def test_paired_difference_uses_only_common_seeds_and_counts_positive_ones():
    setup = {42: 71.0, 1337: 70.0, 3435: 68.0, 7: 99.0}
    reference = {42: 68.0, 1337: 69.0, 3435: 68.5}
    paired = paired_difference(setup, reference)
    # differences +3, +1, -0.5: mean 1.1667, sd 1.7559, half-width 4.303 * 1.7559 / sqrt(3) = 4.362
    assert paired.seeds == (42, 1337, 3435) and paired.positive == 2
    assert paired.difference.mean == pytest.approx(7 / 6)
    assert paired.difference.half_width == pytest.approx(4.303 * 1.755942 / math.sqrt(3), abs=2e-3)
    assert paired.difference.text(signed=True) == "+1.17 ± 4.36"
    assert paired_difference({1: 1.0}, {2: 1.0}) is None
