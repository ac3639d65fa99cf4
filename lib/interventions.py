"""What is acting on a model now: the registry `active_interventions` reads.

Caches must know when a model computes something other than its plain weights would (journal, 2026-12-01: a cache
keyed on texts alone served unsteered activations inside `steer`). Weight edits declare themselves
(`editing_weights`); forward hooks count unless they only read (`read_only`, or a module in `READ_ONLY_MODULES`).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

READ_ONLY = "steerlab_reads_only"  # attribute set on hook functions that never change what the model computes


READ_ONLY_MODULES = ("transformers.utils.output_capturing",)


_EDITS: weakref.WeakKeyDictionary[nn.Module, list[str]] = weakref.WeakKeyDictionary()


def read_only(hook: Any) -> Any:
    """Mark a hook function as one that only reads (`record`, position tracking): it does not make the model's
    activations different from an unhooked model's, so `active_interventions` ignores it."""
    setattr(hook, READ_ONLY, True)
    return hook


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
    for where, hook in _hooks(model):
        if not getattr(hook, READ_ONLY, False):
            found.append(f"forward hook {getattr(hook, '__qualname__', type(hook).__name__)} on {where}")
    return found


def hooks_within(module: nn.Module) -> list[str]:
    """Every forward hook or pre-hook that would run inside `module` (its submodules' and the global ones), readers
    included, except transformers' hidden-state capture: what `lib.trunk.shared_trunk` must not hand fewer rows."""
    return [f"forward hook {getattr(hook, '__qualname__', type(hook).__name__)} on {where}"
            for where, hook in _hooks(module)]


def _hooks(model: nn.Module) -> list[tuple[str, Any]]:
    """(where, hook) for the global hooks and every submodule's, outside `READ_ONLY_MODULES`."""
    hook_dicts = [("global", torch.nn.modules.module._global_forward_hooks),
                  ("global", torch.nn.modules.module._global_forward_pre_hooks)]
    for name, module in model.named_modules():
        hook_dicts += [(name or "model", module._forward_hooks), (name or "model", module._forward_pre_hooks)]
    return [(where, hook) for where, hooks in hook_dicts for hook in hooks.values()
            if getattr(hook, "__module__", None) not in READ_ONLY_MODULES]
