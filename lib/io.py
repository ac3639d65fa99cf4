"""Paths and file writes: the repository root, repo-relative paths, and atomic writes.

Every file steerlab writes goes through `atomic_write`: the bytes land in a temporary file beside the target
and are renamed over it, so a reader never sees half a file and a killed run never leaves one (finished
evaluations survive an interruption, see the runner's resume).

A folder that one process writes for a long time (a run folder) is held with `folder_lock`, so a second
`./just run` of the same parameters, started by mistake in another terminal or by a background queue, stops with
the holder's pid instead of interleaving writes with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
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


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 4 MiB chunks (weight files can be larger than memory wants to hold)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: str | Path, data: Any) -> Path:
    """Atomic JSON (indented; values JSON cannot hold are written with `str`)."""
    return atomic_write(path, json.dumps(data, indent=2, default=str))


class FolderLocked(RuntimeError):
    """Another live process holds the folder's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: str | Path, purpose: str = "") -> Iterator[Path]:
    """Hold `folder/.lock` (created exclusively, holding pid, host, start time and `purpose`) while the body runs;
    removed on exit, also after an error. A lock left by a process that no longer runs on this host is taken over
    with a message; a live holder, or any holder on another host, raises `FolderLocked` naming it and the fix."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    record = {"pid": os.getpid(), "host": platform.node(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "purpose": purpose}
    for _ in range(3):  # a stale lock is removed and creation retried; a race with another taker is lost cleanly
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
            except (OSError, ValueError):
                holder = {}
            pid, host = holder.get("pid"), holder.get("host")
            if isinstance(pid, int) and host == platform.node() and not _pid_alive(pid):
                print(f"[lock] taking over {path}: its holder (pid {pid}, started {holder.get('started')}) no "
                      "longer runs")
                path.unlink(missing_ok=True)
                continue
            raise FolderLocked(
                f"{folder} is in use by pid {pid} on {host or 'an unknown host'} since {holder.get('started', '?')}"
                f" ({holder.get('purpose') or 'no purpose recorded'}): wait for it to finish or stop it; if no such "
                f"process runs (e.g. it ran on another machine and crashed), delete {path}") from None
        with os.fdopen(handle, "w") as out:
            json.dump(record, out)
        break
    else:
        raise FolderLocked(f"could not take {path}: another process keeps re-creating it")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
