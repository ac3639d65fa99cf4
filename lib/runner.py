"""Execute percent-format notebooks through papermill: one run, or a resumable grid sweep.

    python -m lib.runner run contrastive_steering layer=12 scale=4
    python -m lib.runner sweep contrastive_steering layer=6,10,14 scale=1,2,4

Parameter names are checked against the notebook's `parameters` cell and values against its
config dataclass before anything launches (papermill itself only warns). Each run lands in
`out/<notebook>/<run-slug>/` with the executed notebook and `run.json` (resolved parameters,
git commit, timing, library versions, status). A finished run is never re-run or overwritten
silently: `run` and `sweep` skip it (so a sweep resumes) unless `run --force`. An interrupted run
keeps its folder, and re-running it resumes from what the notebook saved there.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

from lib.configs import CONFIGS, REPO_ROOT, NotebookConfig, run_slug

NOTEBOOK_DIR = REPO_ROOT / "nbs"
VERSIONED = ("torch", "transformers", "peft", "trl", "papermill", "jupytext", "numpy")


def notebook_path(name: str) -> Path:
    path = Path(name)
    if path.suffix != ".py":
        path = NOTEBOOK_DIR / f"{name}.py"
    if not path.exists():
        available = sorted(p.stem for p in NOTEBOOK_DIR.glob("*.py"))
        raise FileNotFoundError(f"notebook {name!r} not found; available: {available}")
    return path


def parameters_cell(path: Path) -> dict[str, Any]:
    """Names and literal defaults of the cell tagged `parameters`."""
    import jupytext

    notebook = jupytext.read(path)
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{path.name} must have exactly one cell tagged 'parameters' (found {len(cells)})")
    values: dict[str, Any] = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = ast.literal_eval(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            values[node.target.id] = ast.literal_eval(node.value)
        else:
            raise ValueError(f"{path.name}: the parameters cell may only assign literals ({ast.unparse(node)})")
    return values


def parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets and quotes, so `scales=[0,1],[0,2]` is two values."""
    parts, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def parse_assignments(items: list[str], grid: bool) -> dict[str, list[Any]]:
    parsed: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{item!r} is not key=value")
        key, _, text = item.partition("=")
        values = split_top_level(text) if grid else [text]
        parsed[key.strip()] = [parse_value(v.strip()) for v in values]
    return parsed


def validate(name: str, overrides: dict[str, Any]) -> tuple[dict[str, Any], NotebookConfig | None]:
    """Reject unknown names (listing the valid ones) and values the config refuses, before launching."""
    path = notebook_path(name)
    defaults = parameters_cell(path)
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {path.stem}; valid: {sorted(defaults)}")
    resolved = {**defaults, **overrides}
    config_cls = CONFIGS.get(path.stem)
    config = config_cls(**resolved) if config_cls else None  # raises on a bad value, naming the parameter
    return resolved, config


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    return found


def write_json(path: Path, data: Any) -> None:
    """Atomic write: a reader never sees half a file, a kill never leaves one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def run_status(run_dir: Path) -> str | None:
    record = run_dir / "run.json"
    return json.loads(record.read_text()).get("status") if record.exists() else None


def run_notebook(name: str, overrides: dict[str, Any], force: bool = False, out_root: Path | None = None) -> Path:
    """Execute one notebook; returns its run folder. A finished run is kept (re-running is a no-op)
    unless `force`; an unfinished or failed one runs again in the same folder, so it can resume."""
    import jupytext
    import papermill

    path = notebook_path(name)
    resolved, _ = validate(name, overrides)
    run_dir = (out_root or REPO_ROOT / "out") / path.stem / run_slug(overrides)
    status = run_status(run_dir)
    if status == "ok" and not force:
        print(f"[done already] {run_dir} (pass --force to run again and replace it)")
        return run_dir
    if status == "ok":
        print(f"[force] replacing the finished run in {run_dir}")
        shutil.rmtree(run_dir)
    elif status is not None:
        # An interrupted or failed run keeps its folder: notebooks resume from what it holds (checkpoints,
        # finished evaluations) instead of losing it.
        print(f"[resume] {run_dir} (previous status: {status})")
    run_dir.mkdir(parents=True, exist_ok=True)
    parameters = {**overrides, "out_dir": str(run_dir)}
    record: dict[str, Any] = {"notebook": path.stem, "parameters": {**resolved, "out_dir": str(run_dir)},
                              "overrides": overrides, "git_commit": _git_commit(), "versions": _versions(),
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "status": "running"}
    write_json(run_dir / "run.json", record)
    start = time.time()
    try:
        papermill.execute_notebook(jupytext.read(path), str(run_dir / f"{path.stem}.ipynb"), parameters=parameters,
                                   kernel_name="python3", cwd=str(REPO_ROOT), progress_bar=True)
        record["status"] = "ok"
    except BaseException as error:
        record |= {"status": "failed", "error": f"{type(error).__name__}: {error}"[:2000],
                   "traceback": traceback.format_exc()[-4000:]}
        raise
    finally:
        record["seconds"] = round(time.time() - start, 1)
        write_json(run_dir / "run.json", record)
    print(f"[done] {run_dir} in {record['seconds']} s")
    return run_dir


def sweep(name: str, grid: dict[str, list[Any]], fixed: dict[str, Any] | None = None,
          out_root: Path | None = None) -> Path:
    """Run the grid (resuming: finished runs are skipped), then write summary.csv and, for a 2-D grid,
    heatmaps of the main metric and the side effect."""
    fixed = fixed or {}
    path = notebook_path(name)
    keys = list(grid)
    combos = [dict(zip(keys, values, strict=True)) | fixed for values in itertools.product(*grid.values())]
    for combo in combos:  # validate the whole grid before the first launch
        validate(name, combo)
    root = (out_root or REPO_ROOT / "out") / path.stem
    sweep_dir = root / "sweeps" / run_slug({k: v for k, v in grid.items()} | fixed)
    rows, failures = [], []
    for i, combo in enumerate(combos, 1):
        print(f"[sweep {i}/{len(combos)}] {combo}", flush=True)
        try:
            run_dir = run_notebook(name, combo, out_root=out_root)
        except Exception as error:  # keep going: one bad cell must not lose the rest of the grid
            failures.append((combo, error))
            print(f"[failed] {combo}: {error}", file=sys.stderr)
            continue
        results = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").exists() else {}
        rows.append({**combo, **results.get("summary", {}), "run_dir": str(run_dir)})
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if rows:
        columns = list(dict.fromkeys(key for row in rows for key in row))
        tmp = sweep_dir / ".summary.csv.tmp"
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, sweep_dir / "summary.csv")
        swept = [k for k in keys if len(grid[k]) > 1]
        if len(swept) == 2:
            from lib.plots import sweep_heatmaps

            sweep_heatmaps(sweep_dir / "summary.csv", swept[0], swept[1], sweep_dir)
    print(f"[sweep] {len(rows)} runs summarised in {sweep_dir}")
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(combos)} runs failed: {[c for c, _ in failures]}")
    return sweep_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.runner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="execute one notebook")
    run_parser.add_argument("notebook")
    run_parser.add_argument("assignments", nargs="*", help="key=value")
    run_parser.add_argument("--force", action="store_true", help="replace an existing run folder")
    sweep_parser = sub.add_parser("sweep", help="execute the grid of comma-separated values")
    sweep_parser.add_argument("notebook")
    sweep_parser.add_argument("assignments", nargs="+", help="key=v1,v2,...")
    check_parser = sub.add_parser("check", help="validate parameters without running")
    check_parser.add_argument("notebook")
    check_parser.add_argument("assignments", nargs="*")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            overrides = {k: v[0] for k, v in parse_assignments(args.assignments, grid=False).items()}
            run_notebook(args.notebook, overrides, force=args.force)
        elif args.command == "sweep":
            sweep(args.notebook, parse_assignments(args.assignments, grid=True))
        else:
            grid = parse_assignments(args.assignments, grid=True)
            for combo in itertools.product(*grid.values()):
                validate(args.notebook, dict(zip(grid, combo, strict=True)))
            print("ok")
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        if type(error).__name__ != "PapermillExecutionError":
            raise
        print(f"error: the notebook failed; the executed copy and run.json in the run folder show where.\n{error}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
