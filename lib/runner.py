"""Execute percent-format notebooks through papermill: one run, or a resumable grid sweep.

    python -m lib.runner run contrastive_steering layer=12 scale=4
    python -m lib.runner sweep contrastive_steering layer=6,10,14 scale=1,2,4
    python -m lib.runner sweep contrastive_steering layer=6,10,14 scale=1,2,4 --executor ray   # on a Ray cluster

Parameter names are checked against the notebook's `parameters` cell and values against its
config dataclass before anything launches (papermill itself only warns), including what the values name
outside the config: layer indices against the model's config (no weights loaded), data-set keys, and
input folders of earlier runs. Each run lands in
`out/<notebook>/<run-slug>/` with the executed notebook and `run.json` (resolved parameters, seeds included,
the `./just run` command that reruns it, git commit and a dirty flag, with the uncommitted changes saved beside as
`git.diff`, timing, library versions, status). A finished run is never re-run or overwritten
silently: `run` and `sweep` skip it (so a sweep resumes) unless `run --force` (replace it) or `run --extend`
(run it again in its folder, keeping what it saved). An interrupted run
keeps its folder, and re-running it resumes from what the notebook saved there. A sweep's runs go
through an executor (lib.kits.executors): here, one after another, by default; on a Ray cluster with
`--executor ray`, where each run's files come back to this machine into the same folders.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import io
import itertools
import json
import logging
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from lib.config import NotebookConfig, run_slug
from lib.experiments import config_class
from lib.io import REPO_ROOT, FolderLocked, atomic_write, folder_lock, write_json

NOTEBOOK_DIR = REPO_ROOT / "nbs"
RESULTS_FILE = "results.json"  # every notebook writes its results here; its "summary" becomes sweep table columns
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
    """A Python literal, else a JSON value (`true`, `false`, `null`: what `rerun_command` writes), else the text
    itself. A bracketed list of bare words, `[honesty]` or `[lora,pissa]` (what a shell leaves of
    `["lora","pissa"]` without quotes), is a list of those words, not the string "[lora,pissa]" whose characters a
    config would then read one by one. Before JSON was read, `random_deltas=false` reached the notebook as the text
    "false", which is truthy: the run computed the controls it was told to skip (journal 2026-12-06, Corrections)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        with contextlib.suppress(ValueError):
            return json.loads(text)
        stripped = text.strip()
        if len(stripped) >= 2 and (stripped[0], stripped[-1]) in (("[", "]"), ("(", ")")):
            inner = stripped[1:-1].strip()
            items = [parse_value(part.strip()) for part in split_top_level(inner)] if inner else []
            return items if stripped[0] == "[" else tuple(items)
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


def parse_overrides(name: str, items: list[str], grid: bool) -> dict[str, list[Any]]:
    """`parse_assignments`, plus the hint the config's own error (about `coefficients=1`) lacks: a comma in a list
    parameter's value makes a grid of scalars (`check`/`sweep`) or one string (`run`: `lora,pissa`). Raised only
    when the config refuses such a value: a scalar it takes for a list stays valid (`layers=10,12`, a layer a run)."""
    defaults = parameters_cell(notebook_path(name))
    for item in items:
        key, _, text = (part.strip() for part in item.partition("="))
        parts = [part.strip() for part in split_top_level(text)]
        if len(parts) < 2 or not isinstance(defaults.get(key), list | tuple):
            continue
        values = parse_assignments([item], grid)[key]
        if any(isinstance(value, list | tuple) for value in values):  # lists as meant: a grid of them, or a tuple
            continue
        refusal = _refusal(name, defaults, key, values[0])
        if refusal is None:
            continue
        if grid:
            raise ValueError(f"{key}={text}: a comma makes a grid of runs, one per value; to pass one list write "
                             f"{key}=[{text}], or for one run per list {key}={','.join(f'[{p}]' for p in parts)} "
                             f"(each value alone is refused: {refusal})")
        raise ValueError(f"{key}={text} is one value, the text {values[0]!r}, not a list ({refusal}); to pass a list "
                         f"write {key}=[{text}]")
    return parse_assignments(items, grid)


def _refusal(name: str, defaults: dict[str, Any], key: str, value: Any) -> str | None:
    """The config's error for `key=value` with every other parameter at its default, or None if it takes it."""
    config_cls = config_class(notebook_path(name).stem)
    if config_cls is None:  # no config to ask
        return None
    try:
        config_cls(**{**defaults, key: value})
    except (ValueError, TypeError) as error:
        return str(error)
    return None


def validate(name: str, overrides: dict[str, Any]) -> tuple[dict[str, Any], NotebookConfig | None]:
    """Reject unknown names (listing the valid ones), values the config refuses, and values that do not fit
    the model, the data registries or the input folders (`NotebookConfig.check_inputs`), before launching."""
    path = notebook_path(name)
    defaults = parameters_cell(path)
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {path.stem}; valid: {sorted(defaults)}")
    for key, value in overrides.items():
        if isinstance(defaults[key], bool) and not isinstance(value, bool):
            raise ValueError(f"{key}={value!r} is not true or false: write {key}=true or {key}=false (a text value "
                             "would be truthy in the notebook, whatever it says)")
    resolved = {**defaults, **overrides}
    config_cls = config_class(path.stem)
    config = config_cls(**resolved) if config_cls else None  # raises on a bad value, naming the parameter
    if config is not None:
        config.check_inputs()  # model config (cached per process), subset keys, input folders; no weights
        config.check_memory()  # a run that cannot fit is refused here, with the cheapest fixes named
    return resolved, config


def git_state(root: Path = REPO_ROOT) -> tuple[str, bool, str]:
    """(HEAD's commit, whether the tree differs from it, the difference: `git diff HEAD` and the untracked files'
    names). A run records all three, so a number from a dirty tree can still be traced to the code that made it
    (issue "Corrections", requirement 7). ("unknown", False, "") outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain")
        if not status.strip():
            return commit, False, ""
        untracked = [line[3:] for line in status.splitlines() if line.startswith("??")]
        diff = git("diff", "HEAD", "--binary")
        return commit, True, diff + "".join(f"# untracked: {name}\n" for name in untracked)
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False, ""


def git_commit() -> str:
    """HEAD's commit, with "-dirty" when the tree differs from it (the label run.json and the report show)."""
    commit, dirty, _ = git_state()
    return commit + ("-dirty" if dirty else "")


def rerun_command(notebook: str, overrides: dict[str, Any]) -> str:
    """The command that runs this run again: `./just run <notebook> key=value ...`, values as JSON."""
    return shlex.join(["./just", "run", notebook, *(f"{key}={json.dumps(value, separators=(',', ':'))}"
                                                    for key, value in overrides.items() if key != "out_dir")])


def library_versions() -> dict[str, str]:
    """Python and the versions of the libraries a result depends on (`VERSIONED`), as run.json records them."""
    found = {"python": platform.python_version()}
    for package in VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    return found


def tree_record(root: Path = REPO_ROOT) -> dict[str, Any]:
    """What a journal script records of the tree it ran from, read before it writes anything: the commit, whether
    the tree differs from it, and the names of the files that differ (changed or untracked)."""
    commit, dirty, diff = git_state(root)
    names = [line.split(" b/", 1)[-1] for line in diff.splitlines() if line.startswith("diff --git")]
    names += [line.removeprefix("# untracked: ") for line in diff.splitlines() if line.startswith("# untracked: ")]
    return {"commit": commit, "dirty": dirty, "differs": names}


def run_reference(run_dir: Path) -> dict[str, Any]:
    """What a journal script records of a run folder it read: the folder and its run.json's commit, dirty flag,
    command and status."""
    record = json.loads((Path(run_dir) / "run.json").read_text())
    return {"folder": str(run_dir), "commit": record.get("git_commit"), "dirty": record.get("dirty"),
            "command": record.get("command"), "status": record.get("status")}


def script_record(tree: dict[str, Any], runs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A journal script's own record: its name, arguments and the command that runs it again (from the repository
    root), the runs it read, the tree it ran from (`tree_record`, taken before it wrote) and the library versions."""
    script = Path(sys.argv[0]).resolve()
    where = script.relative_to(REPO_ROOT) if script.is_relative_to(REPO_ROOT) else script
    return {"script": script.name, "argv": sys.argv[1:],
            "command": shlex.join([".venv/bin/python", str(where), *sys.argv[1:]]), "runs": runs or [], "tree": tree,
            "versions": library_versions()}


def run_status(run_dir: Path) -> str | None:
    record = run_dir / "run.json"
    return json.loads(record.read_text()).get("status") if record.exists() else None


def run_notebook(name: str, overrides: dict[str, Any], force: bool = False, out_root: Path | None = None,
                 progress_bar: bool = True, extend: bool = False) -> Path:
    """Execute one notebook; returns its run folder. A finished run is kept (re-running is a no-op)
    unless `force` (replace it) or `extend` (run it again in its folder, keeping what it saved: a notebook that
    resumes adds only what is new, e.g. weight_ablation's variants added since); an unfinished or failed one
    runs again in the same folder, so it can resume."""
    if force and extend:
        raise ValueError("--force replaces a finished run and --extend keeps its saved work: pass one of them")
    path = notebook_path(name)
    resolved, _ = validate(name, overrides)
    run_dir = (out_root or REPO_ROOT / "out") / path.stem / run_slug(overrides)
    # one writer per run folder: a second launch of the same run stops here, naming the first one's pid
    with folder_lock(run_dir, f"./just run {name} {run_slug(overrides)}"):
        return _run_locked(path, run_dir, overrides, resolved, force, progress_bar, extend)


def _run_locked(path: Path, run_dir: Path, overrides: dict[str, Any], resolved: dict[str, Any], force: bool,
                progress_bar: bool, extend: bool = False) -> Path:
    import jupytext

    status = run_status(run_dir)
    if status == "ok" and extend:
        print(f"[extend] {run_dir}: the finished run runs again in its folder, keeping what it saved")
    elif status == "ok" and not force:
        print(f"[done already] {run_dir} (pass --force to run again and replace it, or --extend to run it again "
              "keeping what it saved)")
        return run_dir
    if status == "ok" and force:
        print(f"[force] replacing the finished run in {run_dir}")
        for child in run_dir.iterdir():  # the folder itself stays: it holds our lock
            if child.name != ".lock":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    elif status is not None and not extend:
        # An interrupted or failed run keeps its folder: notebooks resume from what it holds (checkpoints,
        # finished evaluations) instead of losing it.
        print(f"[resume] {run_dir} (previous status: {status})")
    extra = None
    if status == "ok" and extend:  # the run it extends: when and from which commit its saved work came
        before = json.loads((run_dir / "run.json").read_text())
        extra = {"extends": {k: before.get(k) for k in ("started", "git_commit", "seconds", "extends")}}
    run_dir.mkdir(parents=True, exist_ok=True)
    record = _execute(jupytext.read(path), path.stem, run_dir, overrides, resolved, git_commit(), progress_bar,
                      extra)
    print(f"[done] {run_dir} in {record['seconds']} s")
    return run_dir


# papermill guesses a notebook's parameters with a regex, only to warn about names it does not know. It cannot read
# a line whose string holds "=" (weight_ablation's deltas_from slug: "Unable to parse line 5"), and then calls that
# real parameter unknown. The runner checks every name against the experiment's config before launch, so these
# two warnings are noise; every other papermill message passes (tests/test_runner.py pins papermill's wording).
PAPERMILL_GUESSES = ("Unable to parse line", "Passed unknown parameter")


class _DropParameterGuesses(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(PAPERMILL_GUESSES)


@contextlib.contextmanager
def quiet_parameter_guesses() -> Iterator[None]:
    """Drop papermill's parameter-guessing warnings (above) while a notebook runs; restored afterwards."""
    loggers = [logging.getLogger(name) for name in ("papermill", "papermill.translators")]
    noise = _DropParameterGuesses()
    for logger in loggers:
        logger.addFilter(noise)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(noise)


# ipykernel (7.x) warns at every start that its sockets speak TCP without encryption. papermill's kernel listens on
# localhost for one run, so every `./just run` printed a warning nobody could act on (issue "The weight wing and one
# way in", item C2). The kernel is another process: the filter reaches it as its own logging config, a `--config`
# file setting traitlets' `logging_config` on its app, written per run. It drops that one message; every other kernel
# message passes (tests/test_runner.py pins ipykernel's wording and runs a kernel with this file).
KERNEL_TCP_WARNING = "Kernel is running over TCP without encryption."
KERNEL_CONFIG = f"""# written by lib.runner for one notebook run: drop ipykernel's unencrypted-TCP warning, nothing else
import logging


class QuietTcpWarning(logging.Filter):
    def filter(self, record):
        return not record.getMessage().startswith({KERNEL_TCP_WARNING!r})


c.IPKernelApp.logging_config = {{"filters": {{"steerlab_quiet_tcp": {{"()": QuietTcpWarning}}}},
                                "handlers": {{"console": {{"filters": ["steerlab_quiet_tcp"]}}}}}}
"""


@contextlib.contextmanager
def quiet_kernel() -> Iterator[list[str]]:
    """The kernel's extra command-line arguments for one run: `--config` naming KERNEL_CONFIG (above), written to a
    temporary folder that is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="steerlab-kernel-") as folder:
        yield [f"--config={atomic_write(Path(folder) / 'kernel_config.py', KERNEL_CONFIG)}"]


def _execute(notebook: Any, stem: str, run_dir: Path, overrides: dict[str, Any], resolved: dict[str, Any],
             commit: str, progress_bar: bool, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """papermill into `run_dir`, with run.json written before (status running) and after (ok / failed)."""
    import papermill

    parameters = {**overrides, "out_dir": str(run_dir)}
    dirty = commit.endswith("-dirty")
    record: dict[str, Any] = {"notebook": stem, "parameters": {**resolved, "out_dir": str(run_dir)},
                              "overrides": overrides, "command": rerun_command(stem, overrides), "argv": sys.argv,
                              "git_commit": commit, "dirty": dirty, "versions": library_versions(),
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "status": "running", **(extra or {})}
    if dirty:  # the difference from the commit, beside the run: what the numbers came from
        _, _, diff = git_state()
        atomic_write(run_dir / "git.diff", diff)
        record["diff"] = "git.diff"
    write_json(run_dir / "run.json", record)
    start = time.time()
    try:
        with quiet_parameter_guesses(), quiet_kernel() as kernel_arguments:
            papermill.execute_notebook(notebook, str(run_dir / f"{stem}.ipynb"), parameters=parameters,
                                       kernel_name="python3", cwd=str(REPO_ROOT), progress_bar=progress_bar,
                                       extra_arguments=kernel_arguments)
        record["status"] = "ok"
    except BaseException as error:
        record |= {"status": "failed", "error": _short_error(error),
                   "traceback": traceback.format_exc()[-4000:]}
        raise
    finally:
        record["seconds"] = round(time.time() - start, 1)
        write_json(run_dir / "run.json", record)
    return record


def _short_error(error: BaseException) -> str:
    """The notebook's own exception (papermill's message is the whole cell dump), else the error itself."""
    if hasattr(error, "ename") and hasattr(error, "evalue"):
        return f"{error.ename}: {error.evalue} (cell {getattr(error, 'exec_count', '?')})"[:2000]
    return f"{type(error).__name__}: {error}"[:2000]


# Files whose text may name the worker's scratch folder; the driver rewrites it to the run folder.
TEXT_SUFFIXES = {".json", ".ipynb", ".md", ".csv", ".txt", ".yaml", ".yml", ".html", ".log", ".py"}


def _worker_identity() -> dict[str, str]:
    identity = {"host": platform.node()}
    with contextlib.suppress(Exception):
        import ray

        if ray.is_initialized():
            identity["node_id"] = ray.get_runtime_context().get_node_id()
    return identity


def execute_shipped(stem: str, source: str, overrides: dict[str, Any], resolved: dict[str, Any], commit: str,
                    scratch_dir: str | None = None) -> dict[str, Any]:
    """One run on a worker that may share no disk with the driver: the notebook arrives as source text, runs in
    a scratch folder, and every file it wrote (executed notebook, run.json, results.json, figures) goes back
    as bytes for `write_shipped`. A notebook error is returned (the executed notebook shows the failing cell),
    not raised, so the executor does not retry what would fail the same way again."""
    import jupytext

    identity = _worker_identity()
    prefix = f"steerlab-{identity.get('node_id', identity['host'])[:12]}-{run_slug(overrides)[:40]}-"
    if scratch_dir:
        Path(scratch_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=prefix, dir=scratch_dir) as scratch:
        run_dir = Path(scratch) / stem / run_slug(overrides)
        run_dir.mkdir(parents=True)
        error = None
        try:
            _execute(jupytext.reads(source, fmt="py:percent"), stem, run_dir, overrides, resolved, commit,
                     progress_bar=False, extra={"worker": identity})
        except Exception as failure:
            error = _short_error(failure)
        files = {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}
    return {"files": files, "worker_dir": str(run_dir), "error": error, "worker": identity}


def write_shipped(run_dir: Path, shipped: dict[str, Any]) -> str:
    """Write a shipped run into `run_dir` (each file atomically, run.json last, so the run counts as finished
    only once all its files are in), with the worker's scratch path replaced by `run_dir` in text files so the
    tree matches a local run's. Returns the run's status."""
    old, new = shipped["worker_dir"].encode(), str(run_dir).encode()
    root = run_dir.resolve()
    record = None
    for relative, data in shipped["files"].items():
        target = run_dir / relative
        if not target.resolve().is_relative_to(root):
            raise ValueError(f"a shipped file would land outside {run_dir}: {relative!r}")
        if target.suffix in TEXT_SUFFIXES:
            data = data.replace(old, new)
        if relative == "run.json":
            record = json.loads(data)
            continue
        atomic_write(target, data)
    record = record or {"status": "failed"}
    if shipped["error"] and record.get("status") != "failed":  # the worker died between papermill and run.json
        record |= {"status": "failed", "error": shipped["error"]}
    write_json(run_dir / "run.json", record)
    return record["status"]


def _run_here(name: str, overrides: dict[str, Any], out_root: Path | None) -> str:
    return str(run_notebook(name, overrides, out_root=out_root, progress_bar=False))


def notebook_resources(stem: str, override: dict[str, float] | None = None) -> dict[str, float]:
    """What one run of the notebook asks the executor for: its config's `resources`, then `override`."""
    from lib.kits.executors import DEFAULT_RESOURCES

    config_cls = config_class(stem)
    return {**getattr(config_cls, "resources", DEFAULT_RESOURCES), **(override or {})}


class SweepFailed(RuntimeError):
    """Some runs of a sweep failed; the others finished and the summary lists every run with its status."""


def sweep(name: str, grid: dict[str, list[Any]], fixed: dict[str, Any] | None = None,
          out_root: Path | None = None, executor: Any = None, resources: dict[str, float] | None = None,
          progress: bool = True) -> Path:
    """Run the grid through an executor (lib.kits.executors: `local` by default, `ray` for a cluster), resuming:
    finished runs are skipped. Then write summary.csv (every run once, with its status and, if it failed, its
    error) and, for a 2-D grid, heatmaps of the main metric and the side effect. Raises SweepFailed after
    the summary when some runs failed; Ctrl-C cancels the runs in flight and keeps the finished ones."""
    from collections import deque

    from lib.kits.executors import TaskPool, get_executor

    fixed = fixed or {}
    path = notebook_path(name)
    keys = list(grid)
    combos = [dict(zip(keys, values, strict=True)) | fixed for values in itertools.product(*grid.values())]
    resolved = [validate(name, combo)[0] for combo in combos]  # validate the whole grid before the first launch
    root = (out_root or REPO_ROOT / "out") / path.stem
    sweep_dir = root / "sweeps" / run_slug({k: v for k, v in grid.items()} | fixed)
    run_dirs = [root / run_slug(combo) for combo in combos]
    engine = get_executor(executor)
    need = notebook_resources(path.stem, resources)
    if hasattr(engine, "check_fits"):
        engine.check_fits(need)
    outcome = {i: ("ok", "") for i, run_dir in enumerate(run_dirs) if run_status(run_dir) == "ok"}
    queue = deque(i for i in range(len(combos)) if i not in outcome)
    source, commit = path.read_text(), git_commit()
    try:
        with TaskPool(engine, need, total=len(combos), initial=len(outcome), desc=f"sweep {path.stem} ({engine.name})",
                      progress=progress) as pool:
            if outcome:
                pool.write(f"[resume] {len(outcome)} of {len(combos)} runs finished already")
            while queue or pool.in_flight:
                while queue and pool.free():
                    i = queue.popleft()
                    if engine.ships_results:
                        pool.submit(i, execute_shipped, path.stem, source, combos[i], resolved[i], commit,
                                    getattr(engine, "scratch_dir", None))
                    else:
                        pool.submit(i, _run_here, name, combos[i], out_root)
                for i, ok, value in pool.done():
                    outcome[i] = _book(engine.name, run_dirs[i], combos[i], ok, value)
                    pool.count(failed=outcome[i][0] != "ok")
                    if outcome[i][0] != "ok":
                        pool.write(f"[failed] {combos[i]}: {outcome[i][1][:300]}")
    finally:  # also on Ctrl-C: the summary of what finished (on disk, even if Ctrl-C came while booking it)
        for i, run_dir in enumerate(run_dirs):
            if i not in outcome and run_status(run_dir) == "ok":
                outcome[i] = ("ok", "")
        write_summary(sweep_dir, [summary_row(combos[i], run_dirs[i], *outcome[i]) for i in sorted(outcome)],
                      keys, grid)
    failures = [combos[i] for i, (status, _) in sorted(outcome.items()) if status != "ok"]
    print(f"[sweep] {len(outcome)} runs summarised in {sweep_dir}")
    if failures:
        raise SweepFailed(f"{len(failures)} of {len(combos)} runs failed (errors in {sweep_dir / 'summary.csv'} and "
                          f"each run's run.json): {failures}")
    return sweep_dir


def _book(engine: str, run_dir: Path, combo: dict[str, Any], ok: bool, value: Any) -> tuple[str, str]:
    """Record a finished task on the driver's disk; returns (status, error)."""
    if ok and isinstance(value, dict):  # shipped from a worker
        status = write_shipped(run_dir, value)
    elif not ok and isinstance(value.__cause__, FolderLocked):  # another process runs it: its run.json is theirs
        return "failed", str(value)
    elif not ok and run_status(run_dir) in (None, "running"):  # lost before it could write anything here
        write_json(run_dir / "run.json", {"notebook": run_dir.parent.name, "overrides": combo, "status": "failed",
                                          "error": str(value)[:2000], "executor": engine})
        status = "failed"
    else:
        status = run_status(run_dir) or "failed"
    if status == "ok":
        return status, ""
    record = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    return "failed", str(record.get("error") or value)


def summary_row(combo: dict[str, Any], run_dir: Path, status: str, error: str) -> dict[str, Any]:
    """One run's row of a sweep's summary.csv: its grid values, its results.json `summary` (a finished run's), run
    folder, status and error. Public because summary.csv is what a notebook's `summary` must reach: tests build a
    row from results.json as a notebook writes it (issue "The weight wing and one way in": no private imports)."""
    results_path = run_dir / RESULTS_FILE
    results = json.loads(results_path.read_text()) if status == "ok" and results_path.exists() else {}
    row = {**combo, **results.get("summary", {}), "run_dir": str(run_dir), "status": status}
    if error:
        row["error"] = " ".join(error.split())[:500]
    return row


def write_summary(sweep_dir: Path, rows: list[dict[str, Any]], keys: list[str], grid: dict[str, list[Any]]) -> None:
    """`sweep_dir/summary.csv` from `summary_row`s (metric columns first, then run_dir, status, error) and, for a
    2-D grid, its heatmaps. Public for the same reason as `summary_row`: the file is the contract with the report
    and the tests."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if not rows:
        return
    columns = list(dict.fromkeys(key for row in rows for key in row if key not in ("run_dir", "status", "error")))
    columns += ["run_dir", "status"] + (["error"] if any("error" in row for row in rows) else [])
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(sweep_dir / "summary.csv", text.getvalue())
    swept = [k for k in keys if len(grid[k]) > 1]
    if len(swept) == 2 and any(row["status"] == "ok" for row in rows):
        from lib.kits.plots import sweep_heatmaps

        sweep_heatmaps(sweep_dir / "summary.csv", swept[0], swept[1], sweep_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.runner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="execute one notebook")
    run_parser.add_argument("notebook")
    run_parser.add_argument("assignments", nargs="*", help="key=value")
    run_parser.add_argument("--force", action="store_true", help="replace an existing run folder")
    run_parser.add_argument("--extend", action="store_true",
                            help="run a finished run again in its folder, keeping what it saved (new work only)")
    sweep_parser = sub.add_parser("sweep", help="execute the grid of comma-separated values")
    sweep_parser.add_argument("notebook")
    sweep_parser.add_argument("assignments", nargs="+", help="key=v1,v2,...")
    sweep_parser.add_argument("--executor", default=None,
                              help="local (default), local:N (N processes), ray (RAY_ADDRESS or the cluster "
                                   "`ray start` made here) or ray:<address>; default from STEERLAB_EXECUTOR")
    sweep_parser.add_argument("--resources", default="",
                              help="what each run asks the executor for, over the notebook's declaration, "
                                   "e.g. num_gpus=1,num_cpus=8,memory=60e9")
    check_parser = sub.add_parser("check", help="validate parameters without running")
    check_parser.add_argument("notebook")
    check_parser.add_argument("assignments", nargs="*")
    # flags may come anywhere: `run nb --extend a=1` leaves a=1 to parse_known_args (argparse ends a nargs="*"
    # positional at the first flag); anything else unknown is an error
    args, rest = parser.parse_known_args(argv)
    unknown = [item for item in rest if item.startswith("-")]
    if unknown or (rest and not hasattr(args, "assignments")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or rest)}")
    if rest:
        args.assignments = [*args.assignments, *rest]
    try:
        if args.command == "run":
            overrides = {k: v[0] for k, v in parse_overrides(args.notebook, args.assignments, grid=False).items()}
            run_notebook(args.notebook, overrides, force=args.force, extend=args.extend)
        elif args.command == "sweep":
            from lib.kits.executors import parse_resources

            sweep(args.notebook, parse_overrides(args.notebook, args.assignments, grid=True), executor=args.executor,
                  resources=parse_resources(args.resources))
        else:
            grid = parse_overrides(args.notebook, args.assignments, grid=True)
            tables: dict[str, None] = {}
            for combo in itertools.product(*grid.values()):
                _, config = validate(args.notebook, dict(zip(grid, combo, strict=True)))
                memory = config.memory_plan() if config is not None else None
                if memory is not None:
                    tables[f"memory plan for model={config.model!r}:\n{memory.table()}"] = None
            print("\n".join([*tables, "ok"]))
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (SweepFailed, FolderLocked) as error:  # 1, not 2: the command was right; its run could not finish now
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        if type(error).__name__ != "PapermillExecutionError":
            raise
        print(f"error: the notebook failed; the executed copy and run.json in the run folder show where.\n{error}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
