"""Steering vectors: `{layer: Tensor[hidden]}` plus metadata, and the builders that make them.

The coefficient is never stored: it is passed when applying (`lib.hooks.steer`), as in
steering-vectors and repeng. Files are safetensors (tensors) plus a JSON sidecar (metadata),
and the plain `{layer: [floats]}` JSON that existing steering scripts write
(`steering_vectors.json`) imports and exports losslessly for float32.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


@dataclass
class SteeringVector:
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
        self.vectors = {int(layer): v for layer, v in sorted(self.vectors.items())}

    # -- inspection
    @property
    def layers(self) -> list[int]:
        return list(self.vectors)

    def norms(self) -> dict[int, float]:
        return {layer: float(v.norm()) for layer, v in self.vectors.items()}

    def __getitem__(self, layer: int) -> torch.Tensor:
        return self.vectors[layer]

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
        """Write `<path>.safetensors` and `<path>.json`; returns the safetensors path."""
        base = Path(path).with_suffix("")
        base.parent.mkdir(parents=True, exist_ok=True)
        tensors = {str(layer): v.detach().cpu().contiguous() for layer, v in self.vectors.items()}
        meta = {**self.meta, "norms": self.norms(), "layers": self.layers}
        _atomic(base.with_suffix(".safetensors"), lambda tmp: save_file(tensors, tmp))
        _atomic(base.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, default=str)))
        return base.with_suffix(".safetensors")

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        base = Path(path).with_suffix("")
        tensors = load_file(base.with_suffix(".safetensors"))
        meta_path = base.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        return cls({int(layer): v for layer, v in tensors.items()}, meta)

    def to_plain_json(self, path: str | Path) -> None:
        """Export `{"layer": [floats]}`, the format of existing `steering_vectors.json` files."""
        plain = {str(layer): v.float().cpu().tolist() for layer, v in self.vectors.items()}
        _atomic(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(plain)))

    @classmethod
    def from_plain_json(cls, path: str | Path, **meta: Any) -> SteeringVector:
        raw = json.loads(Path(path).read_text())
        if not isinstance(raw, dict) or not raw:
            raise ValueError(f"{path}: expected a non-empty object {{layer: [floats]}}")
        try:
            vectors = {int(layer): torch.tensor(values, dtype=torch.float32) for layer, values in raw.items()}
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: expected {{layer: [floats]}}: {error}") from error
        return cls(vectors, {"source": str(path), **meta})


def _atomic(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(str(tmp))
    os.replace(tmp, path)


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
