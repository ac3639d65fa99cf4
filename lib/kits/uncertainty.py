"""Uncertainty for every effect a steering experiment reports: paired bootstrap intervals, rules that answer from
an interval, and control ranks with their floor.

Why (issue "One evaluation kit"): the journal's verdicts sat on point estimates against thresholds (LoRA attention
retained 0.528 against a 0.5 cut), and a random-control p-value of 0.2 from 4 directions read like a result although
0.2 is the smallest p-value 4 directions can give. Here:
- `bootstrap` resamples rows (or clusters of rows: all rows of one prompt, or one seed's rows, move together) and
  evaluates any statistic of paired arrays on the same draw, so differences and ratios (retained fractions) get
  intervals that keep the pairing;
- `Rule` answers "holds", "fails" or "inconclusive" from an interval, never from the point estimate;
- `rank_p_value` reports the floor 1/(n+1) beside p, and `controls_for_floor` says how many controls a target floor
  needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

Verdict = Literal["holds", "fails", "inconclusive"]


@dataclass(frozen=True)
class Estimate:
    """A statistic with its percentile bootstrap interval (`level`, e.g. 0.95) over `n` rows or clusters."""

    value: float
    low: float
    high: float
    n: int
    level: float = 0.95
    n_boot: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}]"


def bootstrap(statistic: Callable[..., float], *arrays: Sequence[float] | np.ndarray,
              clusters: Sequence[Any] | None = None, n_boot: int = 2000, level: float = 0.95,
              seed: int = 0) -> Estimate:
    """`statistic(*arrays)` with a paired percentile bootstrap interval.

    arrays: per-row values of equal length (e.g. steered and unsteered scores of the same rows); each draw resamples
        the same row indices in every array, so the pairing is kept.
    clusters: one label per row; whole clusters are resampled (rows of one prompt, or of one seed, move together).
        The interval then reflects the number of clusters, not of rows.
    A statistic that is undefined on a draw (NaN, e.g. a ratio over a zero) makes that draw count as missing; more
    than 1% missing draws is an error, because the interval would then describe a selected subset of draws.
    """
    if not arrays:
        raise ValueError("bootstrap needs at least one array of per-row values")
    values = [np.asarray(a, dtype=np.float64) for a in arrays]
    n_rows = len(values[0])
    if any(v.ndim != 1 or len(v) != n_rows for v in values):
        raise ValueError(f"arrays must be 1-D and of one length (rows); got shapes {[v.shape for v in values]}")
    if n_rows < 2:
        raise ValueError(f"{n_rows} rows: a bootstrap interval needs at least 2")
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1), e.g. 0.95")
    if n_boot < 100:
        raise ValueError(f"n_boot={n_boot} is too few for a {level:.0%} interval; use >= 1000")
    labels = np.arange(n_rows) if clusters is None else np.asarray(list(clusters))
    if len(labels) != n_rows:
        raise ValueError(f"clusters has {len(labels)} labels for {n_rows} rows")
    groups = [np.flatnonzero(labels == label) for label in dict.fromkeys(labels.tolist())]
    if len(groups) < 2:
        raise ValueError("one cluster: the bootstrap needs at least 2 clusters to resample")
    value = float(statistic(*values))
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for b in range(n_boot):
        picked = rng.integers(0, len(groups), len(groups))
        index = np.concatenate([groups[g] for g in picked])
        draws[b] = statistic(*(v[index] for v in values))
    missing = np.isnan(draws)
    if missing.mean() > 0.01:
        raise ValueError(f"the statistic was undefined (NaN) on {missing.mean():.1%} of the draws; it cannot be "
                         "bootstrapped on these rows (e.g. a ratio whose denominator is often 0)")
    tail = (1 - level) / 2
    low, high = np.quantile(draws[~missing], [tail, 1 - tail])
    return Estimate(value, float(low), float(high), len(groups), level, n_boot)


def mean_difference(treated: Sequence[float], control: Sequence[float], **kwargs: Any) -> Estimate:
    """Mean of treated - control over paired rows, with its bootstrap interval (`bootstrap`'s keywords)."""
    return bootstrap(lambda a, b: float(np.mean(a - b)), treated, control, **kwargs)


def ratio_of_means(numerator: Sequence[float], denominator: Sequence[float], **kwargs: Any) -> Estimate:
    """mean(numerator) / mean(denominator) over paired rows (e.g. a variant's swing over the full delta's swing: a
    retained fraction), with its bootstrap interval."""

    def ratio(a: np.ndarray, b: np.ndarray) -> float:
        below = float(np.mean(b))
        return float(np.mean(a)) / below if below != 0 else float("nan")

    return bootstrap(ratio, numerator, denominator, **kwargs)


@dataclass(frozen=True)
class Rule:
    """A threshold rule answered from an interval: "holds" when the whole interval is on the rule's side of the
    threshold, "fails" when the whole interval is on the other side, else "inconclusive". `source` says whose rule
    it is (a seed workflow, quoted in `text`, or "ours"), so a report never passes our threshold off as the seed's."""

    name: str
    threshold: float
    direction: Literal[">=", "<="]
    source: str = "ours"
    text: str = ""

    def __post_init__(self) -> None:
        if self.direction not in (">=", "<="):
            raise ValueError(f"direction={self.direction!r} must be '>=' or '<='")
        if not math.isfinite(self.threshold):
            raise ValueError(f"threshold={self.threshold} must be finite")

    def verdict(self, estimate: Estimate) -> Verdict:
        low, high = estimate.low, estimate.high
        if self.direction == ">=":
            return "holds" if low >= self.threshold else "fails" if high < self.threshold else "inconclusive"
        return "holds" if high <= self.threshold else "fails" if low > self.threshold else "inconclusive"

    def answer(self, estimate: Estimate, comparisons: int = 1) -> dict[str, Any]:
        """The verdict with everything it read: the rule, the estimate and its interval, and how many comparisons
        were made beside it (intervals are per comparison, not adjusted)."""
        return {"rule": self.name, "source": self.source, "text": self.text, "threshold": self.threshold,
                "direction": self.direction, "verdict": self.verdict(estimate), **estimate.as_dict(),
                "comparisons": comparisons}


@dataclass(frozen=True)
class ControlRank:
    """How an effect ranks among control effects (random or label-shuffled): p = (1 + #controls >= effect) /
    (n + 1), one-sided, and its floor 1/(n + 1), the smallest p `n` controls can give."""

    effect: float
    n_controls: int
    at_least_as_large: int
    p: float
    floor: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rank_p_value(effect: float, controls: Sequence[float], larger_is_more: bool = True) -> ControlRank:
    """Rank an effect among control effects (same construction from random directions, or shuffled labels)."""
    values = np.asarray(list(controls), dtype=np.float64)
    if values.size == 0:
        raise ValueError("controls is empty: a rank p-value needs at least one control effect")
    if not larger_is_more:
        effect, values = -effect, -values
    count = int(np.sum(values >= effect))
    n = int(values.size)
    return ControlRank(float(effect if larger_is_more else -effect), n, count, (1 + count) / (n + 1), 1 / (n + 1))


def controls_for_floor(floor: float) -> int:
    """The number of controls whose rank p-value can reach `floor` (p >= 1/(n + 1)): 19 for 0.05, 99 for 0.01."""
    if not 0 < floor < 1:
        raise ValueError(f"floor={floor} must be in (0, 1), e.g. 0.05")
    return max(1, math.ceil(1 / floor - 1 - 1e-9))
