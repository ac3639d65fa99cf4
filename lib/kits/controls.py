"""Controls a steering claim needs: random directions matched in KL as well as norm, and label-shuffled nulls.

Why (issue "One evaluation kit"): a norm-matched random delta barely changed the model (KL 0.002 against the trained
dW's 0.275), so "the trained delta does more than a random one" compared a strong intervention with almost none.
A control must change the model as much as the intervention does (matched KL on neutral text) and still carry no
behaviour. The other null is the same construction from shuffled labels: what the pipeline finds when there is
nothing to find.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lib.evals import Rendering, mean_kl, next_token_kl, text_logprobs
from lib.hooks import Steering
from lib.kits.data import NEUTRAL_TEXTS
from lib.kits.delta_ablation import norm_matched_random
from lib.vectors import SteeringVector, random_like
from lib.weights import WeightDelta, apply_delta


class KLUnreachable(ValueError):
    """No probed scale brought the control's KL within tolerance of the target: in a small model a random direction's
    KL can saturate below what a trained direction reaches (the normalisation caps what any added direction does)."""


@dataclass(frozen=True)
class KLMatch:
    """The scale at which a control's KL on neutral text reaches the target, and every (scale, KL) it tried."""

    scale: float
    kl: float
    target: float
    tried: list[tuple[float, float]]

    @property
    def relative_error(self) -> float:
        return abs(self.kl - self.target) / self.target


def _checked(target: float, rel_tol: float) -> None:
    if not target > 0:
        raise ValueError(f"target={target} must be a positive KL (nats)")
    if not 0 < rel_tol < 1:
        raise ValueError(f"rel_tol={rel_tol} must be in (0, 1)")


def _search(target: float, start: float, rel_tol: float, probes: int,
            max_rounds: int) -> Generator[list[float], list[float], KLMatch]:
    """One scale search as a generator: it yields the scales to measure next and is sent their KLs; it returns the
    match or raises KLUnreachable. `match_kl` drives one, `match_kl_jointly` several in one pass a round."""
    tried: list[tuple[float, float]] = []

    def close(kl: float) -> bool:
        return abs(kl - target) <= rel_tol * target

    scales = [start * 2.0 ** k for k in range(-3, probes - 3)]
    low, high = 0.0, None
    for _ in range(max_rounds):
        values = [float(v) for v in (yield scales)]
        if len(values) != len(scales):
            raise ValueError(f"kl_at returned {values} for scales {scales}: one KL per scale")
        if any(not math.isfinite(v) for v in values):  # e.g. a bf16 model overflowing at a huge scale
            raise KLUnreachable(f"the KL is not finite at scales {scales} ({values}) before reaching {target:.4g}")
        tried.extend(zip(scales, values, strict=True))
        for scale, kl in zip(scales, values, strict=True):
            if close(kl):
                return KLMatch(scale, kl, target, tried)
            if kl < target:
                low = max(low, scale)
            elif high is None or scale < high:
                high = scale
        if high is None:  # not yet above the target: keep doubling
            scales = [scales[-1] * 2.0 ** (k + 1) for k in range(probes)]
        elif low == 0.0:  # not yet below it: keep halving
            scales = [high * 2.0 ** -(k + 1) for k in range(probes)]
        else:  # inside the bracket, on a log grid
            ratio = (high / low) ** (1 / (probes + 1))
            scales = [low * ratio ** (k + 1) for k in range(probes)]
    best = min(tried, key=lambda pair: abs(pair[1] - target))
    raise KLUnreachable(f"no scale reached KL {target:.4g} within {rel_tol:.0%} in {max_rounds} rounds (closest: scale "
                        f"{best[0]:.4g}, KL {best[1]:.4g}); the KL may not grow with the scale here")


def match_kl(kl_at: Callable[[Sequence[float]], Sequence[float]], target: float, *, start: float = 1.0,
             rel_tol: float = 0.05, probes: int = 4, max_rounds: int = 12) -> KLMatch:
    """The scale s >= 0 with kl_at(s) within `rel_tol` of `target`, for a KL that grows with s (it does for an
    added direction or delta on the scales that matter). `kl_at` takes several scales at once (one batched pass
    each round): first the bracket is found by doubling or halving `start`, then narrowed `probes` points a round
    on a log grid."""
    _checked(target, rel_tol)
    search = _search(target, start, rel_tol, probes, max_rounds)
    scales = next(search)
    try:
        while True:
            scales = search.send(list(kl_at(scales)))
    except StopIteration as done:
        return done.value


def match_kl_jointly(kl_at: Callable[[Sequence[tuple[int, float]]], Sequence[float]], targets: Sequence[float], *,
                     start: float = 1.0, rel_tol: float = 0.05, probes: int = 4,
                     max_rounds: int = 12) -> list[KLMatch | KLUnreachable]:
    """`match_kl` for several interventions at once: `kl_at` takes (intervention index, scale) pairs, every probe of
    every search still open, and measures them in one batched pass a round (K random directions at one layer share
    the blocks below it, `lib.trunk`). Each search probes exactly the scales it would alone. Per intervention, its
    match or the KLUnreachable it ended with."""
    for target in targets:
        _checked(target, rel_tol)
    searches = {i: _search(target, start, rel_tol, probes, max_rounds) for i, target in enumerate(targets)}
    results: dict[int, KLMatch | KLUnreachable] = {}
    asked = {i: next(search) for i, search in searches.items()}
    while asked:
        pairs = [(i, scale) for i, scales in asked.items() for scale in scales]
        values = [float(v) for v in kl_at(pairs)]
        if len(values) != len(pairs):
            raise ValueError(f"kl_at returned {len(values)} KLs for {len(pairs)} (index, scale) pairs")
        by_search: dict[int, list[float]] = {}
        for (i, _), value in zip(pairs, values, strict=True):
            by_search.setdefault(i, []).append(value)
        following = {}
        for i, kls in by_search.items():
            try:
                following[i] = searches[i].send(kls)
            except StopIteration as done:
                results[i] = done.value
            except KLUnreachable as error:
                results[i] = error
        asked = following
    return [results[i] for i in range(len(targets))]


def kl_matched_random(model: nn.Module, tokenizer: Any, vector: SteeringVector, target_kl: float, *, seed: int = 0,
                      texts: Sequence[str] = NEUTRAL_TEXTS, weight: float = 1.0, layers: Sequence[int] | None = None,
                      positions: Any = "all", rendering: str = "raw", rel_tol: float = 0.05, batch_size: int = 16,
                      progress: bool = False) -> tuple[SteeringVector, KLMatch]:
    """A random direction with `vector`'s per-layer norms (`random_like`, seed `seed`), rescaled so that steering
    with it at coefficient 1 has KL `target_kl` on `texts` (the KL of the intervention it controls for, measured
    with the same `rendering`, see `lib.evals.text_logprobs`). The scale search runs `next_token_kl` on a few
    coefficients per batched pass."""
    return kl_matched_randoms(model, tokenizer, vector, target_kl, seeds=[seed], texts=texts, weight=weight,
                              layers=layers, positions=positions, rendering=rendering, rel_tol=rel_tol,
                              batch_size=batch_size, progress=progress)[0]


def kl_matched_randoms(model: nn.Module, tokenizer: Any, vector: SteeringVector, target_kl: float, *,
                       seeds: Sequence[int], texts: Sequence[str] = NEUTRAL_TEXTS, weight: float = 1.0,
                       layers: Sequence[int] | None = None, positions: Any = "all", rendering: str = "raw",
                       rel_tol: float = 0.05, batch_size: int = 16,
                       progress: bool = False) -> list[tuple[SteeringVector, KLMatch]]:
    """`kl_matched_random` for one direction per seed, searched together (`match_kl_jointly`): each round measures
    every open search's probes in one `next_token_kl` pass with a vector per row, so K directions at one layer share
    the blocks below it. Raises KLUnreachable, naming the seed, if any direction cannot reach the KL."""
    if not seeds:
        raise ValueError("seeds is empty: give one seed per random direction")
    directions = [random_like(vector, seed=seed) for seed in seeds]

    def kl_at(pairs: Sequence[tuple[int, float]]) -> list[float]:
        steering = Steering([directions[i] for i, _ in pairs], weight, layers=layers, positions=positions)
        return next_token_kl(model, tokenizer, texts, steering=steering, coefficients=[s for _, s in pairs],
                             rendering=rendering, batch_size=batch_size, progress=progress).tolist()

    out = []
    for seed, direction, match in zip(seeds, directions, match_kl_jointly(kl_at, [target_kl] * len(seeds),
                                                                         rel_tol=rel_tol), strict=True):
        if isinstance(match, KLUnreachable):
            raise KLUnreachable(f"random direction seed {seed}: {match}")
        scaled = direction * match.scale
        scaled.meta.update({"method": "random_kl_matched", "seed": seed, "target_kl": target_kl, "kl": match.kl,
                            "scale_over_norm_matched": match.scale})
        out.append((scaled, match))
    return out


def match_kl_along(kl_of: Callable[[float], float], targets: Sequence[float], *, start: float = 1.0,
                   rel_tol: float = 0.05, max_probes: int = 24) -> list[KLMatch | KLUnreachable]:
    """The scales at which one curve KL(s) reaches each of several targets, every probe shared by all of them.

    Why: a weight delta's control is one random direction matched at each coefficient of a grid, and a weight edit
    cannot ride in a batch as rows, so every probe is one pass over the neutral texts. `match_kl` per coefficient
    spent 10-16 passes on each (17 of the 21 minutes of a LoRA seed in the Corrections run); along one curve the
    targets are searched in increasing order, each from the points already measured: a log-log secant inside the
    tightest bracket (kept 10% away from its ends, so the bracket always shrinks), outside it a step along the
    measured slope (KL ~ s^2 until two points give one), at most 8x a probe. A target answers KLMatch (its `tried`
    is every point measured on the curve so far) or KLUnreachable (a flat curve, or a KL that stops being finite)."""
    for target in targets:
        _checked(target, rel_tol)
    if not start > 0:
        raise ValueError(f"start={start} must be a positive scale")
    measured: dict[float, float] = {}

    def probe(scale: float) -> float:
        if scale not in measured:
            measured[scale] = float(kl_of(scale))
        return measured[scale]

    def one(target: float) -> KLMatch:
        for _ in range(max_probes + 1):
            finite = sorted((s, k) for s, k in measured.items() if math.isfinite(k))
            close = [p for p in finite if abs(p[1] - target) <= rel_tol * target]
            if close:
                scale, kl = min(close, key=lambda p: abs(p[1] - target))
                return KLMatch(scale, kl, target, sorted(measured.items()))
            above = [p for p in finite if p[1] > target]
            high = above[0] if above else None
            below = [p for p in finite if p[1] < target and (high is None or p[0] < high[0])]
            if not finite:
                scale = start
            elif high is None:  # all below: step up along the slope
                scale = below[-1][0] * _growth(below, target)
            elif not below:  # all above: step down
                scale = high[0] / _growth([(1 / s, k) for s, k in reversed(above)], target, down=True)
            else:
                scale = _secant(below[-1], high, target)
            if not math.isfinite(probe(scale)):
                raise KLUnreachable(f"the KL is not finite at scale {scale:.4g} ({measured[scale]}) before "
                                    f"reaching {target:.4g}")
        finite = [p for p in measured.items() if math.isfinite(p[1])]
        best = min(finite, key=lambda p: abs(p[1] - target)) if finite else (math.nan, math.nan)
        raise KLUnreachable(f"no scale reached KL {target:.4g} within {rel_tol:.0%} in {max_probes} probes "
                            f"(closest: scale {best[0]:.4g}, KL {best[1]:.4g}); the KL may not grow with the scale")

    results: dict[int, KLMatch | KLUnreachable] = {}
    for i in sorted(range(len(targets)), key=lambda j: targets[j]):
        try:
            results[i] = one(targets[i])
        except KLUnreachable as error:
            results[i] = error
    return [results[i] for i in range(len(targets))]


def _growth(points: list[tuple[float, float]], target: float, down: bool = False) -> float:
    """How far to step from the last of `points` (sorted by scale) toward `target`: the log-log slope of the last
    two (clamped to [0.5, 4]) or 2 (KL ~ s^2 for a small edit), the step kept within [2^0.25, 8]."""
    scale, kl = points[-1]
    if kl <= 0:
        return 8.0
    slope = 2.0
    if len(points) >= 2 and points[-2][1] > 0 and points[-2][1] != kl:
        slope = math.log(kl / points[-2][1]) / math.log(scale / points[-2][0])
        slope = min(max(abs(slope), 0.5), 4.0)
    ratio = (kl / target) if down else (target / kl)
    return min(max(ratio ** (1 / slope), 2 ** 0.25), 8.0)


def _secant(low: tuple[float, float], high: tuple[float, float], target: float) -> float:
    """The log-log interpolation of `target` between a point below and one above it, kept in the middle 80% of the
    bracket (in log scale); the geometric midpoint when the lower KL is not positive."""
    if low[1] <= 0:
        return math.sqrt(low[0] * high[0]) if low[0] > 0 else high[0] / 2
    fraction = (math.log(target) - math.log(low[1])) / (math.log(high[1]) - math.log(low[1]))
    fraction = min(max(fraction, 0.1), 0.9)
    return math.exp(math.log(low[0]) + fraction * (math.log(high[0]) - math.log(low[0])))


@torch.no_grad()
def kl_matched_random_deltas(model: nn.Module, tokenizer: Any, delta: WeightDelta, targets: Mapping[float, float], *,
                             seed: int = 0, texts: Sequence[str] = NEUTRAL_TEXTS, rendering: Rendering = "chat_reply",
                             rel_tol: float = 0.05, batch_size: int = 16, progress: bool = False,
                             ) -> dict[float, tuple[WeightDelta, KLMatch] | KLUnreachable]:
    """The control of `delta` along a coefficient grid: `targets` maps each coefficient c to the KL that `delta` has
    at c, and c answers a Gaussian random delta with `delta * c`'s per-tensor norms (`norm_matched_random`, seed
    `seed`: one direction for the whole grid, the same for c and -c) rescaled so that applying it at coefficient 1
    has that KL on `texts` with `rendering`, with its KLMatch (`scale` over the norm-matched delta of `delta * c`),
    or the KLUnreachable where no scale reaches it. The targets share one curve's probes (`match_kl_along`)."""
    if any(c == 0 for c in targets):
        raise ValueError("targets has coefficient 0: the unsteered model needs no control; drop it")
    unit = norm_matched_random(delta, seed=seed).delta
    reference = text_logprobs(model, tokenizer, texts, rendering=rendering, batch_size=batch_size, progress=False)
    bar = tqdm(desc=f"KL-matched random delta (seed {seed})", unit="pass", disable=not progress, leave=False)

    def kl_of(scale: float) -> float:
        with apply_delta(model, unit, float(scale)):
            kl = mean_kl(reference, text_logprobs(model, tokenizer, texts, rendering=rendering, batch_size=batch_size,
                                                  progress=False))
        bar.update(1)
        return kl

    coeffs = list(targets)
    start = min(abs(c) for c in coeffs) if coeffs else 1.0
    try:
        found = match_kl_along(kl_of, [targets[c] for c in coeffs], start=start, rel_tol=rel_tol)
    finally:
        bar.close()
    out: dict[float, tuple[WeightDelta, KLMatch] | KLUnreachable] = {}
    for c, match in zip(coeffs, found, strict=True):
        if isinstance(match, KLUnreachable):
            out[c] = match
        else:
            out[c] = (unit * match.scale, replace(match, scale=match.scale / abs(c),
                                                   tried=[(s / abs(c), k) for s, k in match.tried]))
    return out


def kl_matched_random_delta(model: nn.Module, tokenizer: Any, delta: WeightDelta, target_kl: float, *, seed: int = 0,
                            texts: Sequence[str] = NEUTRAL_TEXTS, rendering: Rendering = "chat_reply",
                            rel_tol: float = 0.05, batch_size: int = 16) -> tuple[WeightDelta, KLMatch]:
    """A Gaussian random delta on `delta`'s parameters with its per-tensor norms (`norm_matched_random`, seed
    `seed`), rescaled so that applying it at coefficient 1 has KL `target_kl` on `texts` with `rendering`. The
    norm-matched delta alone is no functional control (KL 0.002 against the trained dW's 0.275 in the weight-steering
    artifacts). `kl_matched_random_deltas` with one coefficient; raises KLUnreachable where no scale reaches it."""
    found = kl_matched_random_deltas(model, tokenizer, delta, {1.0: target_kl}, seed=seed, texts=texts,
                                     rendering=rendering, rel_tol=rel_tol, batch_size=batch_size)[1.0]
    if isinstance(found, KLUnreachable):
        raise found
    return found


def shuffled_labels(labels: Sequence[Any], n_shuffles: int, seed: int = 0) -> list[list[Any]]:
    """`n_shuffles` permutations of `labels` (seeded): rebuild the intervention from each to get its null. Each
    shuffle keeps the label counts; none is the identity unless every permutation is (all labels equal)."""
    if n_shuffles < 1:
        raise ValueError(f"n_shuffles={n_shuffles} must be >= 1")
    labels = list(labels)
    if len(set(map(repr, labels))) < 2:
        raise ValueError("labels has one value: shuffling it changes nothing")
    rng = random.Random(seed)
    out = []
    while len(out) < n_shuffles:
        shuffled = labels[:]
        rng.shuffle(shuffled)
        if shuffled != labels:
            out.append(shuffled)
    return out


def label_shuffled_null(effect_of: Callable[[list[Any]], float], labels: Sequence[Any], n_shuffles: int = 20,
                        seed: int = 0) -> list[float]:
    """The effects `effect_of(labels)` gives on shuffled labels (the whole pipeline, built and measured again per
    shuffle): the distribution the real effect is ranked in (`lib.kits.uncertainty.rank_p_value`)."""
    return [float(effect_of(shuffled)) for shuffled in shuffled_labels(labels, n_shuffles, seed)]
