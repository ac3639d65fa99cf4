"""The executor seam without a cluster: the local executor, resource declarations, shipped results written
atomically into the run folder, and parallel Bayesian optimisation (constant liar) that resumes exactly."""

from __future__ import annotations

import builtins
import json

import pytest
from conftest import NOTEBOOKS

from lib.experiments import config_class
from lib.kits.executors import LocalExecutor, TaskPool, get_executor, parse_resources, ray_options
from lib.kits.optimize import SearchSpace, gaussian_bump, run_search
from lib.runner import notebook_resources, write_shipped

SPACE = SearchSpace(["early", "late"], [(-1.0, 2.0), (0.0, 4.0)])
BUMP = gaussian_bump({"early": 0.4, "late": 2.5}, width=0.8)
RUN = {"method": "bo", "n_iterations": 10, "n_initial_points": 4, "seed": 3, "progress": False}


def square(x: int) -> int:
    return x * x


def fails(x: int) -> int:
    raise ValueError(f"bad {x}")


@pytest.mark.parametrize("executor", [LocalExecutor(), LocalExecutor(2)], ids=["in-process", "2-processes"])
def test_task_pool_reports_every_task_once_with_failures(executor):
    results = {}
    with TaskPool(executor, {"num_cpus": 1}, total=6, progress=False) as pool:
        queue = list(range(6))
        while queue or pool.in_flight:
            while queue and pool.free():
                x = queue.pop(0)
                pool.submit(x, fails if x == 3 else square, x)
            for key, ok, value in pool.done():
                results[key] = value if ok else str(value)
                pool.count(failed=not ok)
    assert results == {0: 0, 1: 1, 2: 4, 3: "ValueError: bad 3", 4: 16, 5: 25}
    assert (pool.finished, pool.failed) == (5, 1)
    executor.close()


def test_get_executor_and_resource_declarations(monkeypatch):
    assert get_executor().name == "local" and get_executor("local:3").workers == 3
    monkeypatch.setenv("STEERLAB_EXECUTOR", "local:2")
    assert get_executor(None).workers == 2
    with pytest.raises(ValueError, match="'local', 'local:N', 'ray'"):
        get_executor("slurm")
    with pytest.raises(ValueError, match="local:N"):
        get_executor("local:x")
    assert parse_resources("num_gpus=1, num_cpus=8,memory=40e9,A100=1") == {"num_gpus": 1, "num_cpus": 8,
                                                                            "memory": 40e9, "A100": 1}
    with pytest.raises(ValueError, match="key=number"):
        parse_resources("num_gpus")
    assert ray_options({"num_gpus": 1, "memory": 4e9, "A100": 1}) == {"num_gpus": 1, "memory": 4_000_000_000,
                                                                      "resources": {"A100": 1}}
    with pytest.raises(ValueError, match="num_gpus"):
        ray_options({"num_gpus": -1})
    assert all(notebook_resources(name)["num_cpus"] >= 1 for name in NOTEBOOKS)
    with pytest.raises(ValueError, match="n_parallel"):
        config_class("steering_bo")(n_parallel=0)
    with pytest.raises(ValueError, match="executor='slurm'"):
        config_class("steering_bo")(executor="slurm")
    assert notebook_resources("grpo_math", {"num_gpus": 1}) == {"num_cpus": 2, "num_gpus": 1}


def test_missing_ray_names_the_install_command(monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ImportError, match=r"pip install '\.\[ray\]'"):
        get_executor("ray")


def test_shipped_run_is_written_into_the_run_folder_with_run_json_last(tmp_path, monkeypatch):
    worker_dir = "/scratch/steerlab-abc/toy_sweep/scale=2.0"
    run_dir = tmp_path / "toy_sweep" / "scale=2.0"
    record = {"status": "ok", "parameters": {"out_dir": worker_dir}}
    shipped = {"worker_dir": worker_dir, "error": None, "files": {
        "run.json": json.dumps(record).encode(), "results.json": json.dumps({"path": f"{worker_dir}/a.png"}).encode(),
        "figs/a.png": b"\x89PNG" + worker_dir.encode()}}
    order = []
    import lib.io

    real = lib.io.os.replace
    monkeypatch.setattr(lib.io.os, "replace", lambda a, b: order.append(b.name) or real(a, b))
    assert write_shipped(run_dir, shipped) == "ok"
    assert order[-1] == "run.json" and set(order) == {"run.json", "results.json", "a.png"}  # all via os.replace
    assert json.loads((run_dir / "run.json").read_text())["parameters"]["out_dir"] == str(run_dir)
    assert json.loads((run_dir / "results.json").read_text())["path"] == f"{run_dir}/a.png"
    assert (run_dir / "figs" / "a.png").read_bytes() == b"\x89PNG" + worker_dir.encode()  # binary left alone
    assert not list(run_dir.rglob(".*tmp*"))
    with pytest.raises(ValueError, match="outside"):
        write_shipped(tmp_path / "x", {**shipped, "files": {"../../evil.json": b"{}"}})
    failed = {**shipped, "error": "ValueError: boom", "files": {"run.json": json.dumps({"status": "running"}).encode()}}
    assert write_shipped(tmp_path / "y", failed) == "failed"
    assert json.loads((tmp_path / "y" / "run.json").read_text())["error"] == "ValueError: boom"


def points_and_scores(history):
    return [(tuple(r["point"].values()), r["score"]) for r in history]


def test_executor_with_one_in_flight_equals_the_sequential_search(tmp_path):
    sequential = run_search(BUMP, SPACE, history_path=tmp_path / "a.json", **RUN).history
    through_executor = run_search(BUMP, SPACE, history_path=tmp_path / "b.json", executor="local", **RUN).history
    assert points_and_scores(through_executor) == points_and_scores(sequential)
    assert all(set(r) == {"point", "score", "seconds", "iteration"} for r in json.loads(
        (tmp_path / "b.json").read_text())["history"])


def test_parallel_bo_proposes_k_points_and_resumes_exactly(tmp_path):
    """In this process the k=2 tasks finish in submission order, so the search is deterministic: a crash and
    resume must give the uninterrupted search point for point, re-running only the points that were pending."""
    run = {**RUN, "n_parallel": 2}
    full = run_search(BUMP, SPACE, history_path=tmp_path / "full.json", **run).history
    assert [(r["batch"], r["told_before"]) for r in full[:3]] == [(0, 0), (0, 0), (1, 1)]  # ask(n_points=2), then 1
    assert len({tuple(r["point"].values()) for r in full}) == 10
    sequential = run_search(BUMP, SPACE, history_path=tmp_path / "seq.json", **RUN).history
    assert points_and_scores(full) != points_and_scores(sequential)  # the lies change the proposals

    path, calls = tmp_path / "part.json", []

    def crash_after_six(point):
        if len(calls) == 6:
            raise RuntimeError("simulated crash")
        calls.append(point)
        return BUMP(point)

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_search(crash_after_six, SPACE, history_path=path, **run)
    saved = json.loads(path.read_text())
    assert len(saved["history"]) == 6 and [r["iteration"] for r in saved["pending"]] == [6, 7]
    resumed_calls = []
    result = run_search(lambda p: resumed_calls.append(p) or BUMP(p), SPACE, history_path=path, resume=True, **run)
    assert resumed_calls[:2] == [r["point"] for r in saved["pending"]] and len(resumed_calls) == 4
    assert result.history[:6] == saved["history"] and points_and_scores(result.history) == points_and_scores(full)
    assert json.loads(path.read_text())["pending"] == []
    with pytest.raises(ValueError, match="n_parallel"):
        run_search(BUMP, SPACE, history_path=path, resume=True, **{**run, "n_parallel": 3})
    with pytest.raises(ValueError, match="n_parallel"):
        run_search(BUMP, SPACE, history_path=tmp_path / "z.json", **{**run, "n_parallel": 0})
    tampered = json.loads(path.read_text())
    tampered["history"][7]["point"]["late"] += 0.5
    path.write_text(json.dumps(tampered))
    with pytest.raises(RuntimeError, match="replaying evaluation"):
        run_search(BUMP, SPACE, history_path=path, resume=True, **run)


def test_parallel_random_search_resumes_exactly(tmp_path):
    run = {**RUN, "method": "random", "n_parallel": 3}
    full = run_search(BUMP, SPACE, history_path=tmp_path / "full.json", **run).history
    run_search(BUMP, SPACE, history_path=tmp_path / "part.json", **{**run, "n_iterations": 4})
    resumed = run_search(BUMP, SPACE, history_path=tmp_path / "part.json", resume=True, **run).history
    assert points_and_scores(resumed) == points_and_scores(full)
