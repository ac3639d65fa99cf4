"""Executors: where the runs of a sweep and the evaluations of a parallel BO search execute.

One seam, two engines, picked by one setting (`--executor`, the `executor=` argument, or the
`STEERLAB_EXECUTOR` environment variable):

- `local` (the default, needs no Ray): runs execute on this machine, one at a time in this process
  (the runner's behaviour before executors existed), or `local:N` for N subprocesses.
- `ray`: every run is a Ray task (docs.ray.io, "Tasks") on the cluster named by `RAY_ADDRESS` (or the
  one `ray start` made on this machine), or `ray:<address>`. A task asks Ray for the resources its
  notebook declares (`resources` on each config in lib/experiments/<notebook>.py), is retried a bounded number of
  times when its worker or node dies (Ray's `max_retries`, which covers system failures only; an
  error raised by the notebook is not retried: it would fail the same way again), and sends its
  files back to the driver as bytes, so a cluster without a shared filesystem works.

`TaskPool` keeps as many tasks in flight as the cluster has room for, reports each one as it finishes,
shows one progress bar with finished / running / failed counts, and cancels whatever is in flight
when the driver stops (Ctrl-C), so finished results are kept and a re-run resumes.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXECUTOR_ENV = "STEERLAB_EXECUTOR"
RAY_INSTALL_HINT = "pip install '.[ray]'  (or: pip install 'ray[default]>=2.40')"
DEFAULT_RESOURCES: dict[str, float] = {"num_cpus": 1}
# Ray's per-task options that are resources; anything else in a declaration is a custom resource.
RAY_RESOURCE_KEYS = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}


class TaskError(RuntimeError):
    """A task failed on the executor (its error raised, or its worker/node lost beyond the retries)."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise ImportError(f"the ray executor needs Ray, which is not installed: {RAY_INSTALL_HINT}") from error
    return ray


def ray_options(resources: dict[str, float]) -> dict[str, Any]:
    """A resource declaration as `.options(...)` keywords: num_cpus, num_gpus, memory (bytes) pass through,
    any other key is a custom resource (e.g. {"A100": 1} for a node started with --resources='{"A100": 4}')."""
    options: dict[str, Any] = {}
    custom: dict[str, float] = {}
    for key, value in resources.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ValueError(f"resources[{key!r}]={value!r} must be a non-negative number")
        if key in RAY_RESOURCE_KEYS:
            options[key] = int(value) if key == "memory" else value
        else:
            custom[key] = value
    if custom:
        options["resources"] = custom
    return options


def parse_resources(text: str) -> dict[str, float]:
    """`num_gpus=1,num_cpus=8,memory=40e9` (the CLI's --resources) -> a declaration."""
    resources: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        try:
            resources[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"--resources item {item!r} is not key=number (e.g. num_gpus=1,num_cpus=8,memory=40e9)")
    return resources


class Executor:
    """The seam. `submit` starts fn(*args) somewhere and returns a handle; `wait` returns the handles that
    have finished (blocking up to `timeout`); `result` returns a finished task's value or raises TaskError."""

    name = "executor"
    ships_results = False  # True: runs execute on other machines and send their files back as bytes

    def submit(self, fn: Callable[..., Any], args: tuple, resources: dict[str, float]) -> Any:
        raise NotImplementedError

    def wait(self, handles: list[Any], timeout: float | None) -> list[Any]:
        raise NotImplementedError

    def result(self, handle: Any) -> Any:
        raise NotImplementedError

    def cancel(self, handles: list[Any]) -> None:
        raise NotImplementedError

    def slots(self, resources: dict[str, float]) -> int:
        """How many tasks with these resources can run at once."""
        raise NotImplementedError

    def close(self) -> None:
        pass


@dataclass(eq=False)
class _Deferred:
    """An in-process task: runs when waited on, so this process does one at a time, in submission order."""

    fn: Callable[..., Any]
    args: tuple
    done: bool = False
    value: Any = None
    error: BaseException | None = None

    def run(self) -> None:
        try:
            self.value = self.fn(*self.args)
        except Exception as error:  # KeyboardInterrupt passes: Ctrl-C stops the driver
            self.error = error
        self.done = True


class LocalExecutor(Executor):
    """This machine. workers=1: in this process, one run after another (exceptions and tracebacks as before);
    workers>1: a pool of spawned subprocesses (the objective or task function must be picklable)."""

    name = "local"

    def __init__(self, workers: int = 1) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers={workers!r} must be an int >= 1")
        self.workers = workers
        self._pool: futures.ProcessPoolExecutor | None = None
        if workers > 1:
            import multiprocessing

            self._pool = futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, fn: Callable[..., Any], args: tuple, resources: dict[str, float]) -> Any:
        return self._pool.submit(fn, *args) if self._pool else _Deferred(fn, args)

    def wait(self, handles: list[Any], timeout: float | None) -> list[Any]:
        if self._pool is None:
            pending = next((h for h in handles if not h.done), None)
            if pending is not None:
                pending.run()
            return [h for h in handles if h.done]
        done, _ = futures.wait(handles, timeout=timeout, return_when=futures.FIRST_COMPLETED)
        return [h for h in handles if h in done]

    def result(self, handle: Any) -> Any:
        error = handle.error if isinstance(handle, _Deferred) else handle.exception()
        if error is not None:
            raise TaskError(f"{type(error).__name__}: {error}") from error
        return handle.value if isinstance(handle, _Deferred) else handle.result()

    def cancel(self, handles: list[Any]) -> None:
        for handle in handles:
            if not isinstance(handle, _Deferred):
                handle.cancel()  # a subprocess task already running finishes; its result is dropped

    def slots(self, resources: dict[str, float]) -> int:
        return self.workers

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


class RayExecutor(Executor):
    """Each task a Ray task. `address` (else `RAY_ADDRESS`, else a cluster started with `ray start` on this
    machine, else a fresh local one) picks the cluster. `max_retries` bounds the re-runs of a task whose
    worker or node died. `ship_code` sends this checkout's `lib/` with the job (Ray `py_modules`), so workers
    run the driver's code; their Python environment must still have the dependencies. Both apply when this
    executor connects; after your own `ray.init(...)` pass `runtime_env={"py_modules": [...]}` there instead."""

    name = "ray"
    ships_results = True

    def __init__(self, address: str | None = None, *, max_retries: int = 3, ship_code: bool = True,
                 runtime_env: dict[str, Any] | None = None, scratch_dir: str | None = None,
                 init_kwargs: dict[str, Any] | None = None) -> None:
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries={max_retries!r} must be an int >= 0")
        ray = import_ray()
        self.ray = ray
        self.max_retries = max_retries
        self.scratch_dir = scratch_dir
        env = dict(runtime_env or {})
        if ship_code:
            env.setdefault("py_modules", [str(Path(__file__).resolve().parent)])
        if not ray.is_initialized():  # Ray uploads local code only for a whole job, so at connection time
            address = address or os.environ.get("RAY_ADDRESS") or None
            ray.init(address=address, runtime_env=env or None, log_to_driver=False, **(init_kwargs or {}))
        # else: connected by the caller's own ray.init, whose runtime_env (if any) the tasks use
        self._remote = ray.remote(_call)
        self._objects: dict[int, Any] = {}  # fn -> object ref, so a closure is serialised once per search

    def _ref(self, fn: Callable[..., Any]) -> Any:
        key = id(fn)
        if key not in self._objects:
            self._objects[key] = (fn, self.ray.put(fn))  # keep fn alive so its id stays unique
        return self._objects[key][1]

    def submit(self, fn: Callable[..., Any], args: tuple, resources: dict[str, float]) -> Any:
        options = {"max_retries": self.max_retries, "retry_exceptions": False, **ray_options(resources)}
        # functions (the task, a BO objective) go to the object store once, not with every task
        args = tuple(self._ref(arg) if callable(arg) else arg for arg in args)
        return self._remote.options(**options).remote(self._ref(fn), *args)

    def wait(self, handles: list[Any], timeout: float | None) -> list[Any]:
        ready, _ = self.ray.wait(handles, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = self.ray.wait(handles, num_returns=len(handles), timeout=0)
        return ready

    def result(self, handle: Any) -> Any:
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.RayTaskError as error:  # the task's own exception, with the remote traceback
            cause = error.cause if getattr(error, "cause", None) is not None else error
            raise TaskError(f"{type(cause).__name__}: {cause}") from error
        except self.ray.exceptions.RayError as error:  # worker or node lost after the retries, cancelled...
            raise TaskError(f"{type(error).__name__} (after up to {self.max_retries} retries): {error}") from error

    def cancel(self, handles: list[Any]) -> None:
        for handle in handles:
            with contextlib.suppress(Exception):  # already finished or its node is gone: nothing left to stop
                self.ray.cancel(handle, force=True)

    def slots(self, resources: dict[str, float]) -> int:
        total = self.ray.cluster_resources()
        options = ray_options(resources)
        need = {RAY_RESOURCE_KEYS[k]: v for k, v in options.items() if k in RAY_RESOURCE_KEYS}
        need |= options.get("resources", {})
        counts = [math.floor(total.get(key, 0) / value) for key, value in need.items() if value > 0]
        return min(counts) if counts else max(1, int(total.get("CPU", 1)))

    def check_fits(self, resources: dict[str, float]) -> None:
        """A task asking for what no node has would wait forever: say so before the sweep starts."""
        total = self.ray.cluster_resources()
        options = ray_options(resources)
        need = {RAY_RESOURCE_KEYS[k]: v for k, v in options.items() if k in RAY_RESOURCE_KEYS}
        need |= options.get("resources", {})
        short = {key: value for key, value in need.items() if value > 0 and total.get(key, 0) < value}
        if short:
            raise ValueError(f"each run asks for {short} but the Ray cluster has {total}; change the notebook's "
                             "resources (config `resources`, or --resources num_gpus=...,num_cpus=...) or add nodes")


def get_executor(spec: str | Executor | None = None) -> Executor:
    """`local`, `local:N`, `ray` or `ray:<address>`; None reads STEERLAB_EXECUTOR (default `local`)."""
    if isinstance(spec, Executor):
        return spec
    spec = spec or os.environ.get(EXECUTOR_ENV) or "local"
    kind, _, arg = spec.partition(":")
    if kind == "local":
        if arg and not arg.isdigit():
            raise ValueError(f"executor={spec!r}: write local or local:N with N worker processes")
        return LocalExecutor(int(arg) if arg else 1)
    if kind == "ray":
        return RayExecutor(address=arg or None)
    raise ValueError(f"executor={spec!r}; choose 'local', 'local:N', 'ray' or 'ray:<address>' "
                     f"(also settable with {EXECUTOR_ENV})")


@dataclass
class TaskPool:
    """Up to `limit` tasks (default: as many as fit the cluster) in flight on `executor`, one progress bar.

    Use as a context manager: leaving it by an exception (Ctrl-C included) cancels every task in flight."""

    executor: Executor
    resources: dict[str, float]
    total: int
    initial: int = 0
    desc: str = "runs"
    progress: bool = True
    limit: int | None = None
    poll_seconds: float = 0.5  # wake up this often so Ctrl-C reaches the driver while it waits
    in_flight: dict[Any, tuple[Any, float]] = field(default_factory=dict)  # handle -> (key, submit time)
    finished: int = 0
    failed: int = 0
    note: dict[str, Any] = field(default_factory=dict)  # more to show beside the counts, e.g. the best score

    def __enter__(self) -> TaskPool:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, initial=self.initial, desc=self.desc, disable=not self.progress)
        self._show()
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if self.in_flight:
            self.executor.cancel(list(self.in_flight))
            self.bar.write(f"[cancelled] {len(self.in_flight)} task(s) in flight; finished results are kept")
            self.in_flight.clear()
        self.bar.close()

    def free(self) -> int:
        slots = self.limit if self.limit is not None else max(1, self.executor.slots(self.resources))
        return max(0, slots - len(self.in_flight))

    def submit(self, key: Any, fn: Callable[..., Any], *args: Any) -> None:
        self.in_flight[self.executor.submit(fn, args, self.resources)] = (key, time.perf_counter())
        self._show()

    def done(self, timeout: float | None = None) -> Iterator[tuple[Any, bool, Any]]:
        """Wait for at least one task (or `timeout`), then yield (key, ok, value or TaskError) per finished one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ready: list[Any] = []
        while self.in_flight and not ready:
            wait = self.poll_seconds if deadline is None else min(self.poll_seconds, deadline - time.monotonic())
            ready = self.executor.wait(list(self.in_flight), max(wait, 0.0))
            if deadline is not None and time.monotonic() >= deadline:
                break
        for handle in ready:
            key, _ = self.in_flight.pop(handle)
            try:
                yield key, True, self.executor.result(handle)
            except TaskError as error:
                yield key, False, error

    def count(self, failed: bool) -> None:
        """Book one run as finished (or failed) on the bar."""
        self.failed += failed
        self.finished += not failed
        self.bar.update(1)
        self._show()

    def write(self, text: str) -> None:
        self.bar.write(text)

    def _show(self) -> None:
        if hasattr(self, "bar"):
            self.bar.set_postfix({"finished": self.initial + self.finished, "running": len(self.in_flight),
                                  "failed": self.failed, **self.note}, refresh=True)
