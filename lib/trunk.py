"""Rows of a batch that are the same below a layer run once there: the shared trunk of a steering comparison.

Steering at layer L leaves every block below L untouched, so rows that carry the same tokens (the unsteered row and
the same prompt under K coefficients or K random directions) compute identical activations in blocks 0..L-1. Inside
`shared_trunk`, those blocks see each distinct row once; at block L each row gets its copy back. A grid of K
coefficients at layer 12 of 30 then costs 12 + 18K block-rows per prompt instead of 30K (issue "One evaluation kit",
performance: a comparison of K conditions costs less than K runs).

How: a pre-hook on block 0 keeps the distinct rows of its hidden state and of every per-row tensor it is called with
(a tensor of 2 or more dimensions whose first is the batch: masks, position ids, rotary tables); the pre-hooks of
blocks 1..L-1 do the same to the arguments the decoder stack passes them (the stack's loop computed those for the
whole batch), and block L's pre-hook indexes the hidden state back out to every row. Nothing else is read from the
library's calls: every argument is matched by shape alone, and a shape that does not fit raises
(tests/test_trunk.py checks logits against the plain batch on every architecture the hook tests cover). One plain
forward only: a KV cache written by a shared trunk would hold fewer rows below L than above it, so a call that
brings a cache with tokens in it is refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lib.interventions import hooks_within
from lib.models import find_layers


def distinct_rows(rows: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """(the index of each distinct row's first occurrence, for every row the position of its distinct row in that
    list). Rows are token lists; equal lists are the same row."""
    first: dict[tuple[int, ...], int] = {}
    keep: list[int] = []
    where: list[int] = []
    for i, row in enumerate(rows):
        key = tuple(row)
        if key not in first:
            first[key] = len(keep)
            keep.append(i)
        where.append(first[key])
    return keep, where


def hooks_below(model: nn.Module, below: int, layers_path: str | None = None) -> list[str]:
    """The hooks that would run in blocks 0..`below`-1 (a `record` there, another library's): inside a shared trunk
    they would see the distinct rows only, so `shared_trunk` refuses them and `run_batches` does not share."""
    _, blocks = find_layers(model, layers_path)
    return sorted({hook for block in blocks[:below] for hook in hooks_within(block)})


def _select(value: Any, batch: int, index: torch.Tensor) -> Any:
    """`value` with its batch rows picked by `index` where it is a per-row tensor of `batch` rows (2+ dims), also
    inside tuples and lists (rotary (cos, sin)); anything else as it is."""
    if isinstance(value, torch.Tensor):
        if value.dim() >= 2 and value.shape[0] == batch:
            return value.index_select(0, index.to(value.device))
        return value
    if isinstance(value, tuple | list) and any(isinstance(v, torch.Tensor) for v in value):
        return type(value)(_select(v, batch, index) for v in value)
    return value


def _holds_tokens(value: Any) -> bool:
    get_length = getattr(value, "get_seq_length", None)
    return callable(get_length) and int(get_length()) > 0


@contextmanager
def shared_trunk(model: nn.Module, rows: Sequence[Sequence[int]] | torch.Tensor, below: int,
                 layers_path: str | None = None) -> Iterator[bool]:
    """Run blocks 0..`below`-1 once per distinct row of the next forward calls' batch (`rows`: that batch's token
    rows, as padded, or its [batch, tokens] input ids). Yields whether anything is shared (False, and no hook, when
    every row differs or `below` is 0). Blocks from `below` on see every row, so steering there is unchanged."""
    ids = rows.tolist() if isinstance(rows, torch.Tensor) else [list(row) for row in rows]
    keep, where = distinct_rows(ids)
    _, blocks = find_layers(model, layers_path)
    if not 0 <= below < len(blocks):
        raise ValueError(f"below={below} is out of range: the first block that sees every row is one of "
                         f"0..{len(blocks) - 1}")
    batch = len(ids)
    if below == 0 or len(keep) == batch:
        yield False
        return
    readers = hooks_below(model, below, layers_path)
    if readers:
        raise ValueError(f"shared_trunk would hand {readers[0]} (and {len(readers) - 1} more) the distinct rows only: "
                         f"exit `record` or other hooks on blocks below {below} first, or do not share the trunk")
    keep_index = torch.tensor(keep, dtype=torch.long)
    spread_index = torch.tensor(where, dtype=torch.long)
    distinct = len(keep)

    def contract(block: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if block == 0:  # later blocks see the cache this call is writing
                for name, value in kwargs.items():
                    if _holds_tokens(value):
                        raise ValueError(f"shared_trunk runs one plain forward, but the call came with a KV cache "
                                         f"holding tokens ({name}): generate without shared_trunk")
                hidden = args[0] if args else kwargs.get("hidden_states")
                if not isinstance(hidden, torch.Tensor) or hidden.shape[0] != batch:
                    raise ValueError(f"shared_trunk was set up for {batch} rows but block 0 got "
                                     f"{_shape(hidden)}: pass the rows of the batch the next forward runs")
            return (tuple(_select(a, batch, keep_index) for a in args),
                    {k: _select(v, batch, keep_index) for k, v in kwargs.items()})
        return hook

    def spread(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(hidden, torch.Tensor) or hidden.shape[0] != distinct:
            raise ValueError(f"shared_trunk: block {below} expected the {distinct} distinct rows, got "
                             f"{_shape(hidden)}")
        hidden = hidden.index_select(0, spread_index.to(hidden.device))
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    handles = []
    try:
        for block in range(below):
            handles.append(blocks[block].register_forward_pre_hook(contract(block), with_kwargs=True, prepend=True))
        handles.append(blocks[below].register_forward_pre_hook(spread, with_kwargs=True, prepend=True))
        yield True
    finally:
        for handle in handles:
            handle.remove()


def _shape(value: Any) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
