"""The Ray executor on a real Ray cluster built on this machine (ray.cluster_utils.Cluster: a head with no CPUs
and two one-CPU worker nodes on loopback), against the local executor: same tree and summary, a worker node
lost with a run in flight, Ctrl-C and resume, parallel Bayesian optimisation interrupted and resumed.

Runs in the default tier (about 2 minutes); `./just` installs Ray through the project's `ray` extra."""

from __future__ import annotations

import _thread
import csv
import json
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from lib.kits.executors import RayExecutor
from lib.kits.optimize import SearchSpace, gaussian_bump, run_search
from lib.runner import SweepFailed, sweep

# Fast failure detection, so a removed node is noticed in about a second rather than tens of seconds.
SYSTEM_CONFIG = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 300,
                 "health_check_failure_threshold": 3}
GRID = {"layer": [0, 1], "scale": [1.0, 2.0, -1.0]}
FIXED = {"fail_scale": -1.0}  # the two scale=-1.0 runs fail on purpose


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": SYSTEM_CONFIG})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    RayExecutor(address=cluster.address)  # connects this driver, shipping lib/ with the job
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # test-module objectives travel by value
    try:
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()


def read_summary(sweep_dir: Path, out_root: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["run_dir"] = str(Path(row["run_dir"]).relative_to(out_root))
    return rows


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_ray_sweep_gives_the_local_tree_and_summary_with_failures_reported(cluster, tmp_path):
    _, workers = cluster
    runs = {}
    for engine in ("local", "ray"):
        with pytest.raises(SweepFailed, match="2 of 6 runs failed"):
            sweep("toy_sweep", GRID, fixed=FIXED, out_root=tmp_path / engine,
                  executor=RayExecutor(scratch_dir=str(tmp_path / "scratch")) if engine == "ray" else "local",
                  progress=False)
        runs[engine] = tmp_path / engine / "toy_sweep"
    sweep_dir = next((runs["local"] / "sweeps").iterdir()).name
    local = read_summary(runs["local"] / "sweeps" / sweep_dir, tmp_path / "local")
    remote = read_summary(runs["ray"] / "sweeps" / sweep_dir, tmp_path / "ray")
    assert local == remote and len(local) == 6
    assert [r["status"] for r in local] == ["ok", "ok", "failed"] * 2
    assert all("deliberate failure at scale=-1.0" in r["error"] for r in local if r["status"] == "failed")
    assert float(local[0]["main"]) != float(local[0]["baseline"])
    assert tree(runs["local"]) == tree(runs["ray"])  # executed notebooks, run.json, results.json, figures, heatmaps
    node_ids = {w.node_id for w in workers}
    for run_dir in (p for p in runs["ray"].iterdir() if p.name != "sweeps"):
        local_dir = runs["local"] / run_dir.name
        record = json.loads((run_dir / "run.json").read_text())
        assert record["worker"]["node_id"] in node_ids  # ran on a worker node, not in this process
        assert record["parameters"]["out_dir"] == str(run_dir)  # the worker's scratch path rewritten
        assert record["status"] == json.loads((local_dir / "run.json").read_text())["status"]
        if record["status"] == "ok":
            assert (run_dir / "results.json").read_bytes() == (local_dir / "results.json").read_bytes()
            assert (run_dir / "effect_curve.png").stat().st_size > 5000
        notebook = (run_dir / "toy_sweep.ipynb").read_text()
        assert str(run_dir) in notebook and str(tmp_path / "scratch") not in notebook
    assert not any((tmp_path / "scratch").iterdir())  # workers clean their scratch folders


def test_worker_node_lost_with_a_run_in_flight_still_gives_every_run_once(cluster, tmp_path):
    head, workers = cluster
    doomed, scratch = workers[1], tmp_path / "scratch"
    scratch.mkdir()
    removed: list[str] = []

    def remove_when_busy() -> None:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            busy = [p for p in scratch.glob(f"steerlab-{doomed.node_id[:12]}-*/toy_sweep/*/run.json")
                    if json.loads(p.read_text() or "{}").get("status") == "running"]
            if busy:
                time.sleep(0.5)  # well inside the notebook's sleep
                head.remove_node(doomed, allow_graceful=False)
                removed.append(busy[0].parent.name)
                return
            time.sleep(0.1)

    remover = threading.Thread(target=remove_when_busy)
    remover.start()
    grid = {"scale": [1.0, 2.0, 3.0, 4.0]}
    sweep_dir = sweep("toy_sweep", grid, fixed={"sleep_seconds": 3.0}, out_root=tmp_path / "out",
                      executor=RayExecutor(scratch_dir=str(scratch), max_retries=3), progress=False)
    remover.join()
    workers[1] = head.add_node(num_cpus=1)  # a replacement (from the main thread: Ray sets signal handlers)
    assert removed, "no run was in flight on the worker node to remove"
    rows = read_summary(sweep_dir, tmp_path / "out")
    assert sorted(float(r["scale"]) for r in rows) == grid["scale"] and all(r["status"] == "ok" for r in rows)
    run_dirs = [p for p in (tmp_path / "out" / "toy_sweep").iterdir() if p.name != "sweeps"]
    assert sorted(p.name for p in run_dirs) == sorted(r["run_dir"].split("/")[-1] for r in rows)
    lost = json.loads((tmp_path / "out" / "toy_sweep" / removed[0] / "run.json").read_text())
    assert lost["status"] == "ok" and lost["worker"]["node_id"] != doomed.node_id  # re-run elsewhere, finished
    leftovers = list(scratch.glob(f"steerlab-{doomed.node_id[:12]}-*/toy_sweep/{removed[0]}/run.json"))
    assert [json.loads(p.read_text())["status"] for p in leftovers] == ["running"]  # the killed attempt


def interrupt_when(condition, timeout: float = 40) -> threading.Thread:
    """Ctrl-C for the main thread (KeyboardInterrupt, as from a terminal) once `condition()` holds."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                _thread.interrupt_main()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_ctrl_c_cancels_runs_in_flight_keeps_finished_ones_and_the_sweep_resumes(cluster, tmp_path):
    out = tmp_path / "out" / "toy_sweep"
    grid = {"scale": [1.0, 2.0, 3.0, 4.0]}
    fixed = {"sleep_seconds": 1.0}

    def finished() -> list[str]:
        return sorted(p.parent.name for p in out.glob("*/run.json") if json.loads(p.read_text())["status"] == "ok")

    watcher = interrupt_when(lambda: len(finished()) >= 1)
    with pytest.raises(KeyboardInterrupt):
        sweep("toy_sweep", grid, fixed=fixed, out_root=tmp_path / "out", executor=RayExecutor(), progress=False)
    watcher.join()
    kept = finished()
    assert 1 <= len(kept) < 4
    started = {name: json.loads((out / name / "run.json").read_text())["started"] for name in kept}
    time.sleep(2.5)  # a cancelled task that still ran would land by now
    assert finished() == kept
    summary = next((out / "sweeps").iterdir()) / "summary.csv"
    assert len(read_summary(summary.parent, tmp_path / "out")) == len(kept)  # what finished, written on Ctrl-C

    sweep("toy_sweep", grid, fixed=fixed, out_root=tmp_path / "out", executor=RayExecutor(), progress=False)
    assert len(finished()) == 4
    assert all(json.loads((out / name / "run.json").read_text())["started"] == started[name] for name in kept)
    assert len(read_summary(summary.parent, tmp_path / "out")) == 4


SPACE = SearchSpace(["early", "late"], [(-1.0, 2.0), (0.0, 4.0)])
BUMP = gaussian_bump({"early": 0.4, "late": 2.5}, width=0.8)
PARALLEL_RUN = {"method": "bo", "n_iterations": 8, "n_initial_points": 3, "seed": 5, "n_parallel": 2,
                "progress": False}


def test_parallel_bo_on_ray_resumes_after_ctrl_c_with_its_history_intact(cluster, tmp_path):
    path, calls = tmp_path / "history.json", tmp_path / "calls.jsonl"

    def slow_bump(point: dict[str, float]) -> float:
        with open(calls, "a") as handle:  # the workers share this disk here; only the test reads it
            handle.write(json.dumps(point) + "\n")
        time.sleep(0.4)
        return BUMP(point)

    def recorded() -> int:
        return len(json.loads(path.read_text())["history"]) if path.exists() else 0

    watcher = interrupt_when(lambda: recorded() >= 3)
    with pytest.raises(KeyboardInterrupt):
        run_search(slow_bump, SPACE, history_path=path, executor=RayExecutor(), **PARALLEL_RUN)
    watcher.join()
    before = json.loads(path.read_text())
    assert 3 <= len(before["history"]) < 8 and before["settings"]["n_parallel"] == 2
    assert before["pending"], "points in flight at Ctrl-C are recorded as pending"
    time.sleep(1)
    calls_before = len(calls.read_text().splitlines())

    result = run_search(slow_bump, SPACE, history_path=path, executor=RayExecutor(), resume=True, **PARALLEL_RUN)
    history = result.history
    assert history[:len(before["history"])] == before["history"]  # nothing finished is lost or changed
    assert sorted(r["iteration"] for r in history) == list(range(8))
    assert len({tuple(r["point"].values()) for r in history}) == 8  # no evaluation repeated
    assert len(calls.read_text().splitlines()) - calls_before == 8 - len(before["history"])  # only the missing ones
    pending_points = [r["point"] for r in before["pending"]]
    assert all(p in [r["point"] for r in history] for p in pending_points)  # in-flight points re-run, not re-drawn
    assert max(r["told_before"] for r in history) < 8 and json.loads(path.read_text())["pending"] == []
    assert all(r["score"] == BUMP(r["point"]) for r in history)
    # Resuming once more replays every proposal (checked point by point) and runs nothing.
    again = run_search(slow_bump, SPACE, history_path=path, executor=RayExecutor(), resume=True, **PARALLEL_RUN)
    assert again.history == history and len(calls.read_text().splitlines()) - calls_before == 8 - len(before["history"])
