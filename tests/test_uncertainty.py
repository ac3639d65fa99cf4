"""Intervals, rules and control ranks of lib.kits.uncertainty, checked against simulations and hand counts."""

from __future__ import annotations

import numpy as np
import pytest

from lib.kits.uncertainty import (
    Estimate,
    Rule,
    bootstrap,
    controls_for_floor,
    mean_difference,
    rank_p_value,
    ratio_of_means,
)


def test_interval_covers_a_known_effect_at_its_nominal_rate():
    """300 simulated paired experiments (40 rows, true mean difference 0.3, correlated arms): the 90% interval
    covers 0.3 in 84-96% of them (a binomial band around 90% for 300 trials), and the 95% interval more often."""
    rng = np.random.default_rng(1)
    covered = {0.90: 0, 0.95: 0}
    for trial in range(300):
        shared = rng.normal(0, 1, 40)
        control = shared + rng.normal(0, 0.5, 40)
        treated = shared + 0.3 + rng.normal(0, 0.5, 40)
        for level in covered:
            estimate = mean_difference(treated, control, n_boot=400, level=level, seed=trial)
            covered[level] += estimate.low <= 0.3 <= estimate.high
    rate90, rate95 = covered[0.90] / 300, covered[0.95] / 300
    assert 0.84 <= rate90 <= 0.96, rate90
    assert rate95 >= rate90 and rate95 >= 0.89, rate95


def test_pairing_is_kept_so_a_shared_row_effect_cancels():
    """Rows that differ hugely between themselves but by exactly 1.0 between arms: the paired interval is [1, 1].
    An unpaired resampling of each arm would give an interval several units wide."""
    rng = np.random.default_rng(0)
    control = rng.normal(0, 10, 30)
    estimate = mean_difference(control + 1.0, control, n_boot=500)
    assert estimate.value == pytest.approx(1.0) and estimate.high - estimate.low < 1e-9


def test_clusters_move_together():
    """Each row copied 5 times: resampled by row, the interval is about sqrt(5) too narrow; resampled by cluster
    (the copies of one row), it matches the interval of the data without copies."""
    rng = np.random.default_rng(2)
    base = rng.normal(0, 1, 30)
    copies = np.repeat(base, 5)
    labels = np.repeat(np.arange(30), 5)
    alone = bootstrap(np.mean, base, n_boot=3000, seed=0)
    naive = bootstrap(np.mean, copies, n_boot=3000, seed=0)
    clustered = bootstrap(np.mean, copies, clusters=labels, n_boot=3000, seed=0)
    width = lambda e: e.high - e.low  # noqa: E731
    assert clustered.n == 30 and naive.n == 150
    assert width(clustered) == pytest.approx(width(alone), rel=0.15)
    assert width(naive) < 0.6 * width(clustered)


def test_ratio_of_means_and_its_refusals():
    numerator, denominator = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 4.0, 6.0, 8.0])
    estimate = ratio_of_means(numerator, denominator, n_boot=200)
    assert estimate.value == pytest.approx(0.5) and estimate.low == pytest.approx(0.5)
    with pytest.raises(ValueError, match="undefined"):
        ratio_of_means([1.0, 1.0, 1.0], [1.0, 0.0, -1.0], n_boot=500)  # the mean below is 0 on many draws
    with pytest.raises(ValueError, match="one length"):
        mean_difference([1.0, 2.0], [1.0], n_boot=200)
    with pytest.raises(ValueError, match="at least 2"):
        mean_difference([1.0], [1.0], n_boot=200)
    with pytest.raises(ValueError, match="n_boot=10"):
        mean_difference([1.0, 2.0], [1.0, 2.0], n_boot=10)


@pytest.mark.parametrize(("low", "high", "direction", "verdict"), [
    (0.52, 0.70, ">=", "holds"), (0.30, 0.49, ">=", "fails"), (0.45, 0.60, ">=", "inconclusive"),
    (0.50, 0.60, ">=", "holds"),  # the threshold itself is on the rule's side
    (0.10, 0.40, "<=", "holds"), (0.55, 0.90, "<=", "fails"), (0.40, 0.60, "<=", "inconclusive"),
])
def test_rule_answers_from_the_interval_not_the_point(low, high, direction, verdict):
    """LoRA attention's 0.528 against a 0.5 cut: with an interval across 0.5 the rule is inconclusive, whatever
    side the point estimate is on."""
    rule = Rule("keeps half", 0.5, direction, source="ours")
    estimate = Estimate(0.528, low, high, n=36)
    assert rule.verdict(estimate) == verdict
    answer = rule.answer(estimate, comparisons=12)
    assert answer["verdict"] == verdict and answer["comparisons"] == 12 and answer["source"] == "ours"
    assert (answer["low"], answer["high"], answer["value"]) == (low, high, 0.528)


def test_rank_p_value_states_its_floor():
    """4 random directions can never give p below 0.2: the floor is reported beside p."""
    rank = rank_p_value(0.9, [0.1, 0.2, 0.3, 0.4])
    assert (rank.p, rank.floor, rank.at_least_as_large) == (0.2, 0.2, 0)
    rank = rank_p_value(0.25, [0.1, 0.2, 0.3, 0.4])
    assert rank.p == pytest.approx(3 / 5) and rank.at_least_as_large == 2
    rank = rank_p_value(-0.9, [-0.1, -0.2, -0.95], larger_is_more=False)
    assert rank.at_least_as_large == 1 and rank.p == pytest.approx(2 / 4) and rank.effect == -0.9
    assert [controls_for_floor(f) for f in (0.2, 0.05, 0.01)] == [4, 19, 99]
    assert rank_p_value(1.0, [0.0] * controls_for_floor(0.05)).floor == pytest.approx(0.05)
    with pytest.raises(ValueError, match="controls is empty"):
        rank_p_value(1.0, [])

