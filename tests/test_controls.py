"""Controls of lib.kits.controls: a KL-matched random direction reaches its target KL (re-measured independently),
the scale search on a known curve, and a label-shuffled null that centres on zero where the real labels do not."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TEXTS, ByteTokenizer

from lib.evals import next_token_kl
from lib.hooks import Steering
from lib.kits.controls import (
    KLMatch,
    KLUnreachable,
    kl_matched_random,
    kl_matched_randoms,
    label_shuffled_null,
    match_kl,
    match_kl_jointly,
    shuffled_labels,
)
from lib.models import hidden_size, tiny_model
from lib.vectors import SteeringVector


def test_match_kl_finds_the_scale_on_a_known_curve():
    """KL(s) = 0.3 s^2 (the small-coefficient regime of an added direction): the target 1.2 is at s = 2."""
    match = match_kl(lambda scales: [0.3 * s * s for s in scales], 1.2, rel_tol=0.01)
    assert match.relative_error <= 0.01 and match.scale == pytest.approx(2.0, rel=0.01)
    far = match_kl(lambda scales: [1e-4 * s * s for s in scales], 5.0, rel_tol=0.05)  # needs many doublings
    assert far.relative_error <= 0.05 and far.scale == pytest.approx(math.sqrt(5e4), rel=0.03)
    with pytest.raises(ValueError, match="no scale reached"):
        match_kl(lambda scales: [0.5 for _ in scales], 1.0)  # flat: never reaches it
    with pytest.raises(ValueError, match="target"):
        match_kl(lambda scales: scales, 0.0)


def test_kl_matched_random_reaches_the_target_within_5_percent():
    model, tokenizer = tiny_model("llama", seed=4), ByteTokenizer()
    generator = torch.Generator().manual_seed(0)
    vector = SteeringVector({1: torch.randn(hidden_size(model), generator=generator) * 0.02})  # residual-sized
    # the target: what the vector does at coefficient 2 (about 4x its KL at 1, so a norm-matched direction misses)
    target = float(next_token_kl(model, tokenizer, TEXTS, steering=Steering(vector), coefficients=[2.0],
                                 progress=False)[0])
    control, match = kl_matched_random(model, tokenizer, vector, target, texts=TEXTS, seed=1)
    again = float(next_token_kl(model, tokenizer, TEXTS, steering=Steering(control), coefficients=[1.0],
                                progress=False)[0])  # measured anew, not read from the search
    assert abs(again - target) <= 0.05 * target
    assert control.meta["method"] == "random_kl_matched" and control.meta["target_kl"] == target
    norm_matched = float(next_token_kl(model, tokenizer, TEXTS, steering=Steering(control * (1 / match.scale)),
                                       coefficients=[1.0], progress=False)[0])
    assert abs(norm_matched - target) > 0.05 * target  # the norm-matched direction alone would not have matched
    cosine = torch.nn.functional.cosine_similarity(control[1], vector[1], dim=0)
    assert abs(float(cosine)) < 0.5  # a random direction, not the vector


def test_searches_run_jointly_probe_what_each_probes_alone_one_pass_a_round():
    """Three known curves (one flat: unreachable) searched together: each tries exactly the scales of its search
    alone, the passes are as many as the longest search's rounds, and the flat one comes back as its error."""
    curves = [lambda s: 0.3 * s * s, lambda s: 1e-4 * s * s, lambda s: 0.5 + 0 * s]
    targets = [1.2, 5.0, 1.0]
    alone = [match_kl(lambda scales, f=f: [f(x) for x in scales], t) for f, t in zip(curves[:2], targets, strict=False)]
    passes = []

    def kl_at(pairs):
        passes.append(pairs)
        return [curves[i](scale) for i, scale in pairs]

    together = match_kl_jointly(kl_at, targets)
    for match, single in zip(together[:2], alone, strict=True):
        assert match.scale == single.scale and match.tried == single.tried
    assert isinstance(together[2], KLUnreachable)
    assert len(passes) == 12  # the flat search runs all 12 rounds; the others leave once matched
    assert {i for i, _ in passes[-1]} == {2}


def test_random_directions_matched_together_equal_each_matched_alone():
    model, tokenizer = tiny_model("llama", seed=4), ByteTokenizer()
    vector = SteeringVector({1: torch.randn(hidden_size(model), generator=torch.Generator().manual_seed(0)) * 0.02})
    target = float(next_token_kl(model, tokenizer, TEXTS, steering=Steering(vector), coefficients=[2.0],
                                 progress=False)[0])
    together = kl_matched_randoms(model, tokenizer, vector, target, seeds=[1, 2, 3], texts=TEXTS)
    for seed, (control, match) in zip([1, 2, 3], together, strict=True):
        single, single_match = kl_matched_random(model, tokenizer, vector, target, texts=TEXTS, seed=seed)
        assert match.scale == pytest.approx(single_match.scale, rel=1e-6) and control.meta["seed"] == seed
        torch.testing.assert_close(control[1], single[1])
        again = float(next_token_kl(model, tokenizer, TEXTS, steering=Steering(control), coefficients=[1.0],
                                    progress=False)[0])
        assert abs(again - target) <= 0.05 * target
    with pytest.raises(ValueError, match="seeds is empty"):
        kl_matched_randoms(model, tokenizer, vector, target, seeds=[])


def test_label_shuffled_null_centres_on_zero():
    rng = np.random.default_rng(0)
    labels = [i % 2 for i in range(60)]
    values = np.array(labels) * 1.0 + rng.normal(0, 1, 60)  # the real labels carry a difference of 1.0

    def effect_of(assigned):
        assigned = np.array(assigned)
        return float(values[assigned == 1].mean() - values[assigned == 0].mean())

    real = effect_of(labels)
    null = np.array(label_shuffled_null(effect_of, labels, n_shuffles=200, seed=1))
    assert abs(null.mean()) < 3 * null.std() / math.sqrt(len(null))
    assert real > np.quantile(null, 0.99)
    shuffles = shuffled_labels(labels, 5, seed=2)
    assert all(sorted(s) == sorted(labels) and s != labels for s in shuffles)
    assert shuffles == shuffled_labels(labels, 5, seed=2)
    with pytest.raises(ValueError, match="one value"):
        shuffled_labels([1, 1, 1], 3)


NAME = "model.layers.0.mlp.down_proj.weight"


def _hand_kl(model, tokenizer, texts, edit) -> float:
    """The KL of a weight edit measured by hand: the weights edited and restored here, one unpadded row per text read
    as the reply to the neutral instruction (the chat_reply rendering), mean over reply tokens."""
    from lib.evals import NEUTRAL_INSTRUCTION
    from lib.generation import render_chat

    prompt = tokenizer(render_chat(tokenizer, NEUTRAL_INSTRUCTION), add_special_tokens=False)["input_ids"]
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            reply = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + reply])
            sides = []
            for side in (None, edit):
                saved = model.get_parameter(NAME).detach().clone()
                if side is not None:
                    model.get_parameter(NAME).add_(side[NAME])
                logits = model(ids).logits[0].double()
                model.get_parameter(NAME).copy_(saved)
                sides.append(torch.log_softmax(logits[len(prompt) - 1: -1], dim=-1))
            total += float((sides[0].exp() * (sides[0] - sides[1])).sum())
            count += len(reply)
    return total / count


def _edit_setup():
    from lib.weights import WeightDelta

    model, tokenizer = tiny_model("llama", seed=4), ByteTokenizer(chat=True)
    delta = WeightDelta({NAME: torch.randn(model.get_parameter(NAME).shape,
                                           generator=torch.Generator().manual_seed(0)) * 0.02})
    return model, tokenizer, delta, TEXTS[:3]


def test_kl_matched_random_delta_reaches_the_target_by_a_hand_weight_edit():
    from lib.kits.controls import kl_matched_random_delta

    model, tokenizer, delta, texts = _edit_setup()
    target = _hand_kl(model, tokenizer, texts, delta * 3.0)
    before = model.get_parameter(NAME).detach().clone()
    control, match = kl_matched_random_delta(model, tokenizer, delta, target, texts=texts, seed=2)
    assert torch.equal(model.get_parameter(NAME), before)  # every probe restored the weights
    assert abs(_hand_kl(model, tokenizer, texts, control) - target) <= 0.05 * target
    assert abs(_hand_kl(model, tokenizer, texts, control * (1 / match.scale)) - target) > 0.05 * target
    cosine = torch.nn.functional.cosine_similarity(control[NAME].flatten(), delta[NAME].flatten(), dim=0)
    assert abs(float(cosine)) < 0.1


def test_random_deltas_along_a_grid_match_each_coefficient_by_hand():
    """One random direction for the grid: the control at c is the norm-matched random delta of `delta * c` (the
    construction matched alone) times its scale, and its KL re-measured by hand is within 5% of the dW's at c (catches:
    scale not divided by |c|, results keyed to the wrong coefficient, another seed's direction)."""
    from lib.kits.controls import kl_matched_random_deltas
    from lib.kits.delta_ablation import norm_matched_random

    model, tokenizer, delta, texts = _edit_setup()
    coeffs = [3.0, -2.0, 0.5]
    targets = {c: _hand_kl(model, tokenizer, texts, delta * c) for c in coeffs}
    before = model.get_parameter(NAME).detach().clone()
    found = kl_matched_random_deltas(model, tokenizer, delta, targets, texts=texts, seed=2)
    assert torch.equal(model.get_parameter(NAME), before)
    assert list(found) == coeffs
    for c in coeffs:
        control, match = found[c]
        assert match.target == targets[c]
        alone = norm_matched_random(delta * c, seed=2).delta * match.scale
        torch.testing.assert_close(control[NAME], alone[NAME], rtol=1e-5, atol=1e-8)
        assert abs(_hand_kl(model, tokenizer, texts, control) - targets[c]) <= 0.05 * targets[c]
    with pytest.raises(ValueError, match="coefficient 0"):
        kl_matched_random_deltas(model, tokenizer, delta, {0.0: 0.1, 1.0: 0.1}, texts=texts)


def test_match_kl_along_shares_probes_across_targets():
    """Known curves: each target (given out of order) is matched within tolerance at the scale the curve says, with
    far fewer probes than `match_kl` per target; a curve that saturates answers the reachable targets and
    KLUnreachable for the rest; a KL that stops being finite is unreachable for the targets beyond it only."""
    from lib.kits.controls import match_kl_along

    for curve, exponent in [(lambda s: 0.3 * s * s, 2), (lambda s: 0.02 * s ** 4, 4), (lambda s: 0.1 * s, 1)]:
        targets = [1.2, 0.05, 4.8, 0.3, 0.01]
        calls: list[float] = []
        found = match_kl_along(lambda s, f=curve, c=calls: c.append(s) or f(s), targets, start=1.0)
        alone = []
        for t in targets:
            match_kl(lambda scales, f=curve, a=alone: a.extend(scales) or [f(x) for x in scales], t)
        for match, t in zip(found, targets, strict=True):
            assert isinstance(match, KLMatch) and match.target == t and match.relative_error <= 0.05
            assert curve(match.scale) == pytest.approx(match.kl)
        assert len(calls) == len(set(calls))  # no scale measured twice
        assert len(calls) * 2 < len(alone), (exponent, len(calls), len(alone))
    far = match_kl_along(lambda s: 1e-4 * s * s, [5.0])[0]
    assert isinstance(far, KLMatch) and far.scale == pytest.approx(math.sqrt(5e4), rel=0.03)
    saturating = match_kl_along(lambda s: min(0.1 * s, 0.5), [1.0, 0.3])
    assert isinstance(saturating[0], KLUnreachable) and saturating[1].scale == pytest.approx(3.0, rel=0.05)
    blowing_up = match_kl_along(lambda s: 0.1 * s if s < 16 else math.nan, [0.5, 3.0])
    assert blowing_up[0].scale == pytest.approx(5.0, rel=0.05)
    assert isinstance(blowing_up[1], KLUnreachable) and "not finite" in str(blowing_up[1])
    with pytest.raises(ValueError, match="target"):
        match_kl_along(lambda s: s, [0.1, 0.0])


def test_a_kl_that_stops_being_finite_is_unreachable_not_a_crash():
    """A saturating model in bf16 can give inf/NaN at the huge scales the search doubles to: that is no scale
    reaching the target (KLUnreachable, which compare and the experiments record), not a crash (catches: the
    plain ValueError back)."""
    from lib.kits.controls import KLUnreachable

    with pytest.raises(KLUnreachable, match="not finite"):
        match_kl(lambda scales: [min(0.1 * s, 0.5) if s < 64 else math.nan for s in scales], 2.0)
    with pytest.raises(ValueError, match="one KL per scale"):
        match_kl(lambda scales: [0.1], 1.0)
