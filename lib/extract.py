"""Batched activation extraction with an on-disk cache.

The cache key is (model fingerprint, hash of the token ids the model sees, reduction, reduction starts, n).
Hashing the token ids rather than the texts covers the tokenizer, the chat template, special tokens and
separators at once; the fingerprint covers every byte of the weights (`lib.models.model_fingerprint`), and the
forward state what else decides the forward: training flags, PEFT's adapter switches (enabled, active, merged,
scaling), autocast (`lib.models.forward_state`). A model in training mode, with offloaded weights or with adapter
state that cannot be read is not cached (said once). While
any intervention is active on the model (a `steer` block, another library's forward hooks, `apply_delta`),
the cache is neither read nor written: those activations are computed fresh (journal, 2026-12-01: a cache
keyed on texts alone served unsteered activations inside `steer`, and steered ones after it).

Every layer is captured on a miss (a 30-layer x 576 float vector per example is small), so asking again
for another layer or using another scale never repeats a forward pass. Each cache file has a sidecar with
its sha256; a truncated or altered file is detected, reported and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import nn

from lib.generation import check_rows, encode, render_chat, run_batches
from lib.hooks import REDUCTIONS, Activations, record
from lib.interventions import active_interventions
from lib.io import atomic_write, file_sha256, write_json
from lib.models import cache_dir, check_layers, find_layers, forward_state, model_fingerprint


def cache_key(model: nn.Module, token_ids: Sequence[Sequence[int]], reduction: str,
              start_tokens: Sequence[int] | None = None, state: str | None = None) -> str:
    """Name of the cache entry for these token rows: each row is hashed with its length, so no two different
    batches of rows share a key (texts joined by a separator could). `state`: `forward_state(model)`'s digest
    (computed here when not given)."""
    state = forward_state(model)[0] if state is None else state
    digest = hashlib.sha256()
    for row in token_ids:
        digest.update(np.asarray([len(row), *row], dtype=np.int64).tobytes())
    digest.update(b"starts" + (b"-" if start_tokens is None else np.asarray(start_tokens, dtype=np.int64).tobytes()))
    return f"{model_fingerprint(model)}-{state[:16]}-{digest.hexdigest()[:24]}-{reduction}-n{len(token_ids)}"


_TOLD: set[str] = set()  # reasons already reported in this process


def cacheable_state(model: nn.Module) -> str | None:
    """`forward_state`'s digest, or None (with a warning, once per reason and process) when the activations must
    not be cached: training mode, offloaded weights, unreadable adapter state."""
    state, reasons = forward_state(model)
    for reason in reasons:
        if reason not in _TOLD:
            _TOLD.add(reason)
            warnings.warn(f"Activation cache off for this model: {reason}", stacklevel=3)
    return None if reasons else state


def _load_cached(path: Path) -> dict[int, torch.Tensor] | None:
    sidecar = path.with_suffix(".json")
    if not path.exists():
        return None
    try:
        expected = json.loads(sidecar.read_text())["sha256"]
        if file_sha256(path) != expected:
            raise ValueError("checksum mismatch")
        return {int(k): v for k, v in load_file(path).items()}
    except Exception as error:  # corrupt, truncated or sidecar missing: never use it
        warnings.warn(f"Activation cache {path.name} is unreadable ({error}); rebuilding it", stacklevel=3)
        return None


def _store(path: Path, acts: dict[int, torch.Tensor], meta: dict[str, Any]) -> None:
    data = save({str(k): v.contiguous() for k, v in acts.items()})
    atomic_write(path, data)
    write_json(path.with_suffix(".json"), {**meta, "sha256": hashlib.sha256(data).hexdigest()})


def prompt_and_completion(tokenizer: Any, prompts: Sequence[Any], completions: Sequence[str]
                          ) -> tuple[list[str], list[int]]:
    """Rendered prompt + completion texts and the token index where each completion starts, for reductions
    over a completion only (`extract(..., start_tokens=...)`)."""
    rendered = [render_chat(tokenizer, p) for p in prompts]
    texts = [r + c for r, c in zip(rendered, completions, strict=True)]
    return texts, [len(ids) for ids in encode(tokenizer, rendered)]


class _StopForward(Exception):
    """Raised by `_stop_after`'s hook: the rest of the forward pass is not needed."""


@contextmanager
def _stop_after(block: nn.Module) -> Iterator[None]:
    """End every forward pass after `block` (hooks registered earlier on that block still run)."""

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        raise _StopForward

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def forward_batches(model: nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int, chat: bool = True,
                    desc: str = "forward", progress: bool = True, acts: Activations | None = None,
                    start_tokens: Sequence[int] | None = None,
                    token_ids: Sequence[Sequence[int]] | None = None) -> None:
    """Run texts (or already encoded `token_ids`) through the model in left-padded batches (the work `record`
    observes). With `start_tokens`, each row's tokens before that index are left out of `acts`' reduction."""
    encoded = list(token_ids) if token_ids is not None else encode(tokenizer, texts, chat)

    def forward(part: slice, batch: dict[str, torch.Tensor]) -> None:
        if start_tokens is not None and acts is not None:
            content = batch["attention_mask"].cumsum(dim=1) - 1
            acts.token_mask = content >= torch.tensor(list(start_tokens[part]), device=content.device).unsqueeze(1)
        with suppress(_StopForward):  # `_stop_after` ended the pass after the deepest layer read
            model(**batch)

    run_batches(model, encoded, batch_size, tokenizer.pad_token_id, forward, what="texts", desc=desc,
                progress=progress)


def extract(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    reduction: str = "last",
    batch_size: int = 16,
    chat: bool = True,
    start_tokens: Sequence[int] | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> dict[int, torch.Tensor]:
    """Block outputs per layer, [len(texts), hidden], for already rendered texts (see `render_chat`).

    start_tokens: per text, the token index where the reduction starts (e.g. the prompt's length,
    to average over a completion only).
    """
    if start_tokens is not None and len(start_tokens) != len(texts):
        raise ValueError(f"start_tokens has {len(start_tokens)} values for {len(texts)} texts")
    if reduction not in ("last", "mean"):
        raise ValueError(f"reduction={reduction!r}: extraction stores one vector per text; use 'last' or 'mean' "
                         f"(record() gives {REDUCTIONS})")
    if not texts:
        raise ValueError("texts is empty: nothing to extract")
    if layers is not None and not list(layers):
        raise ValueError("layers=[] extracts nothing: omit layers for every block, or name the ones to read")
    blocks = find_layers(model)[1]
    n_layers = len(blocks)
    wanted = list(range(n_layers)) if layers is None else list(layers)
    check_layers(model, wanted, blocks=blocks)
    token_ids = encode(tokenizer, texts, chat)
    check_rows(model, token_ids, what="texts")  # before the cache is keyed: an empty text never gets an entry
    if start_tokens is not None:
        past = [i for i, (start, row) in enumerate(zip(start_tokens, token_ids, strict=True)) if start >= len(row)]
        if past:
            raise ValueError(f"start_tokens[{past[0]}]={start_tokens[past[0]]} leaves no token of texts[{past[0]}] "
                             f"({len(token_ids[past[0]])} tokens) to reduce over: an empty completion?")
    # Inside `steer`, `apply_delta` or another library's hooks the activations are not the plain model's:
    # computed fresh, never read from or written to the cache.
    use_cache = use_cache and not active_interventions(model)
    state = cacheable_state(model) if use_cache else None
    path = cache_dir() / "activations" / f"{cache_key(model, token_ids, reduction, start_tokens, state)}.safetensors" \
        if state is not None else None
    acts = _load_cached(path) if path is not None else None
    if acts is None:
        # A cached extraction keeps every layer; an uncached one reads only `wanted` and computes nothing after
        # the deepest of them (no later blocks, final norm or unembedding).
        read = range(n_layers) if path is not None or not wanted else sorted(set(wanted))
        with record(model, read, reduction) as recorded, _stop_after(blocks[max(read)]):
            forward_batches(model, tokenizer, texts, batch_size, chat, "extract", progress, recorded, start_tokens,
                            token_ids)
        acts = {layer: recorded[layer] for layer in recorded}
        if path is not None:
            meta = {"model": getattr(model, "steerlab_name", type(model).__name__), "n": len(texts),
                    "reduction": reduction}
            _store(path, acts, meta)
    return {layer: acts[layer] for layer in wanted}
