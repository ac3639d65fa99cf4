"""pass@k against brute-force enumeration, and its intervals."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest

from lib.kits.passk import mean_pass_at_k, pass_at_k, pass_at_k_ci, wilson_interval


def brute_force(n: int, c: int, k: int) -> Fraction:
    """Fraction of all k-subsets of n samples (the first c right) that contain at least one right sample."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(i < c for i in subset) for subset in subsets), len(subsets))


def test_estimator_equals_enumeration():
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = brute_force(n, c, k)
                assert exact == 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
                assert math.isclose(pass_at_k(n, c, k), float(exact), rel_tol=0, abs_tol=1e-12), (n, c, k)


def test_edge_cases():
    assert pass_at_k(5, 0, 1) == 0.0 and pass_at_k(5, 0, 5) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(5, 1, 5) == 1.0  # k = n: any right sample is drawn
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction right
    assert pass_at_k(1, 1, 1) == 1.0
    # large n stays finite and accurate where the binomials would overflow floats
    assert pass_at_k(2000, 1, 1) == pytest.approx(1 / 2000)
    assert 0.0 < pass_at_k(5000, 3, 100) < 1.0


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((5, 6, 1), ValueError, "c=6"),
        ((5, -1, 1), ValueError, "c=-1"),
        ((5, 2, 0), ValueError, "k=0"),
        ((5, 2, 6), ValueError, "k=6"),
        ((0, 0, 1), ValueError, "n=0"),
        ((5.0, 2, 1), TypeError, "n=5.0"),
        ((5, True, 1), TypeError, "c=True"),
    ],
)
def test_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        pass_at_k(*args)


def test_mean_pass_at_k():
    assert mean_pass_at_k([0, 4, 2], n=4, k=1) == pytest.approx((0 + 1 + 0.5) / 3)
    assert mean_pass_at_k([1, 1], n=4, k=4) == 1.0
    with pytest.raises(ValueError, match="correct_counts"):
        mean_pass_at_k([], n=4, k=1)
    with pytest.raises(ValueError, match="c=5"):
        mean_pass_at_k([5], n=4, k=1)


def test_bootstrap_interval():
    values = [0.0] * 30 + [1.0] * 10
    low, high = pass_at_k_ci(values, seed=0)
    assert low < 0.25 < high and low > 0.05 and high < 0.45
    assert pass_at_k_ci(values, seed=0) == (low, high)  # deterministic
    narrow = pass_at_k_ci(values, level=0.5)
    assert low <= narrow[0] <= narrow[1] <= high
    assert pass_at_k_ci([0.3]) == (0.3, 0.3)
    with pytest.raises(ValueError, match="per_problem"):
        pass_at_k_ci([])
    with pytest.raises(ValueError, match="level=1.5"):
        pass_at_k_ci(values, level=1.5)
    with pytest.raises(ValueError, match="n_boot=0"):
        pass_at_k_ci(values, n_boot=0)


def test_wilson_interval():
    low, high = wilson_interval(9, 64)
    assert low < 9 / 64 < high
    assert low == pytest.approx(0.0758, abs=1e-3) and high == pytest.approx(0.2462, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 10)[1] > 0.0
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] < 1.0
    assert wilson_interval(32, 64, level=0.99)[0] < wilson_interval(32, 64)[0]
    with pytest.raises(ValueError, match="successes=11"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="trials=0"):
        wilson_interval(0, 0)
