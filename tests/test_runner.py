"""Runner: parameter parsing and validation before launch, config/parameters-cell agreement, run slugs."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import NOTEBOOKS

from lib.config import run_slug
from lib.experiments import config_class
from lib.experiments.contrastive_steering import ContrastiveConfig
from lib.runner import (
    main,
    notebook_path,
    parameters_cell,
    parse_assignments,
    quiet_parameter_guesses,
    split_top_level,
    validate,
)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_cell_mirrors_config_fields_and_defaults(name):
    cell = parameters_cell(notebook_path(name))
    config_cls = config_class(name)
    assert list(cell) == config_cls.field_names()
    defaults = config_cls()
    for field in dataclasses.fields(config_cls):
        value = cell[field.name]
        expected = getattr(defaults, field.name)
        assert (list(value) if isinstance(value, tuple | list) else value) == \
            (list(expected) if isinstance(expected, tuple | list) else expected), field.name


def test_every_notebook_pairs_with_one_experiment_module():
    from lib.io import REPO_ROOT

    modules = sorted(p.stem for p in (REPO_ROOT / "lib" / "experiments").glob("*.py") if p.stem != "__init__")
    assert modules == NOTEBOOKS
    for name in NOTEBOOKS:
        assert config_class(name).notebook == name
    with pytest.raises(ValueError, match="no experiment module lib/experiments/nothing_here.py"):
        config_class("nothing_here")


def test_split_and_parse():
    assert split_top_level("1,2,3") == ["1", "2", "3"]
    assert split_top_level("[0,1],[0,2]") == ["[0,1]", "[0,2]"]
    assert split_top_level("'a,b',c") == ["'a,b'", "c"]
    parsed = parse_assignments(["layer=6,10", "target=math", "curve_scales=[0,1],[0,2]"], grid=True)
    assert parsed == {"layer": [6, 10], "target": ["math"], "curve_scales": [[0, 1], [0, 2]]}
    assert parse_assignments(["target=0"], grid=False) == {"target": [0]}


def test_bare_words_in_brackets_are_a_list_of_strings():
    """`behaviours=[honesty]` (the shell strips the quotes of `["honesty"]`) is ['honesty'], not the string
    "[honesty]" that a config then reads character by character and reports as behaviours='[' (catches: the
    fallback returning the raw text); literals keep their types and quoted lists are unchanged."""
    assert parse_assignments(["behaviours=[honesty]"], grid=False) == {"behaviours": [["honesty"]]}
    assert parse_assignments(["adapters=[lora, pissa,delora]"], grid=False) == {
        "adapters": [["lora", "pissa", "delora"]]}
    assert parse_assignments(["mixed=[lora,1,2.5,None]"], grid=False) == {"mixed": [["lora", 1, 2.5, None]]}
    assert parse_assignments(['adapters=["lora","dora"]'], grid=False) == {"adapters": [["lora", "dora"]]}
    assert parse_assignments(["adapters=[lora],[dora]"], grid=True) == {"adapters": [["lora"], ["dora"]]}
    assert parse_assignments(["empty=[]", "word=math"], grid=False) == {"empty": [[]], "word": ["math"]}


def test_json_booleans_parse_as_booleans_and_a_text_for_a_bool_is_refused():
    """`random_deltas=false` (what `rerun_command` writes, and what a shell user types) is False, not the text
    "false" that the notebook then reads as truthy: a run of the journal's own command computed the controls it was
    told to skip (catches: the JSON fallback removed). A bool parameter given any other text is refused before
    launch, naming it (catches: the check removed)."""
    parsed = parse_assignments(["random_deltas=false", "shuffle_labels=true", "out=null", "words=[true,honesty]"],
                               grid=False)
    assert parsed == {"random_deltas": [False], "shuffle_labels": [True], "out": [None], "words": [[True, "honesty"]]}
    assert parse_assignments(["flag=True", "x=honesty"], grid=False) == {"flag": [True], "x": ["honesty"]}
    from lib import runner

    command = runner.rerun_command("weight_steering", {"random_deltas": False, "shuffle_labels": True})
    items = command.split()[3:]
    assert {k: v[0] for k, v in parse_assignments(items, grid=False).items()} == {"random_deltas": False,
                                                                                 "shuffle_labels": True}
    with pytest.raises(ValueError, match="random_deltas='yes' is not true or false"):
        validate("weight_steering", {"random_deltas": "yes"})


def test_unknown_parameter_is_rejected_before_launch(capsys):
    assert main(["sweep", "contrastive_steering", "layer=6,10", "scael=1,2"]) == 2
    err = capsys.readouterr().err
    assert "unknown parameter(s) ['scael']" in err and "'scale'" in err
    with pytest.raises(ValueError, match="scael"):
        validate("contrastive_steering", {"scael": 1})


def test_bad_values_are_rejected_naming_the_parameter(capsys):
    assert main(["check", "contrastive_steering", "layer=-1"]) == 2
    assert "layer=-1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="curve_scales"):
        validate("contrastive_steering", {"curve_scales": [1.0, 2.0]})
    with pytest.raises(ValueError, match="temperature"):
        validate("contrastive_steering", {"temperature": -1})
    assert main(["check", "contrastive_steering", "layer=4,8", "scale=1,2"]) == 0


def test_unknown_notebook_lists_the_available_ones():
    with pytest.raises(FileNotFoundError, match="contrastive_steering"):
        notebook_path("nope")


def test_run_slug_and_out_dir(tmp_path):
    assert run_slug({}) == "default"
    assert run_slug({"scale": 4.0, "layer": 12}) == "layer=12_scale=4.0"
    assert run_slug({"alphas": [-3.0, 3.0]}) != run_slug({"alphas": [3.0, 3.0]})  # a leading minus is kept
    assert run_slug({"scale": -1.0, "finetuned": "/tmp/x/"}) == "finetuned=tmp-x_scale=-1.0"
    long = {"finetuned": "/tmp/" + "x" * 200}
    assert run_slug(long) == "finetuned=tmp-" + "x" * 86 + "-1f9a7b0a"  # stable across processes
    config = ContrastiveConfig(layer=12, scale=4.0)
    assert config.resolve_out_dir().parts[-3:] == ("out", "contrastive_steering", "layer=12_scale=4.0")
    assert ContrastiveConfig(out_dir=str(tmp_path / "x")).resolve_out_dir() == tmp_path / "x"


def _results_files_written(path) -> list[str]:
    """File names a notebook passes to write_json as `<folder> / "<name>"`."""
    import ast

    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "write_json" and node.args:
            target = node.args[0]
            if isinstance(target, ast.BinOp) and isinstance(target.right, ast.Constant):
                names.append(target.right.value)
    return names


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_notebook_writes_the_results_file_the_sweep_summary_reads(name):
    from lib.runner import RESULTS_FILE

    assert RESULTS_FILE in _results_files_written(notebook_path(name)), \
        f"{name} must write its results (with a 'summary') to {RESULTS_FILE}, which summary.csv reads"


def test_bo_summary_reaches_the_sweep_table(tmp_path):
    """steering_bo's results, as the notebook writes them, give summary.csv its metric columns."""
    import csv

    from lib.experiments.steering_bo import BOSteeringConfig, bo_results
    from lib.runner import RESULTS_FILE, summary_row, write_json, write_summary

    class Search:
        best_point, best_score, history, settings = {"early": 0.5, "late": 1.0}, 0.75, [], {}

    results = bo_results(BOSteeringConfig(), ["early", "late"], [[0, 1], [2, 3]], Search(), None, 0.25, 0.5,
                         {"score": 0.7, "kl": 0.01})
    run_dir = tmp_path / "steering_bo" / "seed=1"
    write_json(run_dir / RESULTS_FILE, results)
    write_summary(tmp_path / "sweep", [summary_row({"seed": 1}, run_dir, "ok", "")], ["seed"], {"seed": [1]})
    with open(tmp_path / "sweep" / "summary.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert (row["main"], row["baseline"], row["confirmed"], row["side_effect"]) == ("0.75", "0.25", "0.7", "0.01")


def test_a_run_folder_has_one_writer(tmp_path, monkeypatch):
    """A second launch of a running run stops before papermill, naming the holder; a crashed holder's lock is
    taken over; the lock is gone after a run, also after a failed one."""
    import json
    import os
    import platform
    import subprocess
    import sys

    import lib.runner as runner
    from lib.io import FolderLocked, folder_lock

    executed = []
    monkeypatch.setattr(runner, "_execute", lambda *a, **k: executed.append(a[2]) or {"seconds": 0.0})
    run_dir = tmp_path / "toy_sweep" / "default"
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / ".lock").write_text(json.dumps({"pid": holder.pid, "host": platform.node(),
                                                   "started": "then", "purpose": "./just run toy_sweep"}))
        with pytest.raises(FolderLocked, match=f"pid {holder.pid}.*toy_sweep"):
            runner.run_notebook("toy_sweep", {}, out_root=tmp_path)
        assert executed == [] and (run_dir / ".lock").exists()  # refused before anything ran; theirs is kept
    finally:
        holder.kill()
        holder.wait()
    runner.run_notebook("toy_sweep", {}, out_root=tmp_path)  # the holder is dead: stale lock taken over
    assert executed == [run_dir] and not (run_dir / ".lock").exists()

    other_host = {"pid": os.getpid(), "host": "elsewhere", "started": "then"}
    (run_dir / ".lock").write_text(json.dumps(other_host))  # cannot tell whether it runs: never taken over
    with pytest.raises(FolderLocked, match="delete .*lock"):
        runner.run_notebook("toy_sweep", {}, out_root=tmp_path)
    (run_dir / ".lock").unlink()

    with pytest.raises(RuntimeError, match="boom"), folder_lock(run_dir, "test") as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(FolderLocked), folder_lock(run_dir):  # not twice, even by its own process
            pass
        raise RuntimeError("boom")
    assert not (run_dir / ".lock").exists()


def test_extend_runs_a_finished_run_again_keeping_its_files(tmp_path, monkeypatch, capsys):
    """A finished run is skipped by default, replaced (files deleted) by --force, and run again in place with its
    files kept by --extend, so weight_ablation scores only variants added since. Catches --extend deleting like
    --force, or being ignored (the run skipped as done)."""
    import json

    import lib.runner as runner

    executed = []
    monkeypatch.setattr(runner, "_execute", lambda *a, **k: executed.append(a[2]) or {"seconds": 0.0})
    run_dir = tmp_path / "toy_sweep" / "default"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"status": "ok"}))
    (run_dir / "evaluations.json").write_text("{}")
    runner.run_notebook("toy_sweep", {}, out_root=tmp_path)
    assert executed == [] and "--extend" in capsys.readouterr().out
    (run_dir / "run.json").write_text(json.dumps({"status": "ok", "git_commit": "abc", "started": "then"}))
    extra = []
    monkeypatch.setattr(runner, "_execute", lambda *a, **k: executed.append(a[2]) or extra.append(a[7]) or
                        {"seconds": 0.0})
    runner.run_notebook("toy_sweep", {}, out_root=tmp_path, extend=True)
    assert executed == [run_dir] and (run_dir / "evaluations.json").exists()
    assert extra[0]["extends"]["git_commit"] == "abc"  # the record keeps which run's work it extends
    with pytest.raises(ValueError, match="pass one of them"):
        runner.run_notebook("toy_sweep", {}, out_root=tmp_path, extend=True, force=True)
    runner.run_notebook("toy_sweep", {}, out_root=tmp_path, force=True)
    assert executed == [run_dir, run_dir] and not (run_dir / "evaluations.json").exists()


def test_run_flags_may_come_before_or_after_the_assignments(monkeypatch):
    """argparse stops a nargs="*" positional at the first flag: `run nb --extend a=1` must still pass a=1."""
    import lib.runner as runner

    calls = []
    monkeypatch.setattr(runner, "run_notebook", lambda name, overrides, **k: calls.append((name, overrides, k)))
    for argv in (["run", "toy_sweep", "--extend", "n=2", "lr=0.5"], ["run", "toy_sweep", "n=2", "--extend", "lr=0.5"],
                 ["run", "toy_sweep", "n=2", "lr=0.5", "--extend"]):
        assert runner.main(argv) == 0
        assert calls.pop() == ("toy_sweep", {"n": 2, "lr": 0.5}, {"force": False, "extend": True})
    with pytest.raises(SystemExit):
        runner.main(["run", "toy_sweep", "--extnd", "n=2"])


def test_papermill_parameter_guesses_are_dropped_and_nothing_else(caplog):
    """papermill's regex cannot read weight_ablation's `deltas_from` line (its slug holds "=") and warns; the runner's
    own check replaces that guess, so the warning is dropped while a notebook runs. The first half pins papermill's
    wording: if it changes, the filter would silently stop matching and this fails."""
    import inspect
    import logging

    import jupytext
    import papermill.execute
    from papermill.inspection import _infer_parameters

    notebook = jupytext.read(notebook_path("weight_ablation"))
    notebook.metadata.setdefault("kernelspec", {"name": "python3", "language": "python"})
    for cell in notebook.cells:  # as papermill's load_notebook_node leaves them
        cell.metadata.setdefault("tags", [])
    caplog.set_level(logging.WARNING)
    _infer_parameters(notebook, name="python3", language="python")
    assert any(r.getMessage().startswith("Unable to parse line") for r in caplog.records)
    assert 'f"Passed unknown parameter: {p}"' in inspect.getsource(papermill.execute)
    caplog.clear()
    with quiet_parameter_guesses():
        _infer_parameters(notebook, name="python3", language="python")
        logging.getLogger("papermill").warning("Passed unknown parameter: deltas_from")
        logging.getLogger("papermill").warning("Executing notebook with kernel: python3")
    assert [r.getMessage() for r in caplog.records] == ["Executing notebook with kernel: python3"]
    caplog.clear()
    _infer_parameters(notebook, name="python3", language="python")  # restored afterwards
    assert any(r.getMessage().startswith("Unable to parse line") for r in caplog.records)


def test_a_locked_run_is_an_error_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    """`./just run` of a run another process holds prints `error:` with the holder's pid and returns 1, before
    papermill (catches: FolderLocked escaping main as a traceback). The sweep path reports it as that run's
    failure and leaves the holder's run.json alone (catches: the sweep booking the live run as failed)."""
    import functools
    import json

    import lib.runner as runner
    from lib.io import folder_lock

    def never(*args, **kwargs):
        raise AssertionError("a notebook ran although its folder was locked")

    monkeypatch.setattr(runner, "_execute", never)
    monkeypatch.setattr(runner, "run_notebook", functools.partial(runner.run_notebook, out_root=tmp_path))
    monkeypatch.setattr(runner, "sweep", functools.partial(runner.sweep, out_root=tmp_path))
    monkeypatch.delenv("STEERLAB_EXECUTOR", raising=False)
    run_dir = tmp_path / "toy_sweep" / "n_samples=32"
    holder_record = {"notebook": "toy_sweep", "status": "running", "started": "then"}
    with folder_lock(run_dir, "./just run toy_sweep n_samples=32") as lock:
        (run_dir / "run.json").write_text(json.dumps(holder_record))
        pid = json.loads(lock.read_text())["pid"]
        assert main(["run", "toy_sweep", "n_samples=32"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and f"pid {pid}" in err and "Traceback" not in err
        assert main(["sweep", "toy_sweep", "n_samples=32"]) == 1
        captured = capsys.readouterr()
        assert f"pid {pid}" in captured.out + captured.err and "Traceback" not in captured.out + captured.err
        assert json.loads((run_dir / "run.json").read_text()) == holder_record


def test_a_comma_in_a_list_parameter_says_how_to_pass_one_list(capsys):
    """`check`/`sweep` read a comma as a grid, so `coefficients=1,4` is two runs with coefficients=1 and =4, which
    the config refuses; the error says so and how to write one list (catches: the bare "coefficients=1 must be a
    list"). A list-valued grid and a scalar that the config accepts for a list (one layer) stay valid."""
    assert main(["check", "playground", "coefficients=1,4"]) == 2
    err = capsys.readouterr().err
    assert "coefficients=1,4: a comma makes a grid of runs, one per value" in err
    assert "coefficients=[1,4]" in err and "Traceback" not in err
    assert main(["sweep", "playground", "coefficients=1,4"]) == 2  # refused before any launch
    assert "coefficients=[1,4]" in capsys.readouterr().err
    assert main(["check", "playground", "coefficients=[1,4]"]) == 0
    assert main(["check", "playground", "coefficients=[1],[4]", "layers=10,12"]) == 0
    assert main(["check", "weight_steering", "adapters=lora,pissa"]) == 2
    assert "adapters=[lora,pissa]" in capsys.readouterr().err


def test_a_comma_in_a_run_value_says_how_to_pass_a_list(tmp_path, capsys, monkeypatch):
    """For `run` the whole text after `=` is one value: `adapters=lora,pissa` is the string "lora,pissa", which the
    config refuses; the error names the list to write (catches: the config's "adapters='l'" about one letter).
    `coefficients=1,4` is the tuple (1, 4) and runs as the list it looks like."""
    import functools

    import lib.runner as runner

    executed = []
    monkeypatch.setattr(runner, "_execute", lambda *a, **k: executed.append(a[3]) or {"seconds": 0.0})
    monkeypatch.setattr(runner, "run_notebook", functools.partial(runner.run_notebook, out_root=tmp_path))
    assert main(["run", "weight_steering", "adapters=lora,pissa"]) == 2
    err = capsys.readouterr().err
    assert "adapters=lora,pissa is one value" in err and "adapters=[lora,pissa]" in err and "Traceback" not in err
    assert executed == []
    assert main(["run", "playground", "coefficients=1,4"]) == 0
    assert executed == [{"coefficients": (1, 4)}]


@pytest.mark.parametrize("name", [".venv", ".venv-peers", ".venv-latest"])
def test_a_venv_symlink_is_ignored_so_runs_are_not_marked_dirty(tmp_path, name):
    """`git_commit` appends "-dirty" when `git status --porcelain` prints anything; `.venv/` in .gitignore matched a
    directory only, so a `.venv` symlink to a shared venv made every run dirty (issue "The weight wing and one way
    in", item C3). A temp repo with this repo's .gitignore: the symlink and a real folder are both ignored and status
    stays clean (catches: the trailing slash back on any of the three)."""
    import shutil
    import subprocess

    from lib.io import REPO_ROOT

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                              capture_output=True, text=True)

    repo, shared = tmp_path / "clone", tmp_path / "shared-venv"
    repo.mkdir()
    (shared / "bin").mkdir(parents=True)
    assert git("init", "-q").returncode == 0
    shutil.copy(REPO_ROOT / ".gitignore", repo / ".gitignore")
    assert git("add", ".gitignore").returncode == 0 and git("commit", "-q", "-m", "ignore").returncode == 0
    (repo / name).symlink_to(shared, target_is_directory=True)
    assert git("check-ignore", "-q", name).returncode == 0, f"a {name} symlink is not ignored"
    assert git("status", "--porcelain").stdout == ""
    (repo / name).unlink()
    (repo / name / "bin").mkdir(parents=True)  # a real venv folder stays ignored too
    (repo / name / "bin" / "python").write_text("")
    assert git("status", "--porcelain").stdout == ""


def test_the_kernel_tcp_warning_filter_drops_that_wording_only():
    """The kernel config's filter drops ipykernel's unencrypted-TCP warning and passes every other message, including
    one that only mentions it (catches: a filter matching "Kernel" or "TCP", or `not` dropped). The first check pins
    ipykernel's wording: if it changes, the filter would silently stop matching and this fails."""
    import inspect
    import logging

    import ipykernel.kernelapp
    from traitlets.config import Config

    from lib.runner import KERNEL_CONFIG, KERNEL_TCP_WARNING

    assert f'"{KERNEL_TCP_WARNING}"' in inspect.getsource(ipykernel.kernelapp)
    c = Config()
    exec(compile(KERNEL_CONFIG, "kernel_config.py", "exec"), {"c": c})  # as traitlets' config loader runs it
    logging_config = c.IPKernelApp.logging_config
    assert logging_config["handlers"]["console"]["filters"] == ["steerlab_quiet_tcp"]
    quiet = logging_config["filters"]["steerlab_quiet_tcp"]["()"]()

    def passes(message: str, level: int = logging.WARNING) -> bool:
        return bool(quiet.filter(logging.LogRecord("IPKernelApp", level, "kernelapp.py", 1, message, None, None)))

    assert not passes(KERNEL_TCP_WARNING + " All communication (including code and outputs) is sent in plain text")
    assert passes("Kernel is running over IPC.")
    assert passes("Starting the kernel at pid: 12", logging.INFO)
    assert passes(f"a user's note quoting: {KERNEL_TCP_WARNING}")
    assert passes("Failed to load connection file: 'kernel.json'", logging.ERROR)


def test_a_run_starts_its_kernel_without_the_tcp_warning(tmp_path, monkeypatch, capfd):
    """The runner's own papermill call (run_notebook -> papermill -> nbclient -> a real kernel), on a one-cell
    notebook in place of toy_sweep: the kernel's stderr (inherited, so captured here at the file descriptor) holds
    no unencrypted-TCP warning and does hold another warning the kernel's app logs (catches: the extra arguments not
    passed to papermill, or a filter that silences the kernel's log). The control, papermill without them, prints
    the warning: the check can fail."""
    import json

    import nbformat
    import papermill

    import lib.runner as runner

    cell = "import logging\nlogging.getLogger('IPKernelApp').warning('steerlab-other-kernel-warning')"
    one_cell = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)],
                                        metadata={"kernelspec": {"name": "python3", "language": "python",
                                                                   "display_name": "Python 3"}})
    real = papermill.execute_notebook
    calls = []

    def small_notebook(notebook, output, **kwargs):
        calls.append(kwargs)
        return real(one_cell, output, **kwargs)

    monkeypatch.setattr(papermill, "execute_notebook", small_notebook)
    run_dir = runner.run_notebook("toy_sweep", {}, out_root=tmp_path, progress_bar=False)
    err = capfd.readouterr().err
    assert json.loads((run_dir / "run.json").read_text())["status"] == "ok"
    assert calls[0]["extra_arguments"][0].startswith("--config=")
    assert "steerlab-other-kernel-warning" in err
    assert "without encryption" not in err

    real(one_cell, str(tmp_path / "control.ipynb"), kernel_name="python3", progress_bar=False)
    assert "Kernel is running over TCP without encryption" in capfd.readouterr().err


def test_a_dirty_run_keeps_its_diff_its_command_and_a_dirty_flag(tmp_path, monkeypatch):
    """run.json records the command that reruns it, the commit, a dirty flag, and beside it git.diff: the tracked
    changes and the untracked files' names from a real temp repo (issue "Corrections", requirement 7). Catches: the
    diff not written, untracked files left out, a clean tree marked dirty."""
    import functools
    import json
    import subprocess

    import papermill

    from lib import runner

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                              capture_output=True, text=True, check=True).stdout

    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q")
    (repo / "steps.py").write_text("scale = 1\n")
    git("add", "steps.py")
    git("commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD").strip()
    assert runner.git_state(repo) == (head, False, "")
    (repo / "steps.py").write_text("scale = 2\n")
    (repo / "scratch.py").write_text("x = 1\n")
    commit, dirty, diff = runner.git_state(repo)
    assert (commit, dirty) == (head, True)
    assert "-scale = 1" in diff and "+scale = 2" in diff and "# untracked: scratch.py" in diff
    # what a journal script records: the same state, with the differing files by name
    assert runner.tree_record(repo) == {"commit": head, "dirty": True, "differs": ["steps.py", "scratch.py"]}

    monkeypatch.setattr(runner, "git_state", functools.partial(runner.git_state, repo))
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: None)
    run_dir = runner.run_notebook("toy_sweep", {"n_samples": 32, "scale": 0.5}, out_root=tmp_path / "out",
                                  progress_bar=False)
    saved = json.loads((run_dir / "run.json").read_text())
    assert saved["git_commit"] == f"{head}-dirty" and saved["dirty"] is True and saved["status"] == "ok"
    assert saved["command"] == "./just run toy_sweep n_samples=32 scale=0.5" and saved["diff"] == "git.diff"
    assert (run_dir / "git.diff").read_text() == diff
    assert runner.rerun_command("x", {"layers": [1, 2], "out_dir": "y"}) == "./just run x 'layers=[1,2]'"
    git("add", "-A")
    git("commit", "-q", "-m", "second")
    clean_dir = runner.run_notebook("toy_sweep", {"n_samples": 16}, out_root=tmp_path / "out", progress_bar=False)
    clean = json.loads((clean_dir / "run.json").read_text())
    assert clean["dirty"] is False and "diff" not in clean and not (clean_dir / "git.diff").exists()


def test_journal_script_records_name_the_run_and_the_script(tmp_path, monkeypatch):
    """Catches run_reference reading another key than run.json's (e.g. "commit" for "git_commit") and script_record
    dropping the runs or the arguments it was given, or the command that runs it again."""
    from lib import runner

    (tmp_path / "run.json").write_text(json.dumps({"git_commit": "abc", "dirty": False, "command": "./just run x",
                                                   "status": "ok"}))
    assert runner.run_reference(tmp_path) == {"folder": str(tmp_path), "commit": "abc", "dirty": False,
                                              "command": "./just run x", "status": "ok"}
    monkeypatch.setattr(runner.sys, "argv", [str(runner.REPO_ROOT / "out/journal/x/rescore.py"), "lora=folder@1"])
    record = runner.script_record({"commit": "abc", "dirty": False, "differs": []}, [{"label": "lora"}])
    assert (record["script"], record["argv"], record["runs"]) == ("rescore.py", ["lora=folder@1"], [{"label": "lora"}])
    assert record["command"] == ".venv/bin/python out/journal/x/rescore.py lora=folder@1"
    assert record["versions"] == runner.library_versions()
