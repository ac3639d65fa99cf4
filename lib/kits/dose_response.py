"""Effects as curves over coefficients: symmetric grids, per-row slopes, comparison at matched KL, and coefficients
relative to the residual stream's norm.

Why (issue "One evaluation kit"): every effect in the journal was measured at one coefficient (KL about 0.3), and
families were compared at unmatched strength (PiSSA at KL 1.6, LoRA at 0.3; "per nat" divided a linear effect by a
quadratic KL). Here an effect is a curve; two interventions are compared where they change the model equally
(`effect_at_kl`, interpolated along each curve); per-row slopes in the small-coefficient (linear) regime give
steerability per example and the fraction of anti-steerable rows (Tan et al. 2024, "Analyzing the generalization
and reliability of steering vectors"); and a raw vector's norm says nothing about a sane coefficient, so one can be
given relative to the layer's typical residual norm (`relative_coefficient`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lib.hooks import record
from lib.vectors import SteeringVector


def symmetric_grid(largest: float, halvings: int = 3) -> list[float]:
    """0, then +-largest, +-largest/2, ... down `halvings` halvings: both signs, dense near 0 where the effect is
    still linear in the coefficient. symmetric_grid(8, 3) = [-8, -4, -2, -1, 0, 1, 2, 4, 8]."""
    if not largest > 0:
        raise ValueError(f"largest={largest} must be > 0")
    if halvings < 0:
        raise ValueError(f"halvings={halvings} must be >= 0")
    positive = [largest / 2**k for k in range(halvings + 1)][::-1]
    return [-c for c in positive[::-1]] + [0.0] + positive


@dataclass(frozen=True)
class Slopes:
    """Per-row least-squares slopes of score on coefficient over the coefficients used (|c| <= `linear_up_to`)."""

    per_row: np.ndarray
    linear_up_to: float

    @property
    def steerability(self) -> float:
        """Mean slope over rows: score per unit of coefficient."""
        return float(self.per_row.mean())

    @property
    def fraction_anti_steerable(self) -> float:
        """Rows whose slope has the opposite sign of the mean slope (Tan et al. 2024)."""
        sign = np.sign(self.per_row.mean())
        return float(np.mean(np.sign(self.per_row) == -sign)) if sign != 0 else float("nan")


def per_row_slopes(coefficients: Sequence[float], scores: Any, linear_up_to: float | None = None) -> Slopes:
    """Slopes of each row's score over `coefficients` (scores: [rows, len(coefficients)]), fitted on the
    coefficients with |c| <= `linear_up_to` (default: all). At least two distinct coefficients are needed."""
    grid = np.asarray(coefficients, dtype=np.float64)
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != grid.size:
        raise ValueError(f"scores has shape {values.shape}; give [rows, {grid.size}] (one column per coefficient)")
    limit = float(np.abs(grid).max()) if linear_up_to is None else float(linear_up_to)
    used = np.abs(grid) <= limit
    if len(set(grid[used].tolist())) < 2:
        raise ValueError(f"linear_up_to={linear_up_to} leaves {sorted(set(grid[used].tolist()))}: a slope needs two "
                         "distinct coefficients")
    x = grid[used] - grid[used].mean()
    y = values[:, used] - values[:, used].mean(axis=1, keepdims=True)
    return Slopes((y @ x) / (x @ x), limit)


def effect_at_kl(coefficients: Sequence[float], kls: Sequence[float], effects: Sequence[float], target_kl: float,
                 sign: int = 1) -> float:
    """The effect where the curve's KL reaches `target_kl`, interpolated linearly in KL between the two coefficients
    around it, on the `sign` side of 0 (KL grows with |c| there). NaN when the curve never reaches that KL (say so
    rather than extrapolate)."""
    if sign not in (1, -1):
        raise ValueError(f"sign={sign} must be +1 or -1 (which side of coefficient 0)")
    grid, kl, effect = (np.asarray(v, dtype=np.float64) for v in (coefficients, kls, effects))
    if not grid.size == kl.size == effect.size:
        raise ValueError(f"coefficients, kls and effects have {grid.size}, {kl.size} and {effect.size} values")
    side = np.flatnonzero(sign * grid >= 0)
    order = side[np.argsort(sign * grid[side])]
    if order.size < 2 or grid[order[0]] != 0:
        raise ValueError("the curve needs coefficient 0 and at least one coefficient on the chosen side")
    for a, b in zip(order[:-1], order[1:], strict=True):
        if kl[a] <= target_kl <= kl[b] and kl[b] > kl[a]:
            t = (target_kl - kl[a]) / (kl[b] - kl[a])
            return float(effect[a] + t * (effect[b] - effect[a]))
    return float("nan")


@torch.no_grad()
def residual_norms(model: nn.Module, tokenizer: Any, texts: Sequence[str], layers: Sequence[int]) -> dict[int, float]:
    """The typical norm of the block outputs at `layers`: the median over every token of `texts` (raw text, one text
    a forward: no padding to mask). The median, not the mean: the first token's norm is an outlier in many models
    (about 22,000 against a median of 140 at layer 12 of the embedded default), which made the mean 10x too large."""
    if not texts:
        raise ValueError("texts is empty: the norm is averaged over the tokens of at least one text")
    device = next(model.parameters()).device
    norms: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for text in texts:
        ids = torch.tensor([tokenizer(text)["input_ids"]], device=device)
        with record(model, list(layers), "all") as acts:
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
        for layer in layers:
            norms[layer].append(acts[layer][0].norm(dim=-1))
    return {layer: float(torch.cat(values).median()) for layer, values in norms.items()}


def relative_coefficient(vector: SteeringVector, norms: dict[int, float], relative: float) -> float:
    """The coefficient that makes the vector's norm `relative` times the layer's typical residual norm
    (`residual_norms`; averaged over the vector's layers): 0.5 adds half a residual's norm, whatever the vector's
    own scale."""
    ratios = [norms[layer] / float(vector[layer].norm()) for layer in vector.layers if layer in norms]
    if not ratios:
        raise ValueError(f"norms has layers {sorted(norms)}, the vector {vector.layers}: measure the vector's layers")
    if any(not np.isfinite(r) for r in ratios):
        raise ValueError("a layer's vector has norm 0: no coefficient scales it to the residual")
    return float(relative * np.mean(ratios))
