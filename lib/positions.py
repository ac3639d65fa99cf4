"""Which tokens a forward call processes: real or padding, prompt or generated, position in each row.

Positions are resolved from the attention mask and the KV cache that reach the decoder stack, so left and right
padding and KV-cached generation give the same per-token result as an unpadded batch of one. A pre-hook on the
module that owns the blocks (`tracked`) reads them once per forward call; every block hook of `record` and `steer`
reuses them. The cache is found by type, whatever transformers names the argument (journal, 2026-12-01).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from lib.interventions import read_only

PositionScope = Literal["all", "prompt", "generated"] | slice
POSITION_SCOPES = ("all", "prompt", "generated")



class Positions:
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
            in_scope = scope_in(self, scope)
            self._scopes[key] = None if bool(in_scope.all()) else in_scope.to(device=device, dtype=dtype)[..., None]
        return self._scopes[key]


@dataclass
class PositionTracker:
    """Reads each forward call's inputs at the top of the decoder stack and tracks prompt vs decode calls.

    A call whose past length (tokens already in the KV cache, see `past_length`) is 0 is a prompt and sets the
    prompt length; later calls are decode steps after it. A context entered with tokens already cached has no
    prompt of its own: scopes that need one then raise instead of guessing.
    """

    current: Positions | None = None
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
        self.current = Positions(full[:, past:].bool(), full, past, self.prompt_length)


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


@contextmanager
def tracked(model: nn.Module, path: str) -> Iterator[PositionTracker]:
    """Position tracking on the module that owns the blocks at `path` (as `find_layers` resolved it)."""
    owner = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
    tracker = PositionTracker()
    handle = owner.register_forward_pre_hook(tracker.pre_hook, with_kwargs=True)
    try:
        yield tracker
    finally:
        handle.remove()


def scope_in(positions: Positions, scope: PositionScope) -> torch.Tensor:
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


def check_scope(scope: Any) -> None:
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
