"""Curves over coefficients (lib.kits.dose_response) against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TEXTS, ByteTokenizer

from lib.hooks import record
from lib.kits.dose_response import (
    effect_at_kl,
    per_row_slopes,
    relative_coefficient,
    residual_norms,
    symmetric_grid,
)
from lib.models import tiny_model
from lib.vectors import SteeringVector


def test_symmetric_grid():
    assert symmetric_grid(8, 3) == [-8, -4, -2, -1, 0, 1, 2, 4, 8]
    assert symmetric_grid(1, 0) == [-1, 0, 1]
    with pytest.raises(ValueError, match="largest"):
        symmetric_grid(0)


def test_per_row_slopes_recover_planted_slopes_and_anti_steerable_rows():
    grid = symmetric_grid(4, 2)  # -4..4
    planted = np.array([1.0, 2.0, 0.5, -1.0])  # the last row moves against the others
    rng = np.random.default_rng(0)
    scores = planted[:, None] * np.array(grid)[None, :] + rng.normal(0, 1, (4, 1))  # row offsets do not matter
    slopes = per_row_slopes(grid, scores)
    np.testing.assert_allclose(slopes.per_row, planted, atol=1e-12)
    assert slopes.steerability == pytest.approx(planted.mean()) and slopes.fraction_anti_steerable == 0.25
    saturating = np.tanh(np.array(grid) / 2)[None, :] * 3  # flattens at large |c|: fit the linear part only
    small = per_row_slopes(grid, saturating, linear_up_to=1)
    assert small.per_row[0] == pytest.approx((saturating[0, 4] - saturating[0, 2]) / 2)
    with pytest.raises(ValueError, match="two"):
        per_row_slopes(grid, scores, linear_up_to=0.5)
    with pytest.raises(ValueError, match="shape"):
        per_row_slopes(grid, scores[:, :3])


def test_effect_at_matched_kl_interpolates_and_refuses_to_extrapolate():
    """Two curves compared where each changes the model by KL 0.3: one reaches it between c=1 and c=2."""
    coefficients = [-2, -1, 0, 1, 2]
    kls = [0.8, 0.2, 0.0, 0.1, 0.5]
    effects = [-3.0, -1.0, 0.0, 1.0, 2.0]
    # + side: KL 0.3 is a quarter of the way from 0.1 (c=1) to 0.5 (c=2): effect 1 + 0.5 * 1.0 ... by hand:
    assert effect_at_kl(coefficients, kls, effects, 0.3) == pytest.approx(1.0 + (0.3 - 0.1) / 0.4 * 1.0)
    assert effect_at_kl(coefficients, kls, effects, 0.5, sign=-1) == pytest.approx(-1.0 + (0.3 / 0.6) * -2.0)
    assert math.isnan(effect_at_kl(coefficients, kls, effects, 0.9))
    with pytest.raises(ValueError, match="coefficient 0"):
        effect_at_kl([1, 2], [0.1, 0.2], [1, 2], 0.15)


def test_relative_coefficient_scales_a_vector_to_the_residual_norm():
    model, tokenizer = tiny_model("llama", seed=2), ByteTokenizer()
    norms = residual_norms(model, tokenizer, TEXTS, [1])
    by_hand = []
    for text in TEXTS:  # record every token's block output, one text at a time
        with torch.no_grad(), record(model, [1]) as acts:
            model(input_ids=torch.tensor([tokenizer(text)["input_ids"]]))
        by_hand.append(acts[1][0].norm(dim=-1))
    assert norms[1] == pytest.approx(float(torch.cat(by_hand).median()), rel=1e-6)
    vector = SteeringVector({1: torch.ones(64) * 3})
    coefficient = relative_coefficient(vector, norms, 0.5)
    assert float((vector[1] * coefficient).norm()) == pytest.approx(0.5 * norms[1], rel=1e-6)
    with pytest.raises(ValueError, match="measure the vector's layers"):
        relative_coefficient(vector, {2: 1.0}, 0.5)
