"""Paths and file writes: the repository root, repo-relative paths, and atomic writes.

Every file steerlab writes goes through `atomic_write`: the bytes land in a temporary file beside the target
and are renamed over it, so a reader never sees half a file and a killed run never leaves one (finished
evaluations survive an interruption, see the runner's resume).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def repo_path(path: str | Path) -> Path:
    """A path as given when absolute, else relative to the repository root (where notebooks run)."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() else REPO_ROOT / candidate


def atomic_write(path: str | Path, data: bytes | str | Callable[[str], Any]) -> Path:
    """Write `data` (bytes, text, or a writer called with a temporary path, e.g. safetensors' `save_file`) to
    `path` atomically; creates the parent folder. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        elif isinstance(data, str):
            tmp.write_text(data)
        else:
            data(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """Atomic JSON (indented; values JSON cannot hold are written with `str`)."""
    return atomic_write(path, json.dumps(data, indent=2, default=str))
