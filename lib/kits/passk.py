"""pass@k and its uncertainty: the unbiased estimator of Chen et al. (2021) with problem-level intervals.

pass@k is the chance that at least one of k samples is right. Estimating it as "any right among the first k" wastes
samples and is noisy; drawing n >= k samples per problem, counting c right ones and computing
1 - C(n-c, k) / C(n, k) uses all of them and is unbiased. Problems, not samples, are the unit of replication, so
confidence intervals bootstrap over problems (samples of one problem are correlated).
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Sequence
from statistics import NormalDist


def _integer(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be an integer")
    return int(value)


def _check_nk(n: object, k: object) -> tuple[int, int]:
    n, k = _integer("n", n), _integer("k", k)
    if n < 1:
        raise ValueError(f"n={n} must be >= 1 (samples per problem)")
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must satisfy 1 <= k <= n={n}")
    return n, k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with `c` right out of `n` samples: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which avoids the huge binomials of the direct form.
    """
    n, k = _check_nk(n, k)
    c = _integer("c", c)
    if not 0 <= c <= n:
        raise ValueError(f"c={c} must satisfy 0 <= c <= n={n}")
    if n - c < k:  # every k-subset contains a right sample
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def mean_pass_at_k(correct_counts: Sequence[int], n: int, k: int) -> float:
    """pass@k of a benchmark: the mean over problems of `pass_at_k(n, c, k)`, each problem with n samples."""
    if len(correct_counts) == 0:
        raise ValueError("correct_counts is empty: need at least one problem")
    return sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts)


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level} must be strictly between 0 and 1")


def pass_at_k_ci(
    per_problem: Sequence[float], level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean of per-problem scores (e.g. `pass_at_k` values).

    Resamples problems with replacement, which accounts for between-problem variance - the dominant source of
    uncertainty with a few dozen problems. Deterministic for a given seed.
    """
    values = [float(v) for v in per_problem]
    if not values:
        raise ValueError("per_problem is empty: need at least one problem")
    _check_level(level)
    if _integer("n_boot", n_boot) < 1:
        raise ValueError(f"n_boot={n_boot} must be >= 1")
    rng = random.Random(seed)
    size = len(values)
    means = sorted(sum(rng.choices(values, k=size)) / size for _ in range(n_boot))
    tail = (1.0 - level) / 2.0
    low = means[max(0, math.floor(tail * n_boot))]
    high = means[min(n_boot - 1, math.ceil((1.0 - tail) * n_boot) - 1)]
    return low, high


def wilson_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion, e.g. greedy pass@1 = right problems / problems.

    Better than the normal approximation at the small counts and extreme rates seen here (9/64); it assumes
    independent trials, so use one sample per problem - with several, bootstrap over problems instead.
    """
    successes, trials = _integer("successes", successes), _integer("trials", trials)
    if trials < 1:
        raise ValueError(f"trials={trials} must be >= 1")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes={successes} must satisfy 0 <= successes <= trials={trials}")
    _check_level(level)
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    p = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: rounding would leave 1e-17
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high
