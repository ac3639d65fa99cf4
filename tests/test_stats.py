"""Paired statistics against known values and an independent implementation (scipy)."""

from __future__ import annotations

import pytest
from scipy.stats import binomtest

from lib.kits.stats import accuracy_ci, balanced_split, binomial_two_sided, mcnemar_exact, transitions


def test_transitions_count_each_outcome():
    before = [1, 1, 0, 0, 1, 0]
    after = [1, 0, 1, 0, 1, 1]
    assert transitions(before, after) == {"stayed_correct": 2, "became_correct": 2, "became_wrong": 1,
                                          "stayed_wrong": 1}
    with pytest.raises(ValueError, match="paired"):
        transitions([1, 0], [1])


def test_mcnemar_exact_known_values():
    # 1 gained, 10 lost: p = 2 * (C(11,0) + C(11,1)) / 2^11 = 24 / 2048
    before = [1] * 10 + [0] + [1] * 5
    after = [0] * 10 + [1] + [1] * 5
    result = mcnemar_exact(before, after)
    assert (result["gained"], result["lost"], result["discordant"]) == (1, 10, 11)
    assert result["p_value"] == pytest.approx(24 / 2048, abs=1e-15)
    assert mcnemar_exact([1, 0, 1], [1, 0, 1])["p_value"] == 1.0  # no discordant pair
    assert mcnemar_exact([1, 0], [0, 1])["p_value"] == 1.0  # balanced discordance


@pytest.mark.parametrize(("k", "n"), [(0, 5), (3, 20), (14, 18), (9, 9), (40, 100)])
def test_binomial_two_sided_matches_scipy(k, n):
    assert binomial_two_sided(k, n) == pytest.approx(binomtest(k, n, 0.5).pvalue, rel=1e-12)


def test_bootstrap_accuracy_interval():
    assert accuracy_ci([1] * 30) == (1.0, 1.0)
    low, high = accuracy_ci([1] * 50 + [0] * 50, n_boot=4000)
    # normal approximation: 0.5 +- 1.96 * 0.05
    assert low == pytest.approx(0.402, abs=0.02) and high == pytest.approx(0.598, abs=0.02)
    assert accuracy_ci([1, 0, 1, 1], seed=3) == accuracy_ci([1, 0, 1, 1], seed=3)


def test_balanced_split_is_deterministic_disjoint_and_balanced():
    correct = [i % 3 == 0 for i in range(60)]  # 20 solved, 40 failed
    parts = balanced_split(correct, 0.8, seed=4)
    assert parts == balanced_split(correct, 0.8, seed=4)
    assert parts != balanced_split(correct, 0.8, seed=5)
    assert [len(parts[k]) for k in ("train_correct", "train_wrong", "test_correct", "test_wrong")] == [16, 16, 4, 4]
    ids = [i for v in parts.values() for i in v]
    assert len(ids) == len(set(ids))
    assert all(correct[i] for i in parts["train_correct"] + parts["test_correct"])
    assert not any(correct[i] for i in parts["train_wrong"] + parts["test_wrong"])
    with pytest.raises(ValueError, match="raise n_problems"):
        balanced_split([True, False, False], 0.8)


def test_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    from lib.kits.stats import auc

    positive, negative = [0.9, 0.4, 0.4, 2.0, -1.0], [0.4, 0.1, -3.0, 0.5]
    expected = roc_auc_score([1] * 5 + [0] * 4, positive + negative)
    assert auc(positive, negative) == pytest.approx(expected, abs=1e-12)
    assert auc([1.0], [0.0]) == 1.0 and auc([0.0], [1.0]) == 0.0
