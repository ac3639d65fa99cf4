"""Steering-vector dataclass: files, arithmetic, and builders checked against independent computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lib.vectors import SteeringVector, mean_difference, pca_direction, random_like


def _vector(seed: int = 0, layers=(2, 5), size: int = 8) -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    return SteeringVector({layer: torch.randn(size, generator=generator) for layer in layers}, {"method": "test"})


def test_save_load_round_trip(tmp_path):
    vector = _vector()
    path = vector.save(tmp_path / "sub" / "vec")
    assert path.name == "vec.safetensors" and (tmp_path / "sub" / "vec.json").exists()
    loaded = SteeringVector.load(tmp_path / "sub" / "vec")
    assert loaded.layers == [2, 5]
    for layer in vector.layers:
        assert torch.equal(loaded[layer], vector[layer])
    assert loaded.meta["method"] == "test"
    assert loaded.meta["norms"]["2"] == pytest.approx(float(vector[2].norm()))


def test_plain_json_round_trip(tmp_path):
    vector = _vector()
    vector.to_plain_json(tmp_path / "steering_vectors.json")
    raw = json.loads((tmp_path / "steering_vectors.json").read_text())
    assert sorted(raw) == ["2", "5"] and len(raw["2"]) == 8
    back = SteeringVector.from_plain_json(tmp_path / "steering_vectors.json")
    for layer in vector.layers:
        assert torch.equal(back[layer], vector[layer])  # float32 survives JSON exactly


def test_plain_json_bad_input(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"layer_a": [1.0]}))
    with pytest.raises(ValueError, match="layer"):
        SteeringVector.from_plain_json(tmp_path / "bad.json")


def test_arithmetic_and_to():
    a, b = _vector(0), _vector(1)
    assert torch.equal((a + b)[2], a[2] + b[2])
    assert torch.equal((a - b)[5], a[5] - b[5])
    assert torch.equal((2.5 * a)[2], a[2] * 2.5) and torch.equal((a * 2.5)[2], a[2] * 2.5)
    assert torch.equal((-a)[5], -a[5])
    assert (a.to(torch.float64))[2].dtype == torch.float64
    with pytest.raises(ValueError, match="layers differ"):
        a + _vector(0, layers=(2,))


def test_constructor_rejects_bad_vectors():
    with pytest.raises(ValueError, match="NaN or inf"):
        SteeringVector({0: torch.tensor([1.0, float("nan")])})
    with pytest.raises(ValueError, match="one size"):
        SteeringVector({0: torch.ones(3), 1: torch.ones(4)})
    with pytest.raises(ValueError, match="empty"):
        SteeringVector({})


def test_mean_difference_matches_numpy():
    rng = np.random.default_rng(0)
    target = {3: rng.normal(size=(7, 5)).astype(np.float32)}
    baseline = {3: rng.normal(size=(4, 5)).astype(np.float32)}
    vector = mean_difference({k: torch.from_numpy(v) for k, v in target.items()},
                             {k: torch.from_numpy(v) for k, v in baseline.items()})
    np.testing.assert_allclose(vector[3].numpy(), target[3].mean(0) - baseline[3].mean(0), rtol=1e-6, atol=1e-6)
    assert vector.meta["n_target"] == 7 and vector.meta["n_baseline"] == 4


def test_pca_direction_recovers_a_planted_direction():
    generator = torch.Generator().manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(16, generator=generator), dim=0)
    negative = torch.randn(64, 16, generator=generator)
    strength = 3.0 + torch.rand(64, 1, generator=generator) * 2.0  # varies along the planted direction
    positive = negative + strength * direction + 0.05 * torch.randn(64, 16, generator=generator)
    vector = pca_direction({0: positive}, {0: negative})
    cosine = torch.nn.functional.cosine_similarity(vector[0], direction, dim=0)
    assert cosine > 0.99  # right direction and sign
    assert float(vector[0].norm()) == pytest.approx(float(strength.mean()), rel=0.05)


def test_random_like_is_norm_matched_and_seeded():
    vector = _vector()
    control = random_like(vector, seed=3)
    for layer in vector.layers:
        assert float(control[layer].norm()) == pytest.approx(float(vector[layer].norm()), rel=1e-5)
    assert torch.equal(random_like(vector, seed=3)[2], control[2])
    assert not torch.equal(random_like(vector, seed=4)[2], control[2])
    assert control.meta["method"] == "random_norm_matched"
