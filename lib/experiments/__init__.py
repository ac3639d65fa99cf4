"""One module per notebook: `lib/experiments/<notebook>.py` pairs with `nbs/<notebook>.py` and owns that
experiment's config dataclass (the notebook's `parameters` cell mirrors it), its steps and its figures.

Adding an experiment is one notebook, one module here and its tests (tests/experiments/): nothing central to
edit. The runner finds a notebook's config by its stem (`config_class`), importing only that module.
"""

from __future__ import annotations

import importlib
import inspect

from lib.config import NotebookConfig


def config_class(stem: str) -> type[NotebookConfig]:
    """The config dataclass of notebook `stem`: the NotebookConfig subclass in `lib.experiments.<stem>` whose
    `notebook` is `stem`. Raises naming the module when it is missing or defines none (or several)."""
    try:
        module = importlib.import_module(f"{__name__}.{stem}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{stem}":
            raise
        raise ValueError(f"notebook {stem!r} has no experiment module lib/experiments/{stem}.py: every notebook "
                         "pairs with one module that defines its config (docs/architecture.md)") from None
    found = [obj for _, obj in inspect.getmembers(module, inspect.isclass)
             if issubclass(obj, NotebookConfig) and obj.notebook == stem]
    if len(found) != 1:
        raise ValueError(f"lib/experiments/{stem}.py must define exactly one NotebookConfig subclass with "
                         f"notebook = {stem!r} (found {len(found)})")
    return found[0]
