"""Directional ablation and weight orthogonalisation (Arditi et al. 2024, "Refusal in language models is mediated
by a single direction").

`ablate` removes a direction (or a subspace) from everything the chosen writers put into the residual stream: the
embeddings (the input of the first block, position embeddings and any scaling included) and each chosen block's
write, its output minus its input (attention and MLP together, whatever norms the architecture puts around them).
With every block and the embeddings ablated, the residual stream holds nothing along the direction at any layer or
position. `value=` then sets the component along it to a new value at the embeddings, which the ablated blocks
keep (ablation, then addition).

`orthogonalize` gives the same model as weights (a `WeightDelta`: no hooks, so it composes with `apply_delta`,
`export_checkpoint` and the llama.cpp export): each residual writer's output space loses the direction,
W <- W - r r^T W for the attention output and MLP down projections (and their biases), E <- E - E r r^T (+ value r)
for the embeddings. That equals `ablate` only where a block's write is the plain sum of those projections; a norm
after them (Gemma 2/3's post-attention and post-MLP norms) makes no weight edit equal, and `orthogonalize` checks
this on a probe and refuses. A model whose output head shares the embedding matrix (SmolLM2) would have its
unembedding projected too: `untie_embeddings` first, or `embeddings=False`.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from torch import nn

from lib.hooks import join_block_output, real_number, split_block_output
from lib.interventions import active_interventions
from lib.models import check_layers, find_layers, hidden_size
from lib.positions import PositionScope, check_scope, tracked
from lib.weights import RESIDUAL_WRITES, WeightDelta, apply_delta, as_matrix, conv1d_names, from_matrix, module_role

Direction = torch.Tensor | Mapping[int, torch.Tensor]  # [hidden], [k, hidden], or a one-layer SteeringVector
POSITION_EMBEDDINGS = ("wpe", "embed_positions")  # added to the token embeddings before the first block


def unit_basis(direction: Direction, size: int, what: str = "direction") -> torch.Tensor:
    """[k, hidden] float32 orthonormal rows spanning `direction`: a vector, k vectors as rows, or a SteeringVector (or
    {layer: vector}) of one layer, whose vector it takes (a direction found at one layer is ablated everywhere, as
    in the paper). Refuses a wrong size, NaN, a zero vector and dependent rows."""
    if isinstance(direction, Mapping):
        if len(direction) != 1:
            raise ValueError(f"{what} has vectors at layers {sorted(direction)}; give one direction (a Tensor, or a "
                             "vector of one layer): it is removed at every chosen layer")
        direction = next(iter(direction.values()))
    if not isinstance(direction, torch.Tensor):
        raise TypeError(f"{what} is a {type(direction).__name__}; give a Tensor [hidden] or [k, hidden]")
    rows = direction.detach().float().reshape(-1, direction.shape[-1]) if direction.dim() in (1, 2) else None
    if rows is None or rows.shape[-1] != size or rows.shape[0] == 0:
        raise ValueError(f"{what} has shape {tuple(direction.shape)}; give [hidden] or [k, hidden] with hidden = "
                         f"{size}, the model's hidden size")
    if not torch.isfinite(rows).all():
        raise ValueError(f"{what} contains NaN or inf")
    q, r = torch.linalg.qr(rows.T.double())
    scale = rows.double().norm(dim=1).max()
    if scale == 0 or r.diagonal().abs().min() <= 1e-6 * scale:
        raise ValueError(f"{what} is zero or its {rows.shape[0]} rows are linearly dependent: give independent "
                         "directions")
    return q.T.float().contiguous()


def _per_row(direction: Direction | Sequence[Direction | None]) -> bool:
    return isinstance(direction, Sequence) and not isinstance(direction, str | bytes | torch.Tensor)


def _stacked(model: nn.Module, direction: Any) -> tuple[torch.Tensor, int | None]:
    """[rows or 1, k, hidden] orthonormal bases (zeros for a row left alone); the number of rows, or None for one
    direction for every row."""
    size = hidden_size(model)
    if not _per_row(direction):
        return unit_basis(direction, size)[None], None
    if not direction:
        raise ValueError("direction=[] has no rows: give one direction (or None) per batch row")
    bases = [None if d is None else unit_basis(d, size, f"direction[{i}]") for i, d in enumerate(direction)]
    ks = {b.shape[0] for b in bases if b is not None}
    if not ks:
        raise ValueError("every row's direction is None: nothing would be ablated")
    if len(ks) > 1:
        raise ValueError(f"per-row directions span {sorted(ks)} dimensions; give every row the same number")
    k = ks.pop()
    return torch.stack([b if b is not None else torch.zeros(k, size) for b in bases]), len(bases)


def _value_rows(value: float | Sequence[float] | None, rows: int | None, k: int) -> torch.Tensor | None:
    if value is None:
        return None
    if k != 1:
        raise ValueError(f"value= sets the component along one direction; the direction spans {k}")
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        values = [real_number(v, f"value[{i}]") for i, v in enumerate(value)]
        if rows is not None and len(values) != rows:
            raise ValueError(f"value has {len(values)} entries for {rows} rows; give one per row")
        return torch.tensor(values, dtype=torch.float32)
    return torch.tensor([real_number(value, "value")], dtype=torch.float32)


_CHECKED: weakref.WeakKeyDictionary[nn.Module, set[tuple[int, ...]]] = weakref.WeakKeyDictionary()
POST_NORMS = ("post_attention_layernorm", "post_feedforward_layernorm")  # Gemma 2/3, OLMo 2 (Llama's
# post_attention_layernorm is its pre-MLP norm: only a block with both has norms after attention and MLP)


def residual_writers(block: nn.Module, prefix: str = "") -> dict[str, nn.Module]:
    """{name: module} of what a decoder block adds to the residual stream: the attention output and MLP down
    projections (`lib.weights.RESIDUAL_WRITES`: o_proj/down_proj, GPT-2's c_proj, GPT-NeoX's dense and
    dense_4h_to_h), or, in a block with norms after both (Gemma 2/3), those norms. `ablate` checks at run time that
    nothing else in the block writes along the direction."""
    modules = dict(block.named_modules())
    if POST_NORMS[1] in modules:  # Gemma 2/3, OLMo 2: the norms after attention and MLP write the stream
        missing = [name for name in POST_NORMS if name not in modules]
        if missing:
            raise ValueError(f"block {prefix or ''} has {POST_NORMS[1]} but not {missing}: which module writes the "
                             "attention's output to the residual stream is unknown")
        return {f"{prefix}{name}": modules[name] for name in POST_NORMS}
    return projection_writers(block, prefix)


def projection_writers(block: nn.Module, prefix: str = "") -> dict[str, nn.Module]:
    """{name: module} of a block's attention output and MLP down projections (`lib.weights.RESIDUAL_WRITES` roles),
    the matrices `orthogonalize` edits."""
    modules = dict(block.named_modules())
    found = {}
    for name, param in block.named_parameters():
        if not name.endswith(".weight") or param.ndim != 2:
            continue
        try:
            role = module_role(f"{prefix}{name}")
        except ValueError:
            continue  # an unknown module: if it writes along the direction, the probe check says so
        if role in RESIDUAL_WRITES:
            module_name = name.removesuffix(".weight")
            found[f"{prefix}{module_name}"] = modules[module_name]
    return found


@contextmanager
def ablate(model: nn.Module, direction: Direction | Sequence[Direction | None], *,
           layers: Sequence[int] | None = None, embeddings: bool | None = None, positions: PositionScope = "all",
           value: float | Sequence[float] | None = None, layers_path: str | None = None) -> Iterator[None]:
    """Remove `direction` from what each chosen writer adds to the residual stream, inside the block.

    direction: a Tensor [hidden] (or [k, hidden]: the subspace they span), a SteeringVector of one layer, or one of
        those per batch row (a list, None for a row left alone), as `steer` takes per-row vectors.
    layers: the blocks whose writers (attention and MLP outputs, `residual_writers`) lose it (default: all);
        embeddings: whether the input of the first block does too (default: when `layers` is all of them). Every
        block plus the embeddings leaves nothing along it at any point of the stream.
    positions: the tokens it applies to ("all", "prompt", "generated", or a slice), as in `steer`; "all" includes
        padding, which the attention mask hides from every real token.
    value: after ablating the embeddings, their component along the direction is set to this (one number, or one
        per row); the ablated blocks keep it, so the stream carries exactly `value` along it.

    Exact with padding and the KV cache (positions come from `lib.positions`); computed in float32 and cast once.
    On entry (when nothing else acts on the model), a probe checks that each chosen block's whole write (output
    minus input) holds nothing along the direction once its writers are ablated, so an architecture with a writer
    this does not know raises instead of leaking."""
    path, blocks = find_layers(model, layers_path)
    chosen = list(range(len(blocks))) if layers is None else [int(layer) for layer in layers]
    if layers is not None and not chosen:
        raise ValueError("layers=[] ablates no block: omit layers for all of them")
    check_layers(model, chosen, blocks=blocks)
    embeddings = layers is None if embeddings is None else bool(embeddings)
    check_scope(positions)
    basis, n_rows = _stacked(model, direction)
    values = _value_rows(value, n_rows, basis.shape[1])
    if values is not None and not embeddings:
        raise ValueError("value= is set at the embeddings; pass embeddings=True (or leave layers unset)")
    writers = {layer: residual_writers(blocks[layer], f"{path}.{layer}.") for layer in chosen}
    missing = [layer for layer, found in writers.items() if not found]
    if missing:
        raise ValueError(f"no residual writer found in blocks {missing}: ablate knows o_proj/down_proj, c_proj, "
                         "dense/dense_4h_to_h and Gemma's post norms")
    checked = _CHECKED.setdefault(model, set())
    if tuple(chosen) not in checked and not active_interventions(model):  # once per model and blocks
        first = next(row for row in basis if row.abs().sum() > 0)
        check_block_writes(model, [[module for module in writers[layer].values()] for layer in chosen],
                           [blocks[layer] for layer in chosen], chosen, first)
        checked.add(tuple(chosen))
    cast: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def parts(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = hidden.shape[0]
        if n_rows is not None and n_rows != batch:
            raise ValueError(f"direction has {n_rows} rows but the batch has {batch}; give one (or None) per row")
        key = (hidden.device, batch)
        if key not in cast:
            rows = basis.to(hidden.device).expand(batch, -1, -1)
            added = None
            if values is not None:
                row_values = values.to(hidden.device).expand(batch) if values.numel() == 1 else values.to(
                    hidden.device)
                added = (row_values[:, None] * rows[:, 0])[:, None]  # [batch, 1, hidden]
            cast[key] = (rows, added)
        return cast[key]

    shared: dict[torch.device, torch.Tensor] = {}  # one basis for every row: two plain matmuls per call
    fast = n_rows is None and positions == "all"

    def along(hidden: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        """The projection of `part` [batch, tokens, hidden] on each row's basis, float32."""
        if n_rows is None:
            if hidden.device not in shared:
                shared[hidden.device] = basis[0].to(hidden.device)
            unit = shared[hidden.device]
            return (part.float() @ unit.T) @ unit
        rows, _ = parts(hidden)
        return torch.einsum("btk,bkh->bth", torch.einsum("bth,bkh->btk", part.float(), rows), rows)

    handles = []
    with tracked(model, path) as tracker:

        def scope(hidden: torch.Tensor) -> torch.Tensor | None:
            if positions == "all":  # padding too: masked, so no real token reads it (and no mask work per call)
                return None
            if tracker.current is None:
                raise RuntimeError("ablate: the decoder stack ran without its position tracker")
            if not tracker.mask_is_2d and positions != "all":
                raise ValueError(f"positions={positions!r} needs a 2-D attention_mask to tell prompt from padding")
            return tracker.current.scope_mask(positions, hidden.device, torch.float32)

        def writer_hook(module: nn.Module, args: tuple, output: Any) -> Any:
            if fast and isinstance(output, torch.Tensor) and output.dtype == torch.float32:
                return output - along(output, output)  # one basis, every position, float32: nothing to cast
            hidden, rest = split_block_output(output, -1)
            change = -along(hidden, hidden)
            in_scope = scope(hidden)
            change = change if in_scope is None else change * in_scope
            return join_block_output((hidden.float() + change).to(hidden.dtype), rest)

        def embedding_hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
            hidden = args[0] if args else kwargs.get("hidden_states")
            if not isinstance(hidden, torch.Tensor):
                raise ValueError("ablate: the first block was called without a hidden-state tensor")
            change = -along(hidden, hidden)
            _, added = parts(hidden)
            if added is not None:
                change = change + added
            in_scope = scope(hidden)
            change = change if in_scope is None else change * in_scope
            new = (hidden.float() + change).to(hidden.dtype)
            return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

        try:
            for layer in chosen:
                for module in writers[layer].values():
                    handles.append(module.register_forward_hook(writer_hook, prepend=True))
            if embeddings:
                handles.append(blocks[0].register_forward_pre_hook(embedding_hook, with_kwargs=True, prepend=True))
            yield
        finally:
            for handle in handles:
                handle.remove()


def check_block_writes(model: nn.Module, writers: list[list[nn.Module]], blocks: list[nn.Module], layers: list[int],
                       basis: torch.Tensor) -> None:
    """On a probe of 8 tokens, with `basis` [k, hidden] projected out of each block's `writers` outputs, each block's
    write (output minus input) must hold nothing along it; else another module writes the stream there, and
    neither `ablate` nor `orthogonalize` would be what they claim."""

    def project(module: nn.Module, args: tuple, output: Any) -> Any:
        hidden, rest = split_block_output(output, -1)
        unit = basis.to(hidden.device)
        return join_block_output(hidden - ((hidden.float() @ unit.T) @ unit).to(hidden.dtype), rest)

    @contextmanager
    def projected() -> Iterator[None]:
        handles = [module.register_forward_hook(project) for group in writers for module in group]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    _refuse_leaks(model, _leaks(model, dict(zip(layers, blocks, strict=True)), basis, projected()),
                  "ablating its writers")


def _leaks(model: nn.Module, blocks: Mapping[int, nn.Module], basis: torch.Tensor,
           edit: AbstractContextManager[Any]) -> dict[int, float]:
    """{layer: |write along basis| / |write|} for each block's write (output minus input) on a probe of 8 tokens,
    run inside `edit` (the writers' projections hooked, or the orthogonalised weights applied)."""
    leaks: dict[int, float] = {}

    def keeper(layer: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            hidden, _ = split_block_output(output, layer)
            before = args[0] if args else kwargs["hidden_states"]
            write = (hidden - before).float()
            leaks[layer] = float((write @ basis.to(write.device).T).norm() / write.norm().clamp_min(1e-12))
        return hook

    handles = [block.register_forward_hook(keeper(layer), with_kwargs=True) for layer, block in blocks.items()]
    try:
        device = next(model.parameters()).device
        probe = torch.arange(1, 9, device=device)[None] % model.get_input_embeddings().weight.shape[0]
        with torch.no_grad(), edit:
            model(input_ids=probe)
    finally:
        for handle in handles:
            handle.remove()
    return leaks


def _refuse_leaks(model: nn.Module, leaks: dict[int, float], after: str) -> None:
    tolerance = 1e-3 if next(model.parameters()).dtype == torch.float32 else 3e-2  # the write's own rounding
    worst = max(leaks.items(), key=lambda item: item[1]) if leaks else None
    if worst is not None and worst[1] > tolerance:
        raise ValueError(f"after {after}, block {worst[0]}'s write keeps {worst[1]:.1%} of its norm along the "
                         "direction: a module steerlab does not know writes the residual stream there, or a norm "
                         "transforms the projections' outputs (Gemma 2/3), where no weight edit equals the ablation; "
                         "use lib.ablate, or report the architecture")


def tied_embeddings(model: nn.Module) -> bool:
    """Whether the output head is the input embedding matrix (one tensor)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head is not None and head.weight is model.get_input_embeddings().weight


def untie_embeddings(model: nn.Module) -> nn.Module:
    """Give the output head its own copy of the embedding matrix (and `tie_word_embeddings=False` in the config, so
    a saved checkpoint keeps them apart), for `orthogonalize` with embeddings: a permanent change to `model`, equal
    in every output until one of the two matrices is edited."""
    if tied_embeddings(model):
        head = model.get_output_embeddings()
        head.weight = nn.Parameter(head.weight.detach().clone())
        model.config.tie_word_embeddings = False
    return model


def _project_rows(matrix: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """matrix @ basis.T @ basis for rows that live in the hidden space."""
    return (matrix @ basis.T) @ basis


@torch.no_grad()
def orthogonalize(model: nn.Module, direction: Direction, *, layers: Sequence[int] | None = None,
                  embeddings: bool | None = None, value: float | None = None, layers_path: str | None = None,
                  check: bool = True) -> WeightDelta:
    """The weight edit that equals `ablate(model, direction, layers=, embeddings=, value=)`: a `WeightDelta` over
    each chosen block's residual writers (attention output and MLP down projections, weights and biases) and the
    embeddings (token, and position where added), computed in float32. `check` runs a probe under the edit and
    refuses when a block's write still carries the direction (a norm after the projections)."""
    path, blocks = find_layers(model, layers_path)
    chosen = list(range(len(blocks))) if layers is None else [int(layer) for layer in layers]
    check_layers(model, chosen, blocks=blocks)
    embeddings = layers is None if embeddings is None else bool(embeddings)
    basis = unit_basis(direction, hidden_size(model))
    if value is not None:
        _value_rows(value, None, basis.shape[0])
        if not embeddings:
            raise ValueError("value= is set at the embeddings; pass embeddings=True (or leave layers unset)")
    if embeddings and tied_embeddings(model):
        raise ValueError("the output head shares the embedding matrix, so orthogonalizing the embeddings would project "
                         "the unembedding too: call lib.ablation.untie_embeddings(model) first, or pass "
                         "embeddings=False")
    transposed = conv1d_names(model)
    deltas: dict[str, torch.Tensor] = {}
    for index in chosen:
        prefix = f"{path}.{index}."
        if residual_writers(blocks[index], prefix) != projection_writers(blocks[index], prefix):
            raise ValueError(f"block {index} puts a norm after its attention and MLP outputs (Gemma 2/3, OLMo 2): "
                             "the norm rescales what the projections write, so no weight edit equals the ablation; "
                             "use lib.ablate")
        for module_name, module in projection_writers(blocks[index], prefix).items():
            for name, param in module.named_parameters(recurse=False):
                full = f"{module_name}.{name}"
                if param.ndim == 1:  # a bias in the residual space
                    deltas[full] = -_project_rows(param.detach().float().cpu()[None], basis)[0]
                else:
                    matrix = as_matrix(full, param.detach().float().cpu(), transposed)  # [hidden, in]
                    deltas[full] = from_matrix(full, -(basis.T @ (basis @ matrix)), transposed)
    if embeddings:
        names = {id(param): name for name, param in model.named_parameters()}
        token = model.get_input_embeddings().weight
        table = token.detach().float().cpu()
        change = -_project_rows(table, basis)
        if value is not None:
            change += float(value) * basis[0]
        deltas[names[id(token)]] = change
        for module_name, module in model.named_modules():
            if module_name.rsplit(".", 1)[-1] in POSITION_EMBEDDINGS and isinstance(module, nn.Embedding):
                deltas[names[id(module.weight)]] = -_project_rows(module.weight.detach().float().cpu(), basis)
    if not deltas:
        raise ValueError(f"no residual writer found in blocks {chosen} (roles {sorted(RESIDUAL_WRITES)}) and no "
                         "embeddings chosen: nothing to orthogonalize")
    delta = WeightDelta(deltas, {"method": "orthogonalize", "layers": chosen, "embeddings": embeddings,
                                 "value": value, "rank": int(basis.shape[0])})
    if check:
        _check_writes(model, delta, basis, chosen, blocks)
    return delta


def _check_writes(model: nn.Module, delta: WeightDelta, basis: torch.Tensor, chosen: list[int],
                  blocks: nn.ModuleList) -> None:
    """Under the edit, each chosen block's write (output minus input) on a probe must hold nothing along the basis;
    a norm after the projections breaks that, and then no weight edit equals `ablate`."""
    _refuse_leaks(model, _leaks(model, {layer: blocks[layer] for layer in chosen}, basis, apply_delta(model, delta)),
                  "orthogonalizing")
