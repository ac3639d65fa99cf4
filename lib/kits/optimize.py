"""Resumable Bayesian optimisation of a few continuous knobs, e.g. per-layer-group steering weights.

Why BO: one evaluation of a steering configuration costs minutes of generation and scoring, and there
are only a handful of knobs; that is the regime where a Gaussian-process surrogate with expected
improvement reaches a good optimum in far fewer evaluations than grid or random search (Snoek,
Larochelle & Adams 2012, "Practical Bayesian Optimization of Machine Learning Algorithms"; EI from
Jones, Schonlau & Welch 1998). The optimiser is scikit-optimize's ask/tell `skopt.Optimizer`
(scikit-optimize.github.io); `method="random"` is the same-budget random-search baseline.

Every finished evaluation is written at once, atomically, to a history JSON. A killed search resumes
from it by replaying the recorded evaluations into a fresh optimiser with the same seed: that restores
the random state and the surrogate exactly, so the resumed search proposes the very points the
uninterrupted one would have (checked point by point during the replay). Figures are drawn from the
JSON alone (`lib.kits.optimize_plots`), with `gp_surrogate` refitting the same kind of GP.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lib.io import write_json

Method = Literal["bo", "random"]
# Settings that change which points get proposed; a resumed search must match them all.
RESUME_KEYS = ("names", "bounds", "method", "seed", "n_initial_points", "maximize", "n_parallel")
# What skopt's base_estimator="GP" builds (skopt.utils.cook_estimator, checked for skopt 0.10.2).
SURROGATE = "ConstantKernel * Matern(nu=2.5) with Gaussian noise, inputs scaled to [0, 1], normalize_y"
# k points at once: each pending point is told to a copy of the optimiser with the best score so far as a
# fake result (a "constant liar", Ginsbourger, Le Riche & Carraro 2010), as skopt's ask(n_points=k) does.
PARALLEL_STRATEGY = "cl_min"


@dataclass
class SearchSpace:
    """One named, bounded continuous dimension per layer group, e.g. names=["early", "late"]."""

    names: list[str]
    bounds: list[tuple[float, float]]

    def __post_init__(self) -> None:
        self.names = list(self.names)
        if not self.names:
            raise ValueError("SearchSpace.names is empty; give one name per dimension, e.g. ['early', 'late']")
        duplicates = sorted({n for n in self.names if self.names.count(n) > 1})
        if duplicates:
            raise ValueError(f"SearchSpace.names repeats {duplicates}; every dimension needs its own name")
        if len(self.bounds) != len(self.names):
            raise ValueError(f"SearchSpace.bounds has {len(self.bounds)} entries but names has {len(self.names)}; "
                             "give one (low, high) pair per name")
        checked = []
        for name, pair in zip(self.names, self.bounds, strict=True):
            low, high = (float(v) for v in pair) if len(pair) == 2 else (math.nan, math.nan)
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"SearchSpace.bounds for {name!r} is {tuple(pair)}; need finite low < high")
            checked.append((low, high))
        self.bounds = checked

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> SearchSpace:
        return cls(settings["names"], [tuple(b) for b in settings["bounds"]])

    def to_point(self, values: Sequence[float]) -> dict[str, float]:
        return {name: float(v) for name, v in zip(self.names, values, strict=True)}

    def to_vector(self, point: dict[str, float]) -> list[float]:
        if set(point) != set(self.names):
            raise ValueError(f"point has keys {sorted(point)} but the space has {self.names}")
        return [float(point[name]) for name in self.names]

    def matrix(self, history: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """Points (n, d) and scores (n,) of a history, in recorded order."""
        points = np.array([self.to_vector(r["point"]) for r in history], dtype=float).reshape(-1, len(self.names))
        return points, np.array([r["score"] for r in history], dtype=float)


@dataclass
class SearchResult:
    best_point: dict[str, float]
    best_score: float
    history: list[dict[str, Any]]
    settings: dict[str, Any]

    @classmethod
    def from_history(cls, history: list[dict[str, Any]], settings: dict[str, Any]) -> SearchResult:
        if not history:
            raise ValueError("the history is empty: no evaluation has finished yet")
        pick = max if settings.get("maximize", True) else min
        best = pick(history, key=lambda r: r["score"])
        return cls(dict(best["point"]), float(best["score"]), list(history), dict(settings))

    @classmethod
    def load(cls, path: Path) -> SearchResult:
        data = json.loads(Path(path).read_text())
        return cls.from_history(data["history"], data["settings"])

    @property
    def space(self) -> SearchSpace:
        return SearchSpace.from_settings(self.settings)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (pass it to `lib.runner.write_json`)."""
        return {"best_point": self.best_point, "best_score": self.best_score, "settings": self.settings,
                "history": self.history}


class _RandomProposer:
    """Uniform sampling with the optimiser's ask/tell interface, seeded by numpy (skopt's "dummy"
    estimator fails under scikit-learn >= 1.6)."""

    def __init__(self, space: SearchSpace, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.low, self.high = np.array(space.bounds).T

    def ask(self) -> list[float]:
        return [float(v) for v in self.rng.uniform(self.low, self.high)]

    def tell(self, x: list[float], y: float) -> None:
        pass


def _threads(n: int = 1) -> Any:
    """GP fits on tens of points gain nothing from threaded BLAS; on 2 busy cores the contention
    made each ask/tell 8x slower (1 s against 0.12 s), so the optimiser runs single-threaded."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n)


def _proposer(space: SearchSpace, method: Method, n_initial_points: int, seed: int) -> Any:
    """skopt's base_estimator="GP" is ConstantKernel * Matern(nu=2.5) with a fitted Gaussian noise term on the
    space normalised to [0, 1] (skopt.utils.cook_estimator; asserted in the tests), the usual BO choice since
    Snoek et al. 2012. EI's maximiser is found with L-BFGS from the best of 10,000 random candidates."""
    if method == "random":
        return _RandomProposer(space, seed)
    from skopt import Optimizer

    return Optimizer(space.bounds, base_estimator="GP", acq_func="EI", acq_optimizer="lbfgs",
                     n_initial_points=n_initial_points, initial_point_generator="random", random_state=seed)


def _settings(space: SearchSpace, method: Method, n_iterations: int, n_initial_points: int, seed: int,
              maximize: bool, n_parallel: int = 1) -> dict[str, Any]:
    import skopt

    settings = {"names": space.names, "bounds": space.bounds, "method": method, "seed": seed,
                "n_initial_points": n_initial_points, "maximize": maximize, "n_iterations": n_iterations,
                "acquisition": "EI" if method == "bo" else None, "surrogate": SURROGATE if method == "bo" else None,
                "skopt_version": skopt.__version__}
    if n_parallel > 1:  # a sequential history keeps its original form (and old files resume unchanged)
        settings |= {"n_parallel": n_parallel, "parallel_strategy": PARALLEL_STRATEGY}
    return json.loads(json.dumps(settings))  # tuples -> lists, as read back from the file


def _load_history(path: Path, settings: dict[str, Any], resume: bool) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    recorded = json.loads(path.read_text())
    history = recorded.get("history", [])
    if not resume:
        if history:
            raise FileExistsError(f"{path} already holds {len(history)} evaluations; pass resume=True to continue "
                                  "that search, or choose another history_path")
        return []
    defaults = {"n_parallel": 1}
    before = {key: recorded.get("settings", {}).get(key, defaults.get(key)) for key in RESUME_KEYS}
    now = {key: settings.get(key, defaults.get(key)) for key in RESUME_KEYS}
    differing = [key for key in RESUME_KEYS if before[key] != now[key]]
    if differing:
        details = "; ".join(f"{k}: file has {before[k]!r}, now {now[k]!r}" for k in differing)
        raise ValueError(f"cannot resume {path}: settings differ ({details}); use the recorded settings "
                         "or a new history_path")
    return history


def _replay(proposer: Any, space: SearchSpace, history: list[dict[str, Any]], maximize: bool) -> None:
    """Ask and tell every recorded evaluation, so the RNG and the surrogate end where they were."""
    span = np.array([high - low for low, high in space.bounds])
    with _threads():
        for index, record in enumerate(history):
            proposed = np.array(proposer.ask())
            recorded = np.array(space.to_vector(record["point"]))
            if np.any(np.abs(proposed - recorded) > 1e-9 * span):
                raise RuntimeError(f"replaying evaluation {index}: the optimiser now proposes "
                                   f"{space.to_point(proposed)} but the history recorded {record['point']}; the "
                                   "history was written by other code or library versions, start a new history_path")
            proposer.tell(recorded.tolist(), -record["score"] if maximize else record["score"])


def run_search(objective: Callable[[dict[str, float]], float], space: SearchSpace, *, method: Method = "bo",
               n_iterations: int, n_initial_points: int, seed: int, history_path: Path, resume: bool = False,
               maximize: bool = True, progress: bool = True, n_parallel: int = 1,
               executor: Any = None, resources: dict[str, float] | None = None) -> SearchResult:
    """Evaluate `objective` n_iterations times at points chosen by GP-EI BO (first `n_initial_points`
    uniformly at random) or by random search, appending each to `history_path` as soon as it finishes.

    resume=True continues the search recorded in `history_path` (or starts one if there is no file);
    a larger n_iterations extends a finished search. Without resume an existing non-empty history is an error.
    Resuming replays the recorded evaluations through the optimiser (its own fitting time, no objective
    calls). skopt minimises, so scores are negated when `maximize`. The whole history is rewritten after
    each evaluation: negligible next to an objective that takes seconds or more.

    n_parallel=k keeps k evaluations in flight on `executor` (lib.executors: "local", "local:N", "ray", or an
    Executor; default local): k points are asked at once with a constant liar (skopt's ask(n_points=k),
    strategy cl_min), each result is told as it arrives and a new point is asked for the freed slot, the
    still-pending points told to a copy of the optimiser as lies. The history then also records, per
    evaluation, when it was proposed (`batch`, `told_before`), and `pending` holds proposed points not yet
    finished, so a resumed search replays the same proposals, re-runs only what was in flight, and none is
    lost or duplicated. `resources` is what one evaluation asks the executor for (default one CPU; e.g.
    {"num_gpus": 1}). On Ray the objective must be picklable (cloudpickle: closures work, but one holding
    a model ships the model; build the model inside the objective and cache it per worker process).
    """
    if method not in ("bo", "random"):
        raise ValueError(f"method={method!r}; choose 'bo' or 'random'")
    if n_iterations < 1:
        raise ValueError(f"n_iterations={n_iterations}; need at least 1")
    if not 1 <= n_initial_points <= n_iterations:
        raise ValueError(f"n_initial_points={n_initial_points}; need 1 <= n_initial_points <= n_iterations "
                         f"({n_iterations}), else the GP is never used")
    if not isinstance(n_parallel, int) or n_parallel < 1:
        raise ValueError(f"n_parallel={n_parallel!r}; need an int >= 1 (evaluations in flight at once)")
    from tqdm.auto import tqdm

    history_path = Path(history_path)
    settings = _settings(space, method, n_iterations, n_initial_points, seed, maximize, n_parallel)
    history = _load_history(history_path, settings, resume)
    settings["n_iterations"] = max(n_iterations, len(history))  # resuming with a smaller budget keeps all evaluations
    proposer = _proposer(space, method, n_initial_points, seed)
    if n_parallel > 1 or executor is not None:
        return _parallel_search(objective, space, proposer, history, settings, history_path, resume, n_iterations,
                                n_parallel, executor, resources, maximize, progress)
    _replay(proposer, space, history, maximize)
    write_json(history_path, {"settings": settings, "history": history})
    sign = 1.0 if maximize else -1.0
    with tqdm(total=n_iterations, initial=min(len(history), n_iterations), disable=not progress,
              desc=f"{method} search") as bar:
        while len(history) < n_iterations:
            with _threads():
                point = space.to_point(proposer.ask())
            start = time.perf_counter()
            score = float(objective(dict(point)))
            seconds = time.perf_counter() - start
            if not math.isfinite(score):
                raise ValueError(f"objective returned {score} at {point}; return a finite float "
                                 "(give failed configurations an explicitly bad score)")
            history.append({"point": point, "score": score, "seconds": seconds, "iteration": len(history)})
            write_json(history_path, {"settings": settings, "history": history})  # before tell: a kill loses nothing
            with _threads():
                proposer.tell(space.to_vector(point), -sign * score)
            bar.update(1)
            bar.set_postfix(best=sign * max(sign * r["score"] for r in history))
    return SearchResult.from_history(history, settings)


def _timed(objective: Callable[[dict[str, float]], float], point: dict[str, float]) -> tuple[float, float]:
    """Runs where the evaluation runs: the score and its own duration (not the queueing)."""
    start = time.perf_counter()
    score = float(objective(dict(point)))
    return score, time.perf_counter() - start


def _propose(proposer: Any, pending: list[list[float]], count: int) -> list[list[float]]:
    """`count` new points while `pending` ones are being evaluated. Without pending points this is skopt's
    own ask (one point) or ask(n_points=count, strategy="cl_min"); with them, a copy of the optimiser is told
    each pending point with the constant lie min(y) (skopt's cl_min lie) and asked, as skopt's ask(n_points)
    does for points of its own batch. Deterministic given the tells so far, so a resumed search replays it."""
    if isinstance(proposer, _RandomProposer):
        return [proposer.ask() for _ in range(count)]
    asker = proposer
    if pending:
        asker = proposer.copy(random_state=proposer.rng.randint(0, np.iinfo(np.int32).max))
        lie = float(np.min(proposer.yi)) if proposer.yi else 0.0
        asker.tell([list(p) for p in pending], [lie] * len(pending))
    points = [asker.ask()] if count == 1 else asker.ask(n_points=count, strategy=PARALLEL_STRATEGY)
    return [[float(v) for v in point] for point in points]


def _save(path: Path, settings: dict[str, Any], history: list[dict[str, Any]], pending: list[dict[str, Any]]) -> None:
    """One in flight is the sequential search: same file (a point in flight is proposed again on resume)."""
    parallel = settings.get("n_parallel", 1) > 1
    write_json(path, {"settings": settings, "history": history, **({"pending": pending} if parallel else {})})


def _parallel_search(objective: Callable[[dict[str, float]], float], space: SearchSpace, proposer: Any,
                     history: list[dict[str, Any]], settings: dict[str, Any], history_path: Path, resume: bool,
                     n_iterations: int, n_parallel: int, executor: Any, resources: dict[str, float] | None,
                     maximize: bool, progress: bool) -> SearchResult:
    """run_search with up to n_parallel evaluations in flight (see its docstring for the scheme)."""
    from lib.kits.executors import TaskPool, get_executor

    sign, span = (1.0 if maximize else -1.0), np.array([high - low for low, high in space.bounds])
    pending: list[dict[str, Any]] = []
    if resume and history_path.exists():
        pending = json.loads(history_path.read_text()).get("pending", [])
    proposals = sorted(history + pending, key=lambda r: r["iteration"])
    if [r["iteration"] for r in proposals] != list(range(len(proposals))):
        raise RuntimeError(f"{history_path}: recorded iterations are not 0..{len(proposals) - 1}; the file was "
                           "edited or written by other code, start a new history_path")
    told: list[dict[str, Any]] = []  # the optimiser has been told these, in this order (= history order)

    def tell(record: dict[str, Any]) -> None:
        with _threads():
            proposer.tell(space.to_vector(record["point"]), -sign * record["score"])
        told.append(record)

    def in_flight(before: int) -> list[list[float]]:
        done = {r["iteration"] for r in told}
        return [space.to_vector(r["point"]) for r in proposals[:before] if r["iteration"] not in done]

    # Replay: the same tells and asks in the same order give the same optimiser, checked point by point.
    for batch in sorted({r.get("batch", r["iteration"]) for r in proposals}):
        members = [r for r in proposals if r.get("batch", r["iteration"]) == batch]
        while len(told) < members[0].get("told_before", members[0]["iteration"]):
            tell(history[len(told)])
        with _threads():
            points = _propose(proposer, in_flight(members[0]["iteration"]), len(members))
        for record, point in zip(members, points, strict=True):
            if np.any(np.abs(np.array(point) - np.array(space.to_vector(record["point"]))) > 1e-9 * span):
                raise RuntimeError(f"replaying evaluation {record['iteration']}: the optimiser now proposes "
                                   f"{space.to_point(point)} but the history recorded {record['point']}; the history "
                                   "was written by other code or library versions, start a new history_path")
    for record in history[len(told):]:
        tell(record)
    _save(history_path, settings, history, pending)

    engine = get_executor(executor)
    next_batch = 1 + max((r.get("batch", r["iteration"]) for r in proposals), default=-1)
    waiting = list(pending)  # proposed before an interruption: run them first, as the uninterrupted search did
    total = max(n_iterations, len(history))
    with TaskPool(engine, resources or {"num_cpus": 1}, total=total, initial=min(len(history), total), limit=n_parallel,
                  desc=f"{settings['method']} search (k={n_parallel}, {engine.name})", progress=progress) as pool:
        while len(history) < total:
            free = pool.free()
            unproposed = total - len(history) - len(pending)
            count = min(free - min(free, len(waiting)), unproposed)
            if count > 0:
                with _threads():
                    points = _propose(proposer, [space.to_vector(r["point"]) for r in pending], count)
                iteration = len(history) + len(pending)
                fresh = [{"point": space.to_point(point), "iteration": iteration + i} for i, point in enumerate(points)]
                if n_parallel > 1:  # when it was proposed; with one in flight both equal `iteration`
                    for record in fresh:
                        record |= {"batch": next_batch, "told_before": len(told)}
                next_batch += 1
                pending += fresh
                waiting += fresh
                _save(history_path, settings, history, pending)  # proposed before dispatch: a kill loses nothing
            while waiting and pool.free():
                record = waiting.pop(0)
                pool.submit(record["iteration"], _timed, objective, record["point"])
            for iteration, ok, value in pool.done():
                record = next(r for r in pending if r["iteration"] == iteration)
                if not ok:
                    raise RuntimeError(f"the objective failed at {record['point']}: {value}; the finished evaluations "
                                       f"and the {len(pending)} pending points are in {history_path}, resume=True "
                                       "re-runs only the pending ones") from value
                score, seconds = value
                if not math.isfinite(score):
                    raise ValueError(f"objective returned {score} at {record['point']}; return a finite float "
                                     "(give failed configurations an explicitly bad score)")
                pending.remove(record)
                history.append({**record, "score": score, "seconds": seconds})
                _save(history_path, settings, history, pending)  # before tell: a kill loses nothing
                tell(history[-1])
                pool.note["best"] = sign * max(sign * r["score"] for r in history)
                pool.count(failed=False)
    return SearchResult.from_history(history, settings)


@dataclass
class Surrogate:
    """A GP fitted to a history's scores (not negated), queried in the space's own units."""

    model: Any  # skopt.learning.GaussianProcessRegressor on the [0, 1]-normalised space
    space: SearchSpace

    def predict(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of the score at `points` (n, d)."""
        from skopt.space import Space
        from skopt.utils import normalize_dimensions

        unit = Space(normalize_dimensions(self.space.bounds)).transform(np.atleast_2d(points).tolist())
        with _threads():
            mean, sd = self.model.predict(unit, return_std=True)
        return mean, sd


def gp_surrogate(history: list[dict[str, Any]], space: SearchSpace, seed: int = 0) -> Surrogate:
    """Refit the BO surrogate's kernel family (skopt's "GP" estimator) on a recorded history, so figures
    can be redrawn from the JSON. Inputs go through the optimiser's own normalising transform."""
    from skopt.space import Space
    from skopt.utils import cook_estimator, normalize_dimensions

    if not history:
        raise ValueError("history is empty; the surrogate needs at least one evaluation")
    unit_space = Space(normalize_dimensions(space.bounds))
    points, scores = space.matrix(history)
    model = cook_estimator("GP", space=unit_space, random_state=seed)
    with _threads(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as skopt does: with few points, length scales at their bounds are expected
        model.fit(unit_space.transform(points.tolist()), scores)
    return Surrogate(model, space)


def running_best(history: list[dict[str, Any]], maximize: bool = True) -> list[float]:
    scores = [r["score"] for r in history]
    return list((np.maximum if maximize else np.minimum).accumulate(scores)) if scores else []


def evaluations_to_reach(history: list[dict[str, Any]], optimum: float, tolerance: float = 0.05, *,
                         maximize: bool = True, scale: float | None = None) -> int | None:
    """How many evaluations until the running best is within `tolerance * scale` of the known optimum;
    None if never. `scale` defaults to |optimum|; pass the objective's range (max - min) when the
    optimum is near zero."""
    scale = abs(optimum) if scale is None else scale
    if scale <= 0:
        raise ValueError(f"scale={scale}; with optimum 0 pass scale= (e.g. the objective's range)")
    threshold = optimum - tolerance * scale if maximize else optimum + tolerance * scale
    for count, best in enumerate(running_best(history, maximize), start=1):
        if (best >= threshold) if maximize else (best <= threshold):
            return count
    return None


def gaussian_bump(center: dict[str, float], width: float, height: float = 1.0) -> Callable[[dict[str, float]], float]:
    """A smooth synthetic objective with a known maximum (`height` at `center`), for tests and benchmarks:
    height * exp(-|x - center|^2 / (2 width^2))."""
    names, peak = list(center), np.array(list(center.values()), dtype=float)

    def objective(point: dict[str, float]) -> float:
        x = np.array([point[n] for n in names], dtype=float)
        return float(height * np.exp(-np.sum((x - peak) ** 2) / (2 * width**2)))

    return objective
