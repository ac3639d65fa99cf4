"""Read and write the residual stream (decoder block outputs) with context managers.

`record` reads block outputs; `steer` adds `coefficient * weight[layer] * vector[layer]` to them. Both install
forward hooks inside `try` and remove them in `finally`, so after the block the model is bit-identical to before,
also when the block raises (the contract of steering-vectors' `apply` and TransformerLens' `hooks()`).

Which tokens are real, prompt or generated comes from `lib.positions`; what counts as an intervention for caches
from `lib.interventions`. A user reaches for `SteeringVector.apply(model, coefficient=...)` (lib.vectors); `steer` is
its functional form for raw `{layer: Tensor}` dicts and per-row vectors, and `Steering` is the coefficient-free
record that `run_batches` applies batch by batch.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lib.gates import Gate
from lib.interventions import read_only
from lib.models import check_layers, find_layers, hidden_size, layer_index
from lib.positions import PositionScope, check_scope, tracked

Reduction = Literal["all", "last", "mean"]
REDUCTIONS = ("all", "last", "mean")
# What `steer` takes: one {layer: vector} (a SteeringVector is one) or one per batch row, None for an unsteered row.
LayerVectors = Mapping[int, torch.Tensor]
Vectors = LayerVectors | Sequence[LayerVectors | None]


def split_block_output(output: Any, layer: int) -> tuple[torch.Tensor, tuple | None]:
    """Decoder blocks return a Tensor (transformers 5) or a tuple led by one; anything else is an error,
    never a silent pass-through."""
    if isinstance(output, torch.Tensor):
        return output, None
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0], output[1:]
    raise TypeError(f"Block {layer} returned {type(output).__name__}; expected a Tensor or a tuple led by one")


def join_block_output(hidden: torch.Tensor, rest: tuple | None) -> Any:
    return hidden if rest is None else (hidden, *rest)


def real_number(value: Any, name: str) -> float:
    """`value` as a finite float; strings, bools and non-numbers are refused naming `name` (float("2.5") would
    accept a string from a config file or a command line silently)."""
    if isinstance(value, bool | str | bytes) or not isinstance(value, numbers.Real | torch.Tensor) or (
            isinstance(value, torch.Tensor) and (value.numel() != 1 or value.dtype == torch.bool)):
        raise ValueError(f"{name}={value!r} is a {type(value).__name__}; give a number, e.g. 2.5")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name}={number} must be finite")
    return number


def coefficient_values(coefficients: Sequence[float] | torch.Tensor | None, rows: int | None = None,
                       name: str = "coefficients") -> torch.Tensor | None:
    """Per-row coefficients as a float32 vector, checked before any forward pass: a sequence (or 1-D tensor) of
    finite numbers, one per row when `rows` is known. A string is refused by name, not iterated: "12" would be
    two rows of "1" and "2". The one check for `steer`, `run_batches` and latent generation."""
    if coefficients is None:
        return None
    if isinstance(coefficients, str | bytes | Mapping) or not hasattr(coefficients, "__iter__"):
        raise ValueError(f"{name}={coefficients!r} is a {type(coefficients).__name__}; give one number per batch "
                         "row, e.g. [1.0, 4.0] (a list, not a string)")
    if hasattr(coefficients, "__array__") and not isinstance(coefficients, torch.Tensor):  # numpy, pandas
        array = np.asarray(coefficients)
        if array.dtype.kind not in "iuf":
            raise ValueError(f"{name} is an array of {array.dtype}; give real numbers, one per batch row")
        coefficients = torch.from_numpy(array.astype(np.float32))
    if isinstance(coefficients, torch.Tensor):
        if coefficients.dtype == torch.bool or coefficients.is_complex() or coefficients.dim() > 1:
            raise ValueError(f"{name} is a {coefficients.dtype} tensor of shape {tuple(coefficients.shape)}; give a "
                             "1-D real tensor, one value per batch row")
        values = coefficients.detach().to(device="cpu", dtype=torch.float32).reshape(-1)
    else:
        values = torch.tensor([real_number(value, f"{name}[{i}]") for i, value in enumerate(coefficients)],
                              dtype=torch.float32)
    if not torch.isfinite(values).all():
        raise ValueError(f"{name} contain NaN or inf")
    if rows is not None and values.numel() != rows:
        raise ValueError(f"{name} has {values.numel()} values for {rows} rows; give one per row")
    return values


@dataclass
class Activations(Mapping[int, torch.Tensor]):
    """Block outputs per layer, one entry per forward call, concatenated along the batch on access.

    reduction "last": [N, H] at each row's last real token; "mean": [N, H] over real tokens;
    "all": [N, T, H] with `mask` [N, T] marking real tokens (all calls must share T).
    """

    reduction: str
    chunks: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    mask_chunks: list[torch.Tensor] = field(default_factory=list)
    # Optional [B, T] selection for the next forward call: "last" and "mean" then use only real tokens
    # that are also selected (e.g. the completion after a prompt). Set it before each call.
    token_mask: torch.Tensor | None = None

    def __getitem__(self, layer: int) -> torch.Tensor:
        if layer not in self.chunks:
            raise KeyError(f"layer {layer} was not recorded; recorded: {sorted(self.chunks)}")
        return _cat(self.chunks[layer], "activations")

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self.chunks))

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def mask(self) -> torch.Tensor:
        return _cat(self.mask_chunks, "mask")


def _cat(chunks: list[torch.Tensor], what: str) -> torch.Tensor:
    if not chunks:
        raise ValueError(f"No {what} recorded: run a forward pass inside the `record` block")
    shapes = {tuple(chunk.shape[1:]) for chunk in chunks}
    if len(shapes) > 1:
        raise ValueError(f"Forward calls had different lengths {sorted(shapes)}; use reduction='last' or 'mean'")
    return torch.cat(chunks)


def reduce_hidden(hidden: torch.Tensor, real: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce [B, T, H] over tokens where `real` [B, T] is True."""
    if reduction == "all":
        return hidden
    if reduction == "last":
        positions = torch.arange(real.shape[1], device=real.device).expand_as(real)
        last = torch.where(real, positions, -1).amax(dim=1)
        if (last < 0).any():
            raise ValueError("A row has no real tokens (attention_mask all zero)")
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if reduction == "mean":
        weights = real.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)
    raise ValueError(f"reduction={reduction!r} is not one of {REDUCTIONS}")


@contextmanager
def record(
    model: nn.Module,
    layers: Sequence[int] | None = None,
    reduction: Reduction = "all",
    layers_path: str | None = None,
) -> Iterator[Activations]:
    """Record block outputs: `with record(model, [10, 15], "last") as acts: model(**batch)`.

    Activations are detached and moved to the CPU in float32 so a long extraction does not
    hold the graph or device memory.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not one of {REDUCTIONS}")
    path, blocks = find_layers(model, layers_path)
    layers = list(range(len(blocks))) if layers is None else [layer_index(layer) for layer in layers]
    if not layers:
        raise ValueError("layers=[] records nothing: omit layers to record every block")
    check_layers(model, layers, blocks=blocks)
    acts = Activations(reduction, {layer: [] for layer in layers})
    handles = []
    with tracked(model, path) as tracker:

        def make_hook(layer: int):
            def hook(module: nn.Module, args: tuple, output: Any) -> None:
                hidden, _ = split_block_output(output, layer)
                assert tracker.current is not None
                real = tracker.current.real.to(hidden.device)  # blocks may sit on other devices
                if acts.token_mask is not None:
                    if acts.token_mask.shape != real.shape:
                        raise ValueError(f"token_mask has shape {tuple(acts.token_mask.shape)}; this forward call "
                                         f"has {tuple(real.shape)}")
                    real = real & acts.token_mask.to(real.device).bool()
                reduced = reduce_hidden(hidden.detach(), real, reduction)
                acts.chunks[layer].append(reduced.float().cpu())
                if layer == layers[0]:
                    acts.mask_chunks.append(real.cpu())

            return read_only(hook)

        try:
            for layer in layers:
                handles.append(blocks[layer].register_forward_hook(make_hook(layer)))
            yield acts
        finally:
            for handle in handles:
                handle.remove()


def layer_weights(layer_vectors: Mapping[int, torch.Tensor], weight: float | Mapping[int, float],
                  layers: Sequence[int] | None) -> dict[int, float]:
    """{layer: weight} for the layers to act on (all the vector's, or `layers`; with a weight mapping, only its
    layers). Refuses layers without a vector and non-finite weights, for `steer` and the exporters alike."""
    if not layer_vectors:
        raise ValueError("vectors is empty: give {layer: Tensor[hidden]} for at least one layer")
    layer_vectors = {layer_index(layer): vector for layer, vector in layer_vectors.items()}
    if layers is not None and not list(layers):
        raise ValueError("layers=[] selects no layer: omit layers to use all of the vector's layers "
                         f"({sorted(layer_vectors)})")
    chosen = sorted(layer_vectors) if layers is None else [layer_index(layer) for layer in layers]
    missing = [layer for layer in chosen if layer not in layer_vectors]
    if missing:
        raise ValueError(f"layers={missing} have no vector; the vector has layers {sorted(layer_vectors)}")
    if isinstance(weight, Mapping):
        weight = {layer_index(layer): value for layer, value in weight.items()}
        if not weight:
            raise ValueError("weight={} steers no layer: give {layer: weight} for at least one layer, or one number")
        unknown = sorted(set(weight) - set(layer_vectors))
        if unknown:
            raise ValueError(f"weight has layers {unknown} that the vector lacks ({sorted(layer_vectors)})")
        chosen = [layer for layer in chosen if layer in weight]
        if not chosen:
            raise ValueError(f"weight has layers {sorted(weight)} but layers={list(layers or [])} selects none of "
                             "them: nothing would be steered")
        weights = {layer: real_number(weight[layer], f"weight[{layer}]") for layer in chosen}
    else:
        weights = {layer: real_number(weight, "weight") for layer in chosen}
    return weights


def per_row(vectors: Vectors) -> bool:
    """True for one {layer: vector} per batch row (a list or tuple), False for one for every row (a mapping)."""
    if isinstance(vectors, Mapping):
        return False
    if isinstance(vectors, Sequence) and not isinstance(vectors, str | bytes | torch.Tensor):
        return True
    raise TypeError(f"vectors is a {type(vectors).__name__}; give a SteeringVector or {{layer: Tensor[hidden]}}, or "
                    "a list of those (None for an unsteered row), one per batch row")


def _row_vectors(model: nn.Module, vectors: Vectors, weight: float | Mapping[int, float], layers: Sequence[int] | None,
                 blocks: nn.ModuleList) -> tuple[dict[int, torch.Tensor], int | None]:
    """{layer: [rows or 1, hidden] float32 weight * vector}: one row per batch row for per-row vectors (zeros where a
    row does not steer that layer), else one row for all. Also the number of rows per-row vectors expect."""
    rowwise = per_row(vectors)
    entries = list(vectors) if rowwise else [vectors]
    if rowwise and not entries:
        raise ValueError("vectors=[] has no rows: give one {layer: vector} (or None for an unsteered row) per "
                         "batch row")
    size = hidden_size(model)
    resolved: list[dict[int, torch.Tensor]] = []
    for row, entry in enumerate(entries):
        if entry is None and rowwise:
            resolved.append({})
            continue
        if not isinstance(entry, Mapping):
            raise TypeError(f"vectors[{row}] is a {type(entry).__name__}; give a SteeringVector, "
                            "{layer: Tensor[hidden]} or None")
        layer_vectors: Mapping[Any, torch.Tensor] = entry
        where = f"vectors[{row}]: " if rowwise else ""
        try:
            weights = layer_weights(layer_vectors, weight, layers)
        except ValueError as error:
            raise ValueError(f"{where}{error}") from None
        layer_vectors = {layer_index(layer): vector for layer, vector in layer_vectors.items()}
        check_layers(model, list(weights), blocks=blocks)
        scaled = {}
        for layer, layer_weight in weights.items():
            vector = layer_vectors[layer]
            if not isinstance(vector, torch.Tensor) or vector.shape != (size,):
                shape = tuple(vector.shape) if isinstance(vector, torch.Tensor) else type(vector).__name__
                raise ValueError(f"{where}vector for layer {layer} has shape {shape}; the model's hidden size is "
                                 f"{size}")
            if not torch.isfinite(vector).all():
                raise ValueError(f"{where}vector for layer {layer} contains NaN or inf")
            scaled[layer] = vector.detach().float() * layer_weight
        resolved.append(scaled)
    chosen = sorted({layer for scaled in resolved for layer in scaled})
    if not chosen:
        raise ValueError("vectors steer no layer in any row: give at least one row a vector")
    stacked = {}
    for layer in chosen:
        rows = [scaled.get(layer) for scaled in resolved]
        device = next(r for r in rows if r is not None).device
        stacked[layer] = torch.stack([r if r is not None else torch.zeros(size, device=device) for r in rows])
    return stacked, len(entries) if rowwise else None


@contextmanager
def steer(
    model: nn.Module,
    vectors: Vectors,
    weight: float | Mapping[int, float] = 1.0,
    *,
    layers: Sequence[int] | None = None,
    positions: PositionScope = "all",
    coefficients: Sequence[float] | torch.Tensor | None = None,
    layers_path: str | None = None,
    gate: Gate | None = None,
) -> Iterator[None]:
    """Add `coefficient[row] * weight[layer] * vector[layer]` to block outputs at the positions in scope.

    vectors: a SteeringVector or any {layer: Tensor[hidden]}; or one of those per batch row (a list, with None
        for an unsteered row), so a layer sweep, a vector-vs-random comparison or several users' vectors run as
        one batch.
    weight: one weight for every layer, or {layer: weight} (see `group_weights` for layer groups).
    positions: "all" real tokens, "prompt" (the first forward of a generation, or all of a plain
        forward), "generated" (tokens after the prompt), or a slice of positions in each row's
        unpadded sequence.
    coefficients: one value per batch row, so a sweep over K coefficients runs as one batch
        (repeat the prompts K times). Omitted, every row gets 1.
    gate: conditional steering (`lib.gates.Gate`, Lee et al. 2025): each row is steered only where the gate, reading
        the row's prompt at its condition layer during the prefill, opens; the decision holds for generated tokens.

    The added delta is computed in float32 (coefficient x weight x vector, scope mask) and cast to the model's
    dtype once, so a bf16 model gets the bf16 rounding of the exact delta, not a product of rounded factors.

    Hidden states: the hooks are put first on each block, so whatever else reads a block's output sees it steered:
    `record` entered before or inside this block, and `output_hidden_states=True`. transformers 5.24 captures hidden
    states with forward hooks it installs on a model's first such call; appended after them, `hidden_states[L + 1]`
    looked unsteered at a steered layer L, or steered, depending on which came first (tests/test_hooks.py pins
    both orders).
    """
    path, blocks = find_layers(model, layers_path)
    stacked, n_rows = _row_vectors(model, vectors, weight, layers, blocks)
    check_scope(positions)
    row_coefficients = coefficient_values(coefficients)
    if gate is not None:
        check_layers(model, [gate.layer], blocks=blocks)
        if gate.direction.shape != (hidden_size(model),):
            raise ValueError(f"the gate's direction has shape {tuple(gate.direction.shape)}; the model's hidden size "
                             f"is {hidden_size(model)}")
        early = [layer for layer in stacked if layer < gate.layer]
        if early and positions != "generated":
            raise ValueError(f"layers {early} lie below the gate's condition layer {gate.layer}: the prompt would be "
                             "steered there before the gate has read it. Steer at or above the condition layer, or "
                             "pass positions='generated'")

    handles = []
    with tracked(model, path) as tracker:

        def make_hook(layer: int):
            row_vectors = stacked[layer]  # [rows or 1, hidden], float32
            deltas: dict[tuple, torch.Tensor] = {}  # (device, dtype, batch) -> [rows or 1, 1, hidden]

            def hook(module: nn.Module, args: tuple, output: Any) -> Any:
                hidden, rest = split_block_output(output, layer)
                assert tracker.current is not None
                if not tracker.mask_is_2d and positions != "all":
                    raise ValueError(f"positions={positions!r} needs a 2-D attention_mask to tell prompt from padding")
                batch = hidden.shape[0]
                if n_rows is not None and n_rows != batch:
                    raise ValueError(f"vectors has {n_rows} rows but the batch has {batch} rows; give one vector "
                                     "(or None) per row (after num_return_sequences expansion)")
                key = (hidden.device, hidden.dtype, batch)
                if key not in deltas:
                    delta = row_vectors.to(hidden.device)
                    if row_coefficients is not None:
                        if row_coefficients.numel() != batch:
                            raise ValueError(
                                f"coefficients has {row_coefficients.numel()} values but the batch has {batch} "
                                "rows; give one coefficient per row (after num_return_sequences expansion)"
                            )
                        delta = delta * row_coefficients.to(hidden.device).unsqueeze(1)
                    deltas[key] = delta.unsqueeze(1).to(hidden.dtype)  # float32 product, cast once
                # the scope mask is 0/1, so multiplying after the cast equals casting the masked product
                in_scope = tracker.current.scope_mask(positions, hidden.device, hidden.dtype)
                delta = deltas[key] if in_scope is None else deltas[key] * in_scope
                if gate is not None:  # 0/1 per row, exact like the scope
                    delta = delta * gate.rows(batch, hidden.device, hidden.dtype)
                return join_block_output(hidden + delta, rest)

            return hook

        @read_only
        def read_condition(module: nn.Module, args: tuple, output: Any) -> None:
            assert gate is not None and tracker.current is not None
            if tracker.current.past == 0:  # the prefill: read the prompt, before this block is steered
                hidden, _ = split_block_output(output, gate.layer)
                gate.read_prefill(hidden.detach(), tracker.current.real)

        try:
            for layer in stacked:
                # prepend: the block's output is steered before any other hook sees it (transformers' hidden-state
                # capture installs its hooks on first use, possibly before this block was entered)
                handles.append(blocks[layer].register_forward_hook(make_hook(layer), prepend=True))
            if gate is not None:  # prepended after the steering hooks: it reads the condition block unsteered
                gate.decisions = gate.scores = None
                handles.append(blocks[gate.layer].register_forward_hook(read_condition, prepend=True))
            yield
        finally:
            for handle in handles:
                handle.remove()


@dataclass
class Steering:
    """What `run_batches` adds, without its strength: a vector (a SteeringVector or any {layer: Tensor[hidden]}, or
    one per row of the whole job), a weight per layer, the layers, the position scope and the layer path. The
    coefficient comes per batch row when applying, as in steering-vectors and repeng, so one Steering serves a whole
    sweep."""

    vector: Vectors
    weight: float | Mapping[int, float] = 1.0
    layers: Sequence[int] | None = None
    positions: PositionScope = "all"
    layers_path: str | None = None
    gate: Gate | None = None

    def __post_init__(self) -> None:
        per_row(self.vector)  # a wrong type is refused here, not at the first batch
        check_scope(self.positions)

    @property
    def rows(self) -> int | None:
        """How many batch rows the per-row vectors cover; None for one vector for every row."""
        return len(self.vector) if per_row(self.vector) else None  # type: ignore[arg-type]

    def lowest_layer(self, rows: slice | None = None) -> int | None:
        """The lowest block the batch of `rows` may steer (a lower bound when `weight` leaves layers out), None when
        no row of it steers: blocks below it compute what the plain model does (`lib.trunk.shared_trunk`)."""
        if self.layers is not None:
            return min((layer_index(layer) for layer in self.layers), default=None)
        entries = self.vector[rows] if rows is not None and per_row(self.vector) else (  # type: ignore[index]
            self.vector if per_row(self.vector) else [self.vector])
        return min((layer_index(layer) for entry in entries if entry is not None for layer in entry), default=None)

    def batch(self, model: nn.Module, coefficients: Sequence[float] | torch.Tensor | None = None,
              rows: slice | None = None) -> Any:
        """The `steer` context for one batch: `rows` picks that batch's entries of per-row vectors, `coefficients`
        are its rows' strengths."""
        vector = self.vector[rows] if rows is not None and per_row(self.vector) else self.vector  # type: ignore[index]
        if vector is not self.vector and all(v is None for v in vector) and any(v is not None for v in self.vector):
            return contextlib.nullcontext()  # this batch holds only unsteered rows of a job that steers others
        return steer(model, vector, self.weight, layers=self.layers, positions=self.positions,
                     coefficients=coefficients, layers_path=self.layers_path, gate=self.gate)
