"""Read and write the residual stream (decoder block outputs) with context managers.

`record` reads block outputs; `steer` adds `coefficient * weight[layer] * vector[layer]` to them.
Both install forward hooks inside `try` and remove them in `finally`, so after the block
the model is bit-identical to before, also when the block raises (the contract of
steering-vectors' `apply` and TransformerLens' `hooks()`).

Positions are resolved from the attention mask that reaches the decoder stack, so left and
right padding and KV-cached generation give the same per-token result as an unpadded
batch of one. A pre-hook on the module that owns the blocks reads that mask once per
forward call and every block hook reuses it.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lib.models import find_layers, hidden_size, layer_index

Reduction = Literal["all", "last", "mean"]
PositionScope = Literal["all", "prompt", "generated"] | slice
REDUCTIONS = ("all", "last", "mean")


READ_ONLY = "steerlab_reads_only"  # attribute set on hook functions that never change what the model computes
# Other libraries' hooks that only read: transformers' output capture (installed on a model's first call with
# output_hidden_states, and kept). tests/test_extract.py fails if a release moves it or makes it write.
READ_ONLY_MODULES = ("transformers.utils.output_capturing",)
_EDITS: weakref.WeakKeyDictionary[nn.Module, list[str]] = weakref.WeakKeyDictionary()


def read_only(hook: Any) -> Any:
    """Mark a hook function as one that only reads (`record`, position tracking): it does not make the model's
    activations different from an unhooked model's, so `active_interventions` ignores it."""
    setattr(hook, READ_ONLY, True)
    return hook


class _Positions:
    """Per-forward-call position facts for the tokens being processed now, shape [batch, tokens].

    Only `real` is computed up front; the content and absolute indices are built when a scope asks for them, and
    each scope's mask is built once per call and device (every steered layer shares it), so the common case,
    positions="all" on unpadded rows, costs no tensor work per layer.
    """

    def __init__(self, real: torch.Tensor, mask: torch.Tensor, past: int, prompt_length: int | None) -> None:
        self.real = real  # True where the token is not padding
        self._mask = mask  # the whole 2-D attention mask, cached tokens included
        self.past = past
        self.prompt_length = prompt_length  # padded length of the prompt; None when it ran outside this context
        self._scopes: dict[tuple, torch.Tensor | None] = {}

    @property
    def content_index(self) -> torch.Tensor:
        """Index of each token in its unpadded sequence."""
        return (self._mask.cumsum(dim=1) - 1)[:, self.past:]

    @property
    def absolute(self) -> torch.Tensor:
        """Index in the padded sequence, counting cached tokens."""
        batch, tokens = self.real.shape
        return torch.arange(self.past, self.past + tokens, device=self.real.device).expand(batch, tokens)

    def scope_mask(self, scope: PositionScope, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        """[batch, tokens, 1] of 0/1 in `dtype` on `device`, or None when every token is in scope."""
        key = (scope if not isinstance(scope, slice) else (scope.start, scope.stop), device, dtype)
        if key not in self._scopes:
            in_scope = _scope_mask(self, scope)
            self._scopes[key] = None if bool(in_scope.all()) else in_scope.to(device=device, dtype=dtype)[..., None]
        return self._scopes[key]


@dataclass
class _PositionTracker:
    """Reads each forward call's inputs at the top of the decoder stack and tracks prompt vs decode calls.

    A call whose past length (tokens already in the KV cache, see `past_length`) is 0 is a prompt and sets the
    prompt length; later calls are decode steps after it. A context entered with tokens already cached has no
    prompt of its own: scopes that need one then raise instead of guessing.
    """

    current: _Positions | None = None
    prompt_length: int | None = None
    mask_is_2d: bool = True

    @read_only
    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        where = type(module).__name__
        inputs = call_arguments(module, args, kwargs)
        reference = inputs.get("input_ids")
        if not isinstance(reference, torch.Tensor):
            reference = inputs.get("inputs_embeds")
        if not isinstance(reference, torch.Tensor):
            raise TypeError(f"{where} was called with neither input_ids nor inputs_embeds")
        batch, tokens = reference.shape[0], reference.shape[1]
        past = past_length(inputs, tokens, where)
        mask = inputs.get("attention_mask")
        self.mask_is_2d = not isinstance(mask, torch.Tensor) or mask.dim() == 2
        device = reference.device
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            full = mask.to(device=device, dtype=torch.long)
        else:  # no mask (transformers drops an all-ones one) or a 4-D one: every token is real
            full = torch.ones(batch, past + tokens, dtype=torch.long, device=device)
        if past == 0:
            self.prompt_length = tokens
        elif self.prompt_length is not None and past < self.prompt_length:
            self.prompt_length = None  # the cache was cut back into the prompt: which tokens are prompt is unknown
        self.current = _Positions(full[:, past:].bool(), full, past, self.prompt_length)


_SIGNATURES: dict[Any, inspect.Signature | None] = {}


def call_arguments(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """A forward call's arguments by parameter name (positional ones bound to `module.forward`'s signature),
    with extra keyword arguments (`**kwargs`) merged in."""
    forward = getattr(module.forward, "__func__", module.forward)  # an instance-level wrapper (accelerate) counts
    if forward not in _SIGNATURES:
        try:
            _SIGNATURES[forward] = inspect.signature(module.forward)
        except (TypeError, ValueError):
            _SIGNATURES[forward] = None
    signature = _SIGNATURES[forward]
    if signature is None:
        if args:
            raise TypeError(f"{type(module).__name__}.forward has no readable signature and was called with "
                            "positional arguments; steerlab cannot tell which is the cache")
        return dict(kwargs)
    try:
        bound = signature.bind_partial(*args, **kwargs)
    except TypeError:
        if args:
            raise
        return dict(kwargs)
    found: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            found.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            found.update({f"{name}[{i}]": item for i, item in enumerate(value)})
        else:
            found[name] = value
    return found


def _is_cache(value: Any) -> bool:
    return callable(getattr(value, "get_seq_length", None))


def past_length(inputs: Mapping[str, Any], tokens: int, where: str = "the decoder stack") -> int:
    """Tokens already in the KV cache when a forward call with `tokens` new tokens starts.

    Read from every source the call carries: a 2-D attention mask (its width minus the new tokens), any cache
    object however it is passed (`cache=`, `past_key_values=`, positionally: found by type, not by name) and
    `cache_position`. Sources that disagree raise, and so does a cache-named argument that is not a readable
    cache; a call with none of them has no cache, so its past is 0. This does not depend on the names
    transformers gives these kwargs: 5.24 renamed `past_key_values` to `cache`, dropped `cache_position` and the
    all-ones mask, and "generated" silently stopped steering unpadded generation (journal, 2026-12-01).
    """
    sources: dict[str, int] = {}
    mask = inputs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        sources["attention_mask width"] = mask.shape[1] - tokens
    caches = {id(value): name for name, value in inputs.items() if _is_cache(value)}
    if len(caches) > 1:
        raise ValueError(f"{where} received {len(caches)} cache objects ({sorted(caches.values())}); "
                         "cannot tell which holds the past tokens")
    for name, value in inputs.items():
        if _is_cache(value):
            sources[f"{name}.get_seq_length()"] = int(value.get_seq_length())
        elif (("past" in name or "cache" in name) and name not in ("use_cache", "cache_position")
              and value is not None and not isinstance(value, bool)):
            raise TypeError(f"{where} received {name}={type(value).__name__}, a cache steerlab cannot read (it has "
                            "no get_seq_length()), so steering positions cannot be known; pass a transformers Cache")
    cache_position = inputs.get("cache_position")
    if isinstance(cache_position, torch.Tensor) and cache_position.numel():
        sources["cache_position[0]"] = int(cache_position.reshape(-1)[0])
    values = set(sources.values())
    if len(values) > 1 or any(value < 0 for value in values):
        raise ValueError(f"{where}: cannot determine how many tokens are cached, the sources disagree: {sources}. "
                         "Steering positions would be wrong; please report this with your transformers version")
    return values.pop() if values else 0


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


@contextmanager
def editing_weights(model: nn.Module, what: str) -> Iterator[None]:
    """Declare a weight edit (e.g. `apply_delta`) for the duration of the block, for `active_interventions`."""
    _EDITS.setdefault(model, []).append(what)
    try:
        yield
    finally:
        _EDITS[model].remove(what)


def active_interventions(model: nn.Module) -> list[str]:
    """What may make `model` compute something other than its plain weights would now: declared weight edits, and
    every forward hook or pre-hook (on any submodule, or global) that is not marked `read_only` (a `steer`
    block, or any other library's hooks). Hooks defined in `READ_ONLY_MODULES` (transformers' hidden-state capture,
    which stays installed after a model's first call with output_hidden_states) only read, and are ignored too.
    Activation caches must not read or write while this is non-empty.

    Reads torch's hook dictionaries (`_forward_hooks`, `_forward_pre_hooks` and the global ones): private names,
    guarded by tests/test_extract.py, which fails if they move."""
    found = list(_EDITS.get(model, []))
    hook_dicts = [("global", torch.nn.modules.module._global_forward_hooks),
                  ("global", torch.nn.modules.module._global_forward_pre_hooks)]
    for name, module in model.named_modules():
        hook_dicts += [(name or "model", module._forward_hooks), (name or "model", module._forward_pre_hooks)]
    for where, hooks in hook_dicts:
        writers = [hook for hook in hooks.values() if not getattr(hook, READ_ONLY, False)
                   and getattr(hook, "__module__", None) not in READ_ONLY_MODULES]
        found += [f"forward hook {getattr(hook, '__qualname__', type(hook).__name__)} on {where}" for hook in writers]
    return found


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


def check_layers(model: nn.Module, layers: Sequence[Any], layers_path: str | None = None,
                 blocks: nn.ModuleList | None = None) -> nn.ModuleList:
    """The decoder blocks, after checking every layer index against them (pass `blocks` already resolved by
    `find_layers` to skip resolving them again)."""
    blocks = find_layers(model, layers_path)[1] if blocks is None else blocks
    for layer in layers:
        if not 0 <= layer_index(layer) < len(blocks):
            raise ValueError(f"layer {layer!r} is out of range: the model has layers 0..{len(blocks) - 1}")
    return blocks


@contextmanager
def _tracked(model: nn.Module, path: str) -> Iterator[_PositionTracker]:
    """Position tracking on the module that owns the blocks at `path` (as `find_layers` resolved it)."""
    owner = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
    tracker = _PositionTracker()
    handle = owner.register_forward_pre_hook(tracker.pre_hook, with_kwargs=True)
    try:
        yield tracker
    finally:
        handle.remove()


# ----------------------------------------------------------------------------- record


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
    with _tracked(model, path) as tracker:

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


# ----------------------------------------------------------------------------- steer


def _scope_mask(positions: _Positions, scope: PositionScope) -> torch.Tensor:
    if isinstance(scope, slice):
        index = positions.content_index
        start = 0 if scope.start is None else scope.start
        stop = torch.iinfo(torch.long).max if scope.stop is None else scope.stop
        in_scope = (index >= start) & (index < stop)
    elif scope == "all":
        in_scope = torch.ones_like(positions.real)
    elif scope in ("prompt", "generated"):
        if positions.prompt_length is None:
            raise ValueError(f"positions={scope!r} needs the prompt's forward call inside the steer block, but this "
                             "call's KV cache already held tokens when the block was entered (or was cut back into "
                             "the prompt); use positions='all' or a slice of content positions")
        prompt = positions.absolute < positions.prompt_length
        in_scope = prompt if scope == "prompt" else ~prompt
    else:
        raise ValueError(f"positions={scope!r} must be 'all', 'prompt', 'generated' or a slice")
    return in_scope & positions.real


def _validate_scope(scope: Any) -> None:
    if isinstance(scope, slice):
        if scope.step not in (None, 1):
            raise ValueError(f"positions={scope!r}: slices with a step are not supported")
        for bound in (scope.start, scope.stop):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int) or bound < 0):
                raise ValueError(f"positions={scope!r}: slice bounds must be non-negative ints (content positions)")
        if scope.stop is not None and scope.stop <= (scope.start or 0):
            raise ValueError(f"positions={scope!r} is empty: it would steer no token; the stop must be after the "
                             f"start, e.g. slice({scope.start or 0}, {(scope.start or 0) + 1})")
    elif scope not in ("all", "prompt", "generated"):
        raise ValueError(f"positions={scope!r} must be 'all', 'prompt', 'generated' or a slice")


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


def _per_row(vectors: Any) -> bool:
    return isinstance(vectors, Sequence) and not isinstance(vectors, str | torch.Tensor)


def _row_vectors(model: nn.Module, vectors: Any, weight: float | Mapping[int, float], layers: Sequence[int] | None,
                 blocks: nn.ModuleList) -> tuple[dict[int, torch.Tensor], int | None]:
    """{layer: [rows or 1, hidden] float32 weight * vector}: one row per batch row for per-row vectors (zeros where a
    row does not steer that layer), else one row for all. Also the number of rows per-row vectors expect."""
    per_row = _per_row(vectors)
    entries = list(vectors) if per_row else [vectors]
    if per_row and not entries:
        raise ValueError("vectors=[] has no rows: give one {layer: vector} (or None for an unsteered row) per "
                         "batch row")
    size = hidden_size(model)
    resolved: list[dict[int, torch.Tensor]] = []
    for row, entry in enumerate(entries):
        if entry is None and per_row:
            resolved.append({})
            continue
        layer_vectors: Mapping[Any, torch.Tensor] = getattr(entry, "vectors", entry)
        where = f"vectors[{row}]: " if per_row else ""
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
    return stacked, len(entries) if per_row else None


@contextmanager
def steer(
    model: nn.Module,
    vectors: Mapping[int, torch.Tensor] | Any,
    weight: float | Mapping[int, float] = 1.0,
    *,
    layers: Sequence[int] | None = None,
    positions: PositionScope = "all",
    coefficients: Sequence[float] | torch.Tensor | None = None,
    layers_path: str | None = None,
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
    _validate_scope(positions)
    row_coefficients = coefficient_values(coefficients)

    handles = []
    with _tracked(model, path) as tracker:

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
                return join_block_output(hidden + delta, rest)

            return hook

        try:
            for layer in stacked:
                # prepend: the block's output is steered before any other hook sees it (transformers' hidden-state
                # capture installs its hooks on first use, possibly before this block was entered)
                handles.append(blocks[layer].register_forward_hook(make_hook(layer), prepend=True))
            yield
        finally:
            for handle in handles:
                handle.remove()


@dataclass
class Steering:
    """What to add, without its strength: a vector (a SteeringVector or any {layer: Tensor[hidden]}, or one per
    row of the whole job), a weight per layer, the layers and the position scope. The coefficient comes when
    applying (one per batch row), as in steering-vectors and repeng, so one Steering serves a whole sweep."""

    vector: Any
    weight: float | Mapping[int, float] = 1.0
    layers: Sequence[int] | None = None
    positions: PositionScope = "all"

    @property
    def rows(self) -> int | None:
        """How many batch rows the per-row vectors cover; None for one vector for every row."""
        return len(self.vector) if _per_row(self.vector) else None

    def apply(self, model: nn.Module, coefficients: Sequence[float] | torch.Tensor | None = None,
              rows: slice | None = None) -> Any:
        """The `steer` context for a batch; `rows` picks that batch's entries of per-row vectors."""
        vector = self.vector[rows] if rows is not None and _per_row(self.vector) else self.vector
        return steer(model, vector, self.weight, layers=self.layers, positions=self.positions,
                     coefficients=coefficients)


def steering_context(model: nn.Module, steering: Steering | None, coefficients: Sequence[float] | None,
                     rows: slice | None = None) -> Any:
    """The steer context for one batch (rows `rows` of the job), or a no-op when unsteered (a coefficient without a
    vector is an error)."""
    if steering is None:
        if coefficients is not None:
            raise ValueError("coefficients were given without steering: pass steering=Steering(vector, ...)")
        return contextlib.nullcontext()
    return steering.apply(model, coefficients, rows)


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
