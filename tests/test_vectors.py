"""Steering-vector dataclass: files, arithmetic, and builders checked against independent computations."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

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


def _in_message(*parts: object) -> str:
    """A `match` pattern requiring every part, literally and in order (the file first, then the detail)."""
    return ".*".join(re.escape(str(part)) for part in parts)


def _data_offset(raw: bytes) -> int:
    """Start of the tensor bytes: an 8-byte little-endian header length, then the JSON header."""
    return 8 + int.from_bytes(raw[:8], "little")


def test_flipped_byte_in_tensor_data_is_rejected(tmp_path):
    # catches: removing the checksum comparison in load (or not writing "sha256" in save)
    path = _vector().save(tmp_path / "vec")
    raw = bytearray(path.read_bytes())
    offset = _data_offset(bytes(raw)) + 1  # a mantissa byte of the first float: finite, just a different value
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))
    silently = load_file(path)  # safetensors alone accepts it: only the checksum can tell
    assert float(silently["2"].norm()) != pytest.approx(float(_vector()[2].norm()))
    with pytest.raises(ValueError, match=_in_message(path, "corrupt or was changed after saving", "re-create")):
        SteeringVector.load(tmp_path / "vec")


def test_truncated_or_garbage_file_names_the_path(tmp_path):
    # with a sidecar the checksum catches truncation; bare files (no sidecar) reach safetensors, whose
    # SafetensorError (not a ValueError, and without the path) must be wrapped.
    # catches: dropping the try/except around the safetensors parse, or the path from its message
    path = _vector().save(tmp_path / "vec")
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match=_in_message(path, "sha256")):
        SteeringVector.load(path)
    (tmp_path / "vec.json").unlink()
    with pytest.raises(ValueError, match=_in_message(path, "truncated")):
        SteeringVector.load(path)
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match=_in_message(path, "truncated")):
        SteeringVector.load(path)


def test_missing_file_and_broken_sidecar_name_the_path(tmp_path):
    # catches: dropping the existence check (the OS error has no hint) or the sidecar's decode-error wrapping
    with pytest.raises(FileNotFoundError, match=_in_message(tmp_path / "nope.safetensors", "SteeringVector.save")):
        SteeringVector.load(tmp_path / "nope")
    _vector().save(tmp_path / "vec")
    (tmp_path / "vec.json").write_text('{"method": ')
    with pytest.raises(ValueError, match=_in_message(tmp_path / "vec.json", "unreadable metadata sidecar")):
        SteeringVector.load(tmp_path / "vec")


def test_unverifiable_files_load_bare_and_old_sidecars(tmp_path):
    # catches: requiring a sidecar, or treating a sidecar without "sha256" as a mismatch
    vector = _vector()
    save_file({str(layer): v for layer, v in vector.vectors.items()}, tmp_path / "other_tool.safetensors")
    bare = SteeringVector.load(tmp_path / "other_tool.safetensors")
    assert bare.meta == {} and all(torch.equal(bare[layer], vector[layer]) for layer in vector.layers)
    vector.save(tmp_path / "old")
    meta = json.loads((tmp_path / "old.json").read_text())
    del meta["sha256"]  # as written before checksums
    (tmp_path / "old.json").write_text(json.dumps(meta))
    old = SteeringVector.load(tmp_path / "old")
    assert old.meta["method"] == "test" and all(torch.equal(old[layer], vector[layer]) for layer in vector.layers)


def test_checksum_is_of_the_file_and_never_carried_over(tmp_path):
    # catches: hashing anything but the written bytes; not dropping "sha256" from meta on load; letting a stale
    # "sha256" in meta override the fresh one on save (then the reload below fails)
    path = _vector().save(tmp_path / "a")
    assert json.loads((tmp_path / "a.json").read_text())["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = SteeringVector.load(path)
    assert "sha256" not in loaded.meta
    stale = SteeringVector((loaded * 2.0).vectors, {**loaded.meta, "sha256": "0" * 64})
    again = SteeringVector.load(stale.save(tmp_path / "b"))
    assert torch.equal(again[5], loaded[5] * 2.0) and again.meta["method"] == "test"


@pytest.mark.parametrize(("tensors", "named"), [
    ({"layer_3": torch.ones(2)}, ["'layer_3'", 'write it as "3"']),
    ({"03": torch.ones(2), "3": torch.ones(2)}, ["'03'", "'3'", "both mean layer 3"]),
])
def test_safetensors_keys_must_be_layer_indices(tmp_path, tensors, named):
    # catches: going back to int(key) (no file name for "layer_3"; "03" and "3" silently collapse to one layer)
    save_file(tensors, tmp_path / "v.safetensors")
    with pytest.raises(ValueError, match=_in_message(tmp_path / "v.safetensors", *named)):
        SteeringVector.load(tmp_path / "v")


@pytest.mark.parametrize(("keys", "named"), [
    (["03", "3"], ["'03'", "'3'", "both mean layer 3"]),  # catches: dropping the duplicate-layer check
    (["-1"], ["'-1'", "not a layer index"]),  # catches: int(key) again (accepts all of these four)
    ([" 3"], ["' 3'", "not a layer index"]),
    (["3 "], ["'3 '", "not a layer index"]),
    (["+3"], ["'+3'", "not a layer index"]),
    (["3.0"], ["'3.0'", "not a layer index"]),  # int() rejects it too, but without saying what a key must be
    (["layer_3"], ["'layer_3'", 'like "3"', 'write it as "3"']),  # catches: dropping the accepted-form hint
    (["model.layers.12"], ["'model.layers.12'", 'write it as "12"']),
])
def test_plain_json_rejects_bad_keys_naming_them(tmp_path, keys, named):
    path = tmp_path / "v.json"
    path.write_text(json.dumps({key: [1.0, 2.0] for key in keys}))
    with pytest.raises(ValueError, match=_in_message(path, *named)):
        SteeringVector.from_plain_json(path)


def test_plain_json_rejects_repeated_keys_in_the_text(tmp_path):
    # catches: dropping object_pairs_hook (json.loads would silently keep [3.0, 4.0])
    path = tmp_path / "v.json"
    path.write_text('{"3": [1.0, 2.0], "3": [3.0, 4.0]}')
    with pytest.raises(ValueError, match=_in_message(path, "'3' appears twice")):
        SteeringVector.from_plain_json(path)


@pytest.mark.parametrize(("value", "detail"), [
    ([], "empty list"),  # catches: dropping the empty check (a [0] vector passes the constructor)
    ([[1.0, 2.0], [3.0, 4.0]], "2-D"),  # catches: dropping the nested check (a [2, 2] vector passes the constructor)
    (1.5, "got float"),
    ([1.0, None], "None at index 1"),  # catches: a bad-element search that returns the element (None is "no match")
    ([1.0, True], "True at index 1"),  # catches: accepting bools as numbers (torch turns true into 1.0)
    ([1.0, float("nan")], "NaN"),  # catches: not prefixing constructor errors with the file
])
def test_plain_json_rejects_bad_vectors_naming_the_key(tmp_path, value, detail):
    path = tmp_path / "v.json"
    path.write_text(json.dumps({"7": value}))
    key = "'7'" if detail != "NaN" else "layer 7"
    with pytest.raises(ValueError, match=_in_message(path, key, detail)):
        SteeringVector.from_plain_json(path)


def test_plain_json_accepted_keys_load_exactly(tmp_path):
    # catches: rejecting zero-padded digits or JSON integers, or mapping a key to the wrong layer
    path = tmp_path / "v.json"
    path.write_text('{"0": [0.5, -1.25, 2], "03": [1, 2, 3], "12": [-0.0, 1e-3, 3.5]}')
    vector = SteeringVector.from_plain_json(path)
    assert vector.layers == [0, 3, 12]
    assert torch.equal(vector[0], torch.tensor([0.5, -1.25, 2.0]))
    assert torch.equal(vector[3], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(vector[12], torch.tensor([-0.0, 1e-3, 3.5], dtype=torch.float32))


def test_plain_json_export_refuses_latent_vectors(tmp_path):
    # catches: dropping the check, which would write a nested file that from_plain_json rejects
    latent = SteeringVector({4: torch.ones(2, 3)})
    with pytest.raises(ValueError, match="use save"):
        latent.to_plain_json(tmp_path / "v.json")
    assert not (tmp_path / "v.json").exists()


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


@pytest.mark.parametrize("key", [1.5, True, -3, "2"])
def test_constructor_refuses_keys_that_are_not_layer_indices(key):
    """1.5 and True became layer 1 and -3 was accepted until `steer` refused it: each is refused at construction,
    naming the key."""
    with pytest.raises(ValueError, match=f"key {re.escape(repr(key))}"):
        SteeringVector({key: torch.ones(4)})


def test_constructor_accepts_integer_types_as_plain_ints():
    vector = SteeringVector({np.int64(3): torch.ones(4), torch.tensor(1): torch.zeros(4)})
    assert vector.layers == [1, 3] and all(type(layer) is int for layer in vector.layers)
    with pytest.raises(ValueError, match="one layer twice"):
        SteeringVector({2: torch.ones(4), torch.tensor(2): torch.zeros(4)})
