"""Steering vectors: `{layer: Tensor[hidden]}` plus metadata, and the builders that make them.

The coefficient is never stored: it is passed when applying (`SteeringVector.apply`, or `lib.hooks.steer`), as in
steering-vectors and repeng. Files are safetensors (tensors) plus a JSON sidecar (metadata),
and the plain `{layer: [floats]}` JSON that existing steering scripts write
(`steering_vectors.json`) imports and exports losslessly for float32.

Files are checked on the way in: the sidecar records the sha256 of the safetensors bytes, so a flipped
byte (which safetensors parses happily, with a different norm) is an error, and every load error names
the file. Plain-JSON keys must be layer indices written as digits; anything else is rejected rather
than guessed at.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from lib.gates import Gate
from lib.hooks import real_number, steer
from lib.io import atomic_write, write_json
from lib.models import layer_index
from lib.positions import PositionScope


@dataclass
class SteeringVector(Mapping[int, torch.Tensor]):
    """{layer: Tensor[hidden]} plus metadata; a read-only mapping, so wherever lib takes {layer: vector} it takes one.

    Apply it with `with vector.apply(model, coefficient=4.0):` (steering-vectors' shape); the coefficient is never
    stored. Compare two vectors with `torch.equal` per layer.
    """

    vectors: dict[int, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.vectors:
            raise ValueError("vectors is empty: a steering vector needs at least one layer")
        sizes = {tuple(v.shape) for v in self.vectors.values()}
        if len(sizes) != 1 or len(next(iter(sizes))) not in (1, 2):
            raise ValueError("every layer's vector must be [hidden] (or [latent_steps, hidden] for latent steering) "
                             f"of one size; got shapes {sorted(sizes)}")
        for layer, vector in self.vectors.items():
            if not torch.isfinite(vector).all():
                raise ValueError(f"vector for layer {layer} contains NaN or inf")
        keys = {}
        for layer in self.vectors:
            try:
                keys[layer] = layer_index(layer)
            except (TypeError, ValueError) as error:  # 1.5 or True would become layer 1, -3 fail only at steer
                raise ValueError(f"vectors has key {layer!r}: {error}") from None
        if len(set(keys.values())) != len(keys):
            raise ValueError(f"vectors has keys {list(self.vectors)} that name one layer twice")
        self.vectors = {keys[layer]: v for layer, v in sorted(self.vectors.items(), key=lambda item: keys[item[0]])}

    # -- inspection
    @property
    def layers(self) -> list[int]:
        return list(self.vectors)

    def norms(self) -> dict[int, float]:
        return {layer: float(v.norm()) for layer, v in self.vectors.items()}

    def __getitem__(self, layer: int) -> torch.Tensor:
        return self.vectors[layer]

    def __iter__(self) -> Iterator[int]:
        return iter(self.vectors)

    def __len__(self) -> int:
        return len(self.vectors)

    # -- applying
    def apply(self, model: nn.Module, coefficient: float = 1.0, *, weight: float | Mapping[int, float] = 1.0,
              layers: Sequence[int] | None = None, positions: PositionScope = "all",
              layers_path: str | None = None, gate: Gate | None = None) -> AbstractContextManager[None]:
        """`with vector.apply(model, coefficient=4.0, positions="generated"):` adds coefficient * weight[layer] *
        vector[layer] to the block outputs inside the block, restored on exit (`lib.hooks.steer`, which takes raw
        dicts and per-row vectors and coefficients as well). The one way in for a vector; `weight` weighs layers
        (`group_weights`), `coefficient` is the strength, `gate` makes it conditional (`lib.gates.Gate`)."""
        strength = real_number(coefficient, "coefficient")
        scaled: float | dict[int, float] = strength * real_number(weight, "weight") if not isinstance(weight, Mapping) \
            else {layer: strength * real_number(value, f"weight[{layer}]") for layer, value in weight.items()}
        return steer(model, self, scaled, layers=layers, positions=positions, layers_path=layers_path, gate=gate)

    def __repr__(self) -> str:
        norms = ", ".join(f"{layer}: {norm:.2f}" for layer, norm in self.norms().items())
        return f"SteeringVector(method={self.meta.get('method')!r}, norms={{{norms}}})"

    # -- arithmetic (metadata follows the left operand; the op is noted)
    def _combine(self, other: SteeringVector, sign: float, op: str) -> SteeringVector:
        if set(self.vectors) != set(other.vectors):
            raise ValueError(f"layers differ: {self.layers} vs {other.layers}")
        combined = {layer: v + sign * other.vectors[layer].to(v) for layer, v in self.vectors.items()}
        return SteeringVector(combined, {**self.meta, "op": op})

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, 1.0, "add")

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, -1.0, "sub")

    def __mul__(self, scalar: float) -> SteeringVector:
        return SteeringVector({layer: v * float(scalar) for layer, v in self.vectors.items()}, dict(self.meta))

    __rmul__ = __mul__

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def to(self, *args: Any, **kwargs: Any) -> SteeringVector:
        return SteeringVector({layer: v.to(*args, **kwargs) for layer, v in self.vectors.items()}, dict(self.meta))

    def select(self, layers: list[int]) -> SteeringVector:
        return SteeringVector({layer: self.vectors[layer] for layer in layers}, dict(self.meta))

    # -- files
    def save(self, path: str | Path) -> Path:
        """Write `<path>.safetensors` and `<path>.json`; returns the safetensors path.

        The sidecar holds the meta plus "norms", "layers" and the "sha256" of the safetensors bytes (these
        three keys are always recomputed here, so a stale value in `meta` never reaches the file).
        """
        base = Path(path).with_suffix("")
        base.parent.mkdir(parents=True, exist_ok=True)
        tensors = {str(layer): v.detach().cpu().contiguous() for layer, v in self.vectors.items()}
        data = save_safetensors(tensors)
        meta = {**self.meta, "norms": self.norms(), "layers": self.layers, "sha256": hashlib.sha256(data).hexdigest()}
        atomic_write(base.with_suffix(".safetensors"), data)
        write_json(base.with_suffix(".json"), meta)
        return base.with_suffix(".safetensors")

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        """Read `<path>.safetensors` and its `<path>.json` sidecar, verifying the bytes before parsing them.

        What is verified: a sidecar with "sha256" must match the file, else ValueError (a crash between the two
        writes of `save` also lands here). A sidecar without "sha256" (written by this project before checksums)
        and a bare safetensors file with no sidecar (written by another tool) load unverified: there is nothing
        to check against, and refusing would strand legitimate data. "sha256" is dropped from `meta` so that it
        is never mistaken for the checksum of a later save. Every error names the file.
        """
        base = Path(path).with_suffix("")
        file, sidecar = base.with_suffix(".safetensors"), base.with_suffix(".json")
        if not file.is_file():
            raise FileNotFoundError(f"path={str(path)!r}: no steering-vector file {file}; "
                                    "pass the base path (or .safetensors path) that SteeringVector.save wrote")
        data = file.read_bytes()
        meta: dict[str, Any] = {}
        if sidecar.exists():
            try:
                meta = json.loads(sidecar.read_text())
            except ValueError as error:  # JSONDecodeError, or bytes that are not text
                raise ValueError(f"{sidecar}: unreadable metadata sidecar of {file} ({error}); re-create both with "
                                 "SteeringVector.save, or delete the sidecar to load the tensors unverified") from error
            if not isinstance(meta, dict):
                raise ValueError(f"{sidecar}: metadata sidecar must be a JSON object, got {type(meta).__name__}")
            if "sha256" in meta:
                expected, actual = meta.pop("sha256"), hashlib.sha256(data).hexdigest()
                if expected != actual:
                    raise ValueError(f"{file}: sha256 {actual} does not match {expected!r} recorded in {sidecar}: "
                                     "the file is corrupt or was changed after saving; re-create it with "
                                     "SteeringVector.save (rerun what built it), or if the change was intended, "
                                     f"delete \"sha256\" from {sidecar} to load it unverified")
        try:
            tensors = load_safetensors(data)
        except (SafetensorError, KeyError, RuntimeError, ValueError) as error:
            raise ValueError(f"{file}: not a readable safetensors file ({error}); it may be truncated or not a "
                             "safetensors file at all: re-create it with SteeringVector.save") from error
        layers = _layer_keys(sorted(tensors), file)  # safetensors' order varies between runs; errors should not
        try:
            return cls({layers[key]: v for key, v in tensors.items()}, meta)
        except ValueError as error:
            raise ValueError(f"{file}: {error}") from error

    def to_plain_json(self, path: str | Path) -> None:
        """Export `{"layer": [floats]}`, the format of existing `steering_vectors.json` files.

        Only [hidden] vectors: that format has one flat list per layer, and `from_plain_json` rejects nested ones.
        """
        if next(iter(self.vectors.values())).dim() != 1:
            raise ValueError(f"path={str(path)!r}: plain JSON holds one [hidden] vector per layer, these are "
                             f"{tuple(next(iter(self.vectors.values())).shape)}; use save() for latent vectors")
        plain = {str(layer): v.float().cpu().tolist() for layer, v in self.vectors.items()}
        atomic_write(path, json.dumps(plain))

    @classmethod
    def from_plain_json(cls, path: str | Path, **meta: Any) -> SteeringVector:
        """Import `{"layer": [floats]}`. Keys are layer indices as digits ("3"; "03" is layer 3); a sign, a
        space, a decimal point, a prefix such as "layer_3", or two keys for one layer are errors naming the key,
        because guessing could steer the wrong layer. Repeated keys in the text are errors too."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text(), object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from error
        except ValueError as error:  # a repeated key, or bytes that are not text
            raise ValueError(f"{path}: {error}") from error
        if not isinstance(raw, dict) or not raw:
            raise ValueError(f"{path}: expected a non-empty object {{layer: [floats]}}")
        layers = _layer_keys(raw, path)
        vectors = {layers[key]: _plain_vector(key, values, path) for key, values in raw.items()}
        try:
            return cls(vectors, {"source": str(path), **meta})
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error


_LAYER_KEY = re.compile(r"[0-9]+")
_NAMED_LAYER_KEY = re.compile(r"(?:layer_|model\.layers\.)([0-9]+)")


def _layer_keys(keys: Iterable[str], file: Path) -> dict[str, int]:
    """Map each key of a vector file to its layer: ASCII digits only, one key per layer, so nothing is guessed."""
    seen: dict[int, str] = {}
    for key in keys:
        if not _LAYER_KEY.fullmatch(key):
            named = _NAMED_LAYER_KEY.fullmatch(key)
            fix = f"write it as \"{int(named[1])}\"" if named else "remove any sign, space, decimal point or prefix"
            raise ValueError(f"{file}: key {key!r} is not a layer index; keys must be non-negative integers "
                             f"written as digits, like \"3\": {fix}")
        layer = int(key)
        if layer in seen:
            first, second = sorted((seen[layer], key))
            raise ValueError(f"{file}: keys {first!r} and {second!r} both mean layer {layer}; keep one of them")
        seen[layer] = key
    return {key: layer for layer, key in seen.items()}


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` that refuses a repeated key, which `json.loads` would silently resolve to the last."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice; json would silently keep the last one, keep one yourself")
        out[key] = value
    return out


def _plain_vector(key: str, values: Any, file: Path) -> torch.Tensor:
    """One layer of a plain-JSON file as float32 [hidden]; empty, nested or non-number lists are errors."""
    if not isinstance(values, list) or not values:
        got = "an empty list" if values == [] else f"{type(values).__name__}"
        raise ValueError(f"{file}: key {key!r}: expected a non-empty list of floats [hidden], got {got}")
    if any(isinstance(x, list) for x in values):
        raise ValueError(f"{file}: key {key!r}: expected a flat list of floats [hidden], got a nested (2-D) list; "
                         "plain JSON holds one [hidden] vector per layer (latent [k, hidden] vectors use save/load)")
    bad = next((i for i, x in enumerate(values) if isinstance(x, bool) or not isinstance(x, int | float)), None)
    if bad is not None:
        raise ValueError(f"{file}: key {key!r}: expected numbers, found {values[bad]!r} at index {bad}")
    return torch.tensor(values, dtype=torch.float32)


# ----------------------------------------------------------------------------- builders


def _check_sets(a: Mapping[int, torch.Tensor], b: Mapping[int, torch.Tensor], paired: bool,
                dims: tuple[int, ...] = (2,)) -> None:
    if set(a) != set(b):
        raise ValueError(f"activation sets have different layers: {sorted(a)} vs {sorted(b)}")
    for layer in a:
        if a[layer].dim() not in dims or b[layer].dim() not in dims or a[layer].shape[1:] != b[layer].shape[1:]:
            raise ValueError(f"layer {layer}: activations must be [examples, hidden] (or [examples, latent_steps, "
                             f"hidden] for mean_difference); got {tuple(a[layer].shape)} and {tuple(b[layer].shape)}")
        if paired and a[layer].shape != b[layer].shape:
            raise ValueError(f"layer {layer}: paired sets need equal shapes, got {a[layer].shape} vs {b[layer].shape}")


def mean_difference(
    target: Mapping[int, torch.Tensor], baseline: Mapping[int, torch.Tensor], meta: dict[str, Any] | None = None
) -> SteeringVector:
    """Contrastive activation addition (Rimsky et al. 2024, CAA): mean(target) - mean(baseline) per layer.
    Per-step latent activations [examples, k, hidden] give a [k, hidden] direction per layer."""
    _check_sets(target, baseline, paired=False, dims=(2, 3))
    vectors = {layer: target[layer].float().mean(0) - baseline[layer].float().mean(0) for layer in target}
    n = {"n_target": len(next(iter(target.values()))), "n_baseline": len(next(iter(baseline.values())))}
    return SteeringVector(vectors, {"method": "mean_difference", **n, **(meta or {})})


def pca_direction(
    positive: Mapping[int, torch.Tensor], negative: Mapping[int, torch.Tensor], meta: dict[str, Any] | None = None
) -> SteeringVector:
    """First principal component of paired differences (RepE, Zou et al. 2023; repeng's `pca_diff`).

    The unit direction is oriented so that positives project above negatives and scaled to the
    mean projection of the differences, so it is on the scale of `mean_difference`.
    """
    _check_sets(positive, negative, paired=True)
    vectors = {}
    for layer in positive:
        diffs = positive[layer].float() - negative[layer].float()
        centered = diffs - diffs.mean(0)
        _, _, vh = torch.linalg.svd(centered if len(diffs) > 1 else diffs, full_matrices=False)
        direction = vh[0]
        projection = float((diffs @ direction).mean())
        vectors[layer] = direction * projection  # sign and length from the mean paired difference
    return SteeringVector(vectors, {"method": "pca_direction", "n": len(next(iter(positive.values()))), **(meta or {})})


def _on_mean_difference_scale(direction: torch.Tensor, target: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """The unit `direction` oriented so that the target projects above the baseline and scaled to the mean
    difference's projection on it: every builder's vector is on `mean_difference`'s scale."""
    unit = direction / direction.norm().clamp_min(1e-12)
    return unit * float((target.float().mean(0) - baseline.float().mean(0)) @ unit)


def ledoit_wolf_shrinkage(centered: torch.Tensor) -> float:
    """The Ledoit-Wolf (2004) shrinkage toward a scaled identity for the covariance of `centered` [n, d] rows:
    with n << d (a few hundred examples, thousands of hidden units) the sample covariance is singular."""
    x = centered.double()
    n, d = x.shape
    squared = x ** 2
    trace = squared.sum(0) / n
    mu = trace.sum() / d
    delta_sum = ((x.T @ x) ** 2).sum() / n ** 2
    beta = ((squared.T @ squared).sum() / n - delta_sum) / (d * n)
    delta = (delta_sum - 2 * mu * trace.sum() + d * mu ** 2) / d
    beta = min(float(beta), float(delta))
    return 0.0 if beta == 0 else beta / float(delta)


def _shrunk_covariance(rows: torch.Tensor, shrinkage: float | None) -> tuple[torch.Tensor, float]:
    """The covariance of `rows` [n, d] (float64) shrunk in standardised units: the correlation-scale matrix toward a
    scaled identity (Ledoit-Wolf's amount unless `shrinkage` is given), scaled back. Shrinking the raw covariance
    toward one variance would let the few massive residual dimensions set it for all."""
    centered = rows - rows.mean(0)
    std = centered.pow(2).mean(0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    z = centered / std
    alpha = ledoit_wolf_shrinkage(z) if shrinkage is None else float(shrinkage)
    covariance = z.T @ z / len(z)
    scale = covariance.trace() / covariance.shape[0]
    shrunk = (1 - alpha) * covariance + alpha * scale * torch.eye(covariance.shape[0], dtype=torch.float64)
    return std[:, None] * shrunk * std[None, :], alpha


def lda_direction(target: Mapping[int, torch.Tensor], baseline: Mapping[int, torch.Tensor],
                  shrinkage: float | None = None, meta: dict[str, Any] | None = None) -> SteeringVector:
    """Linear discriminant: the mean difference whitened by the within-class covariance, Sigma^-1 (mean_target -
    mean_baseline), Sigma the classes' covariances weighted by their sizes, each shrunk in standardised units
    (`_shrunk_covariance`; `shrinkage` in [0, 1], by default Ledoit-Wolf's, as scikit-learn's lsqr solver with
    shrinkage="auto"). One of the estimators AxBench (Wu et al. 2025) compares with mean difference; on the mean
    difference's scale (`_on_mean_difference_scale`)."""
    _check_sets(target, baseline, paired=False)
    if shrinkage is not None and not 0 <= shrinkage <= 1:
        raise ValueError(f"shrinkage={shrinkage} must be in [0, 1] (None: Ledoit-Wolf)")
    vectors, used = {}, {}
    for layer in target:
        a, b = target[layer].double(), baseline[layer].double()
        if len(a) < 2 or len(b) < 2:
            raise ValueError(f"layer {layer}: LDA needs at least 2 examples per class, got {len(a)} and {len(b)}")
        (cov_a, alpha_a), (cov_b, alpha_b) = _shrunk_covariance(a, shrinkage), _shrunk_covariance(b, shrinkage)
        weight = len(a) / (len(a) + len(b))
        direction = torch.linalg.solve(weight * cov_a + (1 - weight) * cov_b, a.mean(0) - b.mean(0))
        vectors[layer] = _on_mean_difference_scale(direction.float(), target[layer], baseline[layer])
        used[layer] = (alpha_a + alpha_b) / 2
    return SteeringVector(vectors, {"method": "lda", "shrinkage": used, **(meta or {})})


def _logistic_weights(z: torch.Tensor, y: torch.Tensor, l2: float, steps: int) -> torch.Tensor:
    """L2-penalised logistic regression weights for rows `z` [n, d] and 0/1 labels `y`, by L-BFGS (float64)."""
    weights = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(z @ weights + bias, y) + l2 * (weights ** 2).sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(loss)
    return weights.detach()


def probe_direction(target: Mapping[int, torch.Tensor], baseline: Mapping[int, torch.Tensor],
                    l2: float = 1e-2, steps: int = 200, meta: dict[str, Any] | None = None) -> SteeringVector:
    """A logistic-regression probe's weight vector per layer (target = 1), fit by L-BFGS on standardised
    activations with an L2 penalty `l2` on the weights, mapped back to the activation space; on the mean
    difference's scale. The estimator a probe-based monitor reads (Chen et al. 2025; AxBench)."""
    _check_sets(target, baseline, paired=False)
    if l2 < 0 or steps < 1:
        raise ValueError(f"l2={l2} must be >= 0 and steps={steps} >= 1")
    vectors = {}
    for layer in target:
        x = torch.cat([target[layer], baseline[layer]]).double()
        y = torch.cat([torch.ones(len(target[layer])), torch.zeros(len(baseline[layer]))]).double()
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        z = (x - mean) / std
        weights = _logistic_weights(z, y, l2, steps)
        direction = (weights / std).float()  # w.(x - mean)/std = (w/std).x + const
        vectors[layer] = _on_mean_difference_scale(direction, target[layer], baseline[layer])
    return SteeringVector(vectors, {"method": "logistic_probe", "l2": l2, **(meta or {})})


def random_like(vector: SteeringVector, seed: int = 0) -> SteeringVector:
    """A random direction with the same per-layer norms (per step for [k, hidden] latent vectors): the control
    every steering result needs."""
    generator = torch.Generator().manual_seed(seed)
    vectors = {}
    for layer, v in vector.vectors.items():
        direction = torch.randn(v.shape, generator=generator, dtype=torch.float32)
        norms = v.float().norm(dim=-1, keepdim=True)
        vectors[layer] = (direction / direction.norm(dim=-1, keepdim=True) * norms).to(v.dtype)
    return SteeringVector(vectors, {**vector.meta, "method": "random_norm_matched", "seed": seed})


# ----------------------------------------------------------------------------- layer groups


def layer_groups(n_layers: int, n_groups: int = 4, boundaries: Sequence[int] | None = None) -> list[list[int]]:
    """Split layers 0..n_layers-1 into contiguous groups: `n_groups` near-equal ones, or cut at `boundaries`
    (the first layer of every group after the first)."""
    cuts = list(boundaries) if boundaries is not None else [round(n_layers * g / n_groups) for g in range(1, n_groups)]
    if sorted(cuts) != cuts or any(not 0 < cut < n_layers for cut in cuts) or len(set(cuts)) != len(cuts):
        raise ValueError(f"boundaries={cuts} must be strictly increasing layers inside 1..{n_layers - 1}")
    edges = [0, *cuts, n_layers]
    return [list(range(edges[i], edges[i + 1])) for i in range(len(edges) - 1)]


def group_weights(groups: Sequence[Sequence[int]], weights: Sequence[float]) -> dict[int, float]:
    """Expand one weight per layer group into the {layer: weight} that `steer` takes."""
    if len(groups) != len(weights):
        raise ValueError(f"weights has {len(weights)} values for {len(groups)} layer groups")
    return {layer: float(w) for group, w in zip(groups, weights, strict=True) for layer in group}
