"""The Ray executor against the local one, on a Ray cluster made on this machine; writes out/bench/ray.{md,json}.

A head with no CPUs and two one-CPU worker nodes on loopback (ray.cluster_utils.Cluster), as in tests/test_ray.py.
Measured side by side in one process:
1. dispatch overhead per task: a no-op function through each executor, one task in flight at a time;
2. overhead per notebook run: the toy notebook (no work) run here vs run on a worker and shipped back as bytes;
3. wall-time speedup of an 8-run CPU-bound sweep (toy notebook, `work` matrix products, one BLAS thread per
   run) on the 2 worker nodes vs the local executor running one after another in this process.
On a 2-core machine the ceiling of (3) is 2x, less whatever the driver, Ray and the kernels' start-up take.

    .venv/bin/python benchmarks/ray_executor.py      # about 4 minutes; BENCH_RUNS=8 BENCH_WORK_SECONDS=8
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from ray.cluster_utils import Cluster
from threadpoolctl import threadpool_limits

from lib.io import REPO_ROOT
from lib.kits.executors import LocalExecutor, RayExecutor, TaskPool
from lib.runner import execute_shipped, git_commit, notebook_path, run_notebook, sweep, validate, write_shipped

RUNS = int(os.environ.get("BENCH_RUNS", "8"))
WORK_SECONDS = float(os.environ.get("BENCH_WORK_SECONDS", "8"))
NOOP_TASKS = 40
NOTEBOOK_RUNS = 7  # alternated here / on a worker: the spread of the pair ratios is reported


def noop(x: int) -> int:
    return x


def per_task_seconds(executor: object, n: int) -> float:
    start = time.perf_counter()
    with TaskPool(executor, {"num_cpus": 1}, total=n, limit=1, progress=False) as pool:
        for i in range(n):
            pool.submit(i, noop, i)
            for _ in pool.done():
                pool.count(failed=False)
    return (time.perf_counter() - start) / n


def work_per_second() -> float:
    """Matrix products per second on one thread, as the toy notebook does them."""
    rng = np.random.default_rng(0)
    matrix, product = rng.normal(size=(256, 256)) / 16, np.eye(256)
    with threadpool_limits(1):
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < 2.0:
            product = np.tanh(product @ matrix)
            count += 1
    return count / (time.perf_counter() - start)


def notebook_overheads(executor: RayExecutor, tmp: Path) -> tuple[list[float], list[float]]:
    """Seconds per toy run (no work) here, and on a worker with its files shipped back and written."""
    here, remote = [], []
    path = notebook_path("toy_sweep")
    source, commit = path.read_text(), git_commit()
    for i in range(NOTEBOOK_RUNS):
        overrides = {"seed": i}
        start = time.perf_counter()
        run_notebook("toy_sweep", overrides, out_root=tmp / "here", progress_bar=False)
        here.append(time.perf_counter() - start)
        resolved, _ = validate("toy_sweep", overrides)
        start = time.perf_counter()
        with TaskPool(executor, {"num_cpus": 1}, total=1, limit=1, progress=False) as pool:
            pool.submit(i, execute_shipped, "toy_sweep", source, overrides, resolved, commit, None)
            for _, ok, shipped in pool.done():
                assert ok and write_shipped(tmp / "remote" / "toy_sweep" / f"seed={i}", shipped) == "ok"
        remote.append(time.perf_counter() - start)
    return here, remote


def main() -> None:
    rate = work_per_second()
    work = int(rate * WORK_SECONDS)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        executor = RayExecutor(address=cluster.address)
        per_task_seconds(executor, 5)  # warm the workers and the code upload
        local_task = per_task_seconds(LocalExecutor(), NOOP_TASKS)
        ray_task = per_task_seconds(executor, NOOP_TASKS)
        with tempfile.TemporaryDirectory() as tmp:
            here, remote = notebook_overheads(executor, Path(tmp))
            grid = {"seed": list(range(RUNS))}
            start = time.perf_counter()
            sweep("toy_sweep", grid, fixed={"work": work}, out_root=Path(tmp) / "local", executor="local")
            local_wall = time.perf_counter() - start
            start = time.perf_counter()
            sweep("toy_sweep", grid, fixed={"work": work}, out_root=Path(tmp) / "ray", executor=executor)
            ray_wall = time.perf_counter() - start
            same = all((Path(tmp) / "local" / "toy_sweep" / f"seed={s}_work={work}" / "results.json").read_bytes() ==
                       (Path(tmp) / "ray" / "toy_sweep" / f"seed={s}_work={work}" / "results.json").read_bytes()
                       for s in range(RUNS))
    finally:
        ray.shutdown()
        cluster.shutdown()

    results = {
        "cpus": os.cpu_count(), "ray": ray.__version__, "work_per_second": rate, "work": work,
        "noop_task_ms": {"local": local_task * 1e3, "ray": ray_task * 1e3},
        "toy_run_seconds": {"local": here, "ray": remote},
        "sweep": {"runs": RUNS, "local_seconds": local_wall, "ray_seconds": ray_wall,
                  "speedup": local_wall / ray_wall, "results_identical": same},
    }
    here_m, remote_m = statistics.median(here), statistics.median(remote)
    pair_ratios = [r / h for h, r in zip(here, remote, strict=True)]  # alternated: run i here, then run i on ray
    lines = [
        f"Ray executor vs local, {time.strftime('%Y-%m-%d %H:%M')}; Ray {ray.__version__} cluster on this machine "
        f"({os.cpu_count()} cores): a head with no CPUs and two one-CPU worker nodes on loopback.",
        "",
        "| measure | local | ray | ray - local | ratio (pair ratios min-max) |",
        "|---|---|---|---|---|",
        f"| no-op task, one in flight (ms per task, {NOOP_TASKS} tasks) | {local_task * 1e3:.3f} | "
        f"{ray_task * 1e3:.2f} | {(ray_task - local_task) * 1e3:.2f} | {ray_task / local_task:.0f}x |",
        f"| toy notebook run, no work (s per run, median of {NOTEBOOK_RUNS}; ray: on a worker, files shipped back) | "
        f"{here_m:.2f} | {remote_m:.2f} | {remote_m - here_m:+.2f} | {statistics.median(pair_ratios):.2f}x "
        f"({min(pair_ratios):.2f}-{max(pair_ratios):.2f}) |",
        f"| {RUNS}-run CPU-bound sweep, ~{WORK_SECONDS:.0f} s of one-thread work per run (wall s; local: one at a "
        f"time here, ray: 2 worker nodes) | {local_wall:.1f} | {ray_wall:.1f} | {ray_wall - local_wall:+.1f} | "
        f"speedup {local_wall / ray_wall:.2f}x (one sweep each) |",
        "",
        f"Per-run results identical between the two sweeps: {same}. The ceiling of the speedup here is 2x (2 cores); "
        "a run's fixed cost (kernel start, imports: the toy row) is paid on each worker too.",
    ]
    out = REPO_ROOT / "out" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray.md").write_text("\n".join(lines) + "\n")
    (out / "ray.json").write_text(json.dumps(results, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
