"""Weight deltas: `{param_name: Tensor}` plus metadata, applied to a model as `base + coefficient * dW`.

Weight steering (Fierro & Roger 2025, "Steering language models with weight arithmetic"): train one adapter on
responses of a positive persona and one on a negative persona, merge each into dense weights, and steer the base
model with `coefficient * (dW_pos - dW_neg)`. A delta is always computed from merged dense weights minus the base
(`delta_from_merged`), never by combining adapters with negative weights inside PEFT.

`apply_delta` is a context manager that saves a copy of every touched parameter and restores that copy in
`finally`: after the block the model is bit-identical to before, also when the block raises (undoing by
subtraction is not exact in low precision). `export_checkpoint` writes `base + coefficient * dW` as an ordinary Hugging
Face folder, so any serving engine runs the steered model without hooks.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lib.interventions import editing_weights
from lib.io import atomic_write, file_sha256, write_json

_LAYER_INDEX = re.compile(r"\.(\d+)\.")


@dataclass
class WeightDelta:
    """A dense weight difference per parameter name (names as in `model.named_parameters()`)."""

    deltas: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.deltas:
            raise ValueError("deltas is empty: a weight delta needs at least one parameter")
        for name, delta in self.deltas.items():
            if not isinstance(delta, torch.Tensor):
                raise TypeError(f"delta for {name!r} is {type(delta).__name__}, not a Tensor")
            if not torch.isfinite(delta).all():
                raise ValueError(f"delta for {name!r} contains NaN or inf")
        self.deltas = dict(sorted(self.deltas.items()))

    # -- inspection
    @property
    def names(self) -> list[str]:
        return list(self.deltas)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.deltas[name]

    def __len__(self) -> int:
        return len(self.deltas)

    def numel(self) -> int:
        return sum(d.numel() for d in self.deltas.values())

    def norm(self) -> float:
        """Frobenius norm over every parameter."""
        return float(torch.sqrt(sum((d.double() ** 2).sum() for d in self.deltas.values())))

    def module_norms(self) -> dict[str, float]:
        """Frobenius norm per parameter (e.g. `model.layers.3.mlp.down_proj.weight`)."""
        return {name: float(d.double().norm()) for name, d in self.deltas.items()}

    def layer_norms(self) -> dict[str, float]:
        """Frobenius norm per decoder layer (the first `.<int>.` in the name); other parameters under "other"."""
        squares: dict[str, float] = defaultdict(float)
        for name, d in self.deltas.items():
            match = _LAYER_INDEX.search(name)
            squares[match.group(1) if match else "other"] += float((d.double() ** 2).sum())
        order = sorted(squares, key=lambda k: (k == "other", int(k) if k.isdigit() else 0))
        return {key: squares[key] ** 0.5 for key in order}

    def __repr__(self) -> str:
        return f"WeightDelta({len(self)} params, {self.numel():,} values, norm={self.norm():.4g}, meta={self.meta})"

    # -- arithmetic (metadata follows the left operand; the op is noted)
    def _combine(self, other: WeightDelta, sign: float, op: str) -> WeightDelta:
        if not isinstance(other, WeightDelta):
            return NotImplemented
        combined = {name: d.clone() for name, d in self.deltas.items()}
        for name, d in other.deltas.items():
            if name in combined:
                if combined[name].shape != d.shape:
                    raise ValueError(f"{name}: shapes differ, {tuple(combined[name].shape)} vs {tuple(d.shape)}")
                combined[name] = combined[name] + sign * d.to(combined[name])
            else:  # a parameter one adapter did not touch is an implicit zero in the other
                combined[name] = sign * d.clone()
        return WeightDelta(combined, {**self.meta, "op": op})

    def __add__(self, other: WeightDelta) -> WeightDelta:
        return self._combine(other, 1.0, "add")

    def __sub__(self, other: WeightDelta) -> WeightDelta:
        return self._combine(other, -1.0, "sub")

    def __mul__(self, scalar: float) -> WeightDelta:
        return WeightDelta({name: d * float(scalar) for name, d in self.deltas.items()}, dict(self.meta))

    __rmul__ = __mul__

    def __neg__(self) -> WeightDelta:
        return self * -1.0

    def zeros_like(self) -> WeightDelta:
        return WeightDelta({name: torch.zeros_like(d) for name, d in self.deltas.items()}, {"op": "zeros"})

    def to(self, *args: Any, **kwargs: Any) -> WeightDelta:
        return WeightDelta({name: d.to(*args, **kwargs) for name, d in self.deltas.items()}, dict(self.meta))

    # -- files
    def content_digest(self) -> str:
        """sha256 of the names, dtypes, shapes and bytes of every tensor (not the meta): equal digests mean the same
        delta, whatever it is called (the ablation scores a variant once when two groups build the same one)."""
        digest = hashlib.sha256()
        for name, d in self.deltas.items():
            flat = d.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}|{flat.dtype}|{tuple(d.shape)}|".encode())
            digest.update(flat.view(torch.uint8).numpy())  # the buffer itself, no copy
        return digest.hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write `<path>.safetensors` (tensors) and `<path>.json` (metadata, norms and the "sha256" of the
        tensor file, checked by `load`); returns the tensor file."""
        base = Path(path).with_suffix("")
        file = base.with_suffix(".safetensors")
        tensors = {name: d.detach().cpu().contiguous() for name, d in self.deltas.items()}
        meta = {**self.meta, "norm": self.norm(), "layer_norms": self.layer_norms(), "n_params": len(self)}
        atomic_write(file, lambda tmp: save_file(tensors, tmp))
        write_json(base.with_suffix(".json"), {**meta, "sha256": file_sha256(file)})
        return file

    @classmethod
    def load(cls, path: str | Path) -> WeightDelta:
        """Read a delta written by `save`. A sidecar with "sha256" must match the tensor file, else ValueError
        naming both (corrupt, or changed after saving); a sidecar that is not a JSON object is a ValueError naming
        it; a sidecar written before checksums, or none, loads unverified (as `SteeringVector.load`)."""
        base = Path(path).with_suffix("")
        file, sidecar = base.with_suffix(".safetensors"), base.with_suffix(".json")
        if not file.exists():
            raise FileNotFoundError(f"{file} does not exist (saved with WeightDelta.save?)")
        meta: dict[str, Any] = {}
        if sidecar.exists():
            try:
                meta = json.loads(sidecar.read_text())
            except ValueError as error:  # JSONDecodeError, or bytes that are not text
                raise ValueError(f"{sidecar}: unreadable metadata sidecar of {file} ({error}); restore it, re-create "
                                 "both with WeightDelta.save (rerun what saved it), or delete the sidecar to load the "
                                 "tensors unverified") from error
            if not isinstance(meta, dict):
                raise ValueError(f"{sidecar}: metadata sidecar must be a JSON object, got {type(meta).__name__}")
        if "sha256" in meta:
            expected, actual = meta.pop("sha256"), file_sha256(file)
            if expected != actual:
                raise ValueError(f"{file}: sha256 {actual} does not match {expected!r} recorded in {sidecar}: the "
                                 "file is corrupt or was changed after saving; re-create it (rerun what saved it), or "
                                 f"if the change was intended, delete \"sha256\" from {sidecar} to load it unverified")
        tensors = load_file(file)
        for derived in ("norm", "layer_norms", "n_params"):
            meta.pop(derived, None)
        return cls(dict(tensors), meta)


def _parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    # named_parameters drops duplicates, so a tied embedding / lm_head is one entry under its first name
    return dict(model.named_parameters())


def check_delta(model: nn.Module, delta: WeightDelta) -> dict[str, nn.Parameter]:
    """Every delta name must be a parameter of the model with the same shape; returns the parameters touched."""
    params = _parameters(model)
    missing = [name for name in delta.names if name not in params]
    if missing:
        sample = ", ".join(list(params)[:4])
        raise ValueError(f"the delta has parameters the model lacks: {missing[:5]}{'...' if len(missing) > 5 else ''}"
                         f" (model parameters look like: {sample}, ...). Was it computed on another architecture?")
    for name, d in delta.deltas.items():
        if params[name].shape != d.shape:
            raise ValueError(f"{name}: delta shape {tuple(d.shape)} != parameter shape {tuple(params[name].shape)}")
    return {name: params[name] for name in delta.names}


@contextmanager
def apply_delta(model: nn.Module, delta: WeightDelta, coefficient: float = 1.0) -> Iterator[nn.Module]:
    """`with apply_delta(model, dW, coefficient):` the model's weights are `W + coefficient * dW` inside the block.

    A copy of every touched parameter is saved before the edit and copied back in `finally`, so the weights
    afterwards are bit-identical to before, also when the block raises.
    """
    coefficient = float(coefficient)
    if not torch.isfinite(torch.tensor(coefficient)):
        raise ValueError(f"coefficient={coefficient} must be finite")
    touched = check_delta(model, delta)
    saved = {name: param.detach().clone() for name, param in touched.items()}
    try:
        with torch.no_grad():
            for name, param in touched.items():
                param.add_(delta.deltas[name].to(device=param.device, dtype=param.dtype), alpha=coefficient)
        with editing_weights(model, f"apply_delta(coefficient={coefficient})"):
            yield model
    finally:
        with torch.no_grad():
            for name, param in touched.items():
                param.copy_(saved[name])


def delta_from_merged(base: nn.Module, merged: nn.Module | Mapping[str, torch.Tensor],
                      meta: dict[str, Any] | None = None) -> WeightDelta:
    """Dense `merged - base` for every parameter that changed (compared in float32 on the CPU).

    `merged` is a model whose adapter was merged into its weights (PEFT `merge_and_unload`) or a state dict.
    The base must be the untouched original: PiSSA rewrites the base weights it wraps, so a delta against the
    wrapped copy would miss its initial residual.
    """
    merged_params = merged if isinstance(merged, Mapping) else _parameters(merged)
    deltas = {}
    for name, param in _parameters(base).items():
        if name not in merged_params:
            raise ValueError(f"{name} is missing from the merged model: merge the adapter first (merge_and_unload)")
        other = merged_params[name]
        if other.shape != param.shape:
            raise ValueError(f"{name}: merged shape {tuple(other.shape)} != base shape {tuple(param.shape)}")
        diff = other.detach().float().cpu() - param.detach().float().cpu()
        if diff.abs().max() > 0:
            deltas[name] = diff
    if not deltas:
        raise ValueError("merged and base weights are identical: the adapter did not change anything "
                         "(zero-initialised and untrained? check steps and learning rate)")
    return WeightDelta(deltas, dict(meta or {}))


def export_checkpoint(model: nn.Module, tokenizer: Any, delta: WeightDelta, coefficient: float, folder: str | Path,
                      overwrite: bool = False) -> Path:
    """Write `base + coefficient * dW` as an ordinary Hugging Face checkpoint (config, safetensors, tokenizer),
    loadable by `AutoModelForCausalLM.from_pretrained` or any serving engine, plus `steerlab_delta.json` saying
    what it is."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} exists and is not empty; pass overwrite=True or choose another folder")
    folder.mkdir(parents=True, exist_ok=True)
    with apply_delta(model, delta, coefficient):
        model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    record = {"coefficient": float(coefficient), "delta_meta": delta.meta, "delta_norm": delta.norm(),
              "base_model": getattr(model, "steerlab_name", getattr(model.config, "_name_or_path", ""))}
    write_json(folder / "steerlab_delta.json", record)
    return folder
