"""Paired statistics for "did steering change which problems the model solves?".

Two runs on the same problems are paired: the exact McNemar test looks only at the discordant
problems (solved by one run, not the other), which is the sign test on those pairs. Accuracy
intervals bootstrap over problems (`lib.kits.passk.pass_at_k_ci`). A direction's rank among random
directions (KL-matched, `lib.kits.controls`) is `lib.kits.uncertainty.rank_p_value`, with its floor.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from lib.kits.passk import pass_at_k_ci

TRANSITIONS = ("stayed_correct", "became_correct", "became_wrong", "stayed_wrong")


def _flags(name: str, values: Sequence[bool | int]) -> list[bool]:
    flags = [bool(v) for v in values]
    if any(v not in (0, 1, True, False) for v in values):
        raise ValueError(f"{name} must hold booleans (solved or not), got {sorted(set(values))[:5]}")
    return flags


def transitions(baseline: Sequence[bool], steered: Sequence[bool]) -> dict[str, int]:
    """Counts of the four per-problem outcomes between a baseline run and a steered run."""
    before, after = _flags("baseline", baseline), _flags("steered", steered)
    if len(before) != len(after):
        raise ValueError(f"baseline has {len(before)} problems, steered {len(after)}: they must be paired")
    counts = dict.fromkeys(TRANSITIONS, 0)
    for b, a in zip(before, after, strict=True):
        counts[("stayed_correct" if a else "became_wrong") if b else ("became_correct" if a else "stayed_wrong")] += 1
    return counts


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p of k successes in n fair coin flips: 2 * P(X <= min(k, n - k)), capped at 1."""
    if not 0 <= k <= n:
        raise ValueError(f"k={k} must satisfy 0 <= k <= n={n}")
    if n == 0:
        return 1.0
    low = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def mcnemar_exact(baseline: Sequence[bool], steered: Sequence[bool]) -> dict[str, Any]:
    """Exact McNemar test (the sign test on discordant pairs) of a steered run against its baseline.

    Returns the discordant counts and the two-sided p; with no discordant pair p is 1 (no evidence either way).
    """
    counts = transitions(baseline, steered)
    gained, lost = counts["became_correct"], counts["became_wrong"]
    return {"gained": gained, "lost": lost, "discordant": gained + lost,
            "p_value": binomial_two_sided(gained, gained + lost)}


def accuracy_ci(correct: Sequence[bool], level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of accuracy over problems."""
    return pass_at_k_ci([float(v) for v in _flags("correct", correct)], level=level, n_boot=n_boot, seed=seed)


def balanced_split(correct: Sequence[bool], train_fraction: float = 0.8, seed: int = 0) -> dict[str, list[int]]:
    """Balance solved and failed problems (n = the smaller count of each), then split each class train/test.

    Deterministic for a seed; the classes are split separately so train and test stay balanced. Returns problem
    indices: train_correct, train_wrong, test_correct, test_wrong (disjoint).
    """
    flags = _flags("correct", correct)
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction={train_fraction} must be between 0 and 1")
    right = [i for i, f in enumerate(flags) if f]
    wrong = [i for i, f in enumerate(flags) if not f]
    n = min(len(right), len(wrong))
    n_train = round(n * train_fraction)
    if n_train < 1 or n - n_train < 1:
        raise ValueError(f"{len(right)} solved and {len(wrong)} failed problems give {n} per class, too few for a "
                         f"train/test split at train_fraction={train_fraction}: raise n_problems")
    rng = random.Random(seed)
    rng.shuffle(right)
    rng.shuffle(wrong)
    right, wrong = sorted(right[:n]), sorted(wrong[:n])
    order = random.Random(seed + 1)
    order.shuffle(right)
    order.shuffle(wrong)
    return {"train_correct": sorted(right[:n_train]), "train_wrong": sorted(wrong[:n_train]),
            "test_correct": sorted(right[n_train:]), "test_wrong": sorted(wrong[n_train:])}


def auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counted half
    (the Mann-Whitney U statistic over all pairs). 0.5 is chance."""
    if not positive or not negative:
        raise ValueError("auc needs at least one positive and one negative score")
    wins = sum((p > n) + 0.5 * (p == n) for p in positive for n in negative)
    return wins / (len(positive) * len(negative))
