"""Bayesian optimisation core: BO beats random search, kill-and-resume reproduces the uninterrupted
search exactly, settings are checked on resume, figures are written from a history alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lib.io import REPO_ROOT
from lib.kits.optimize import (
    SearchResult,
    SearchSpace,
    evaluations_to_reach,
    gaussian_bump,
    gp_surrogate,
    run_search,
)

SPACE_3D = SearchSpace(["early", "mid", "late"], [(0.0, 1.0)] * 3)
BUMP_3D = gaussian_bump({"early": 0.27, "mid": 0.71, "late": 0.55}, width=0.2)
SPACE_2D = SearchSpace(["early", "late"], [(-1.0, 2.0), (0.0, 4.0)])
BUMP_2D = gaussian_bump({"early": 0.4, "late": 2.5}, width=0.8)
RESUME_RUN = {"method": "bo", "n_iterations": 9, "n_initial_points": 4, "seed": 3, "progress": False}


def points_and_scores(history: list[dict]) -> list[tuple]:
    return [(tuple(r["point"].values()), r["score"]) for r in history]


def test_bo_reaches_the_optimum_in_fewer_evaluations_than_random_search(tmp_path):
    # The 5% region is a ball of radius 0.064 in [0, 1]^3: random search hits it in 25 tries ~3% of the time.
    budget, reached = 25, {"bo": [], "random": []}
    for seed in range(3):
        for method in reached:
            result = run_search(BUMP_3D, SPACE_3D, method=method, n_iterations=budget, n_initial_points=5, seed=seed,
                                history_path=tmp_path / f"{method}{seed}.json", progress=False)
            reached[method].append(evaluations_to_reach(result.history, 1.0, 0.05) or budget + 1)
    assert all(n <= budget for n in reached["bo"]), reached
    assert sum(reached["bo"]) < sum(reached["random"]), reached


def test_evaluations_to_reach():
    history = [{"score": s} for s in (0.1, 0.5, 0.96, 0.2)]
    assert evaluations_to_reach(history, 1.0) == 3
    assert evaluations_to_reach(history, 1.0, tolerance=0.01) is None
    assert evaluations_to_reach([{"score": s} for s in (3.0, 1.04)], 1.0, maximize=False) == 2
    assert evaluations_to_reach(history, 0.0, scale=1.0) == 1
    with pytest.raises(ValueError, match="scale"):
        evaluations_to_reach(history, 0.0)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[dict]:
    path = tmp_path_factory.mktemp("reference") / "history.json"
    return run_search(BUMP_2D, SPACE_2D, history_path=path, **RESUME_RUN).history


def test_history_file_records_every_evaluation_with_settings(uninterrupted, tmp_path):
    path = tmp_path / "h.json"
    run_search(BUMP_2D, SPACE_2D, history_path=path, **RESUME_RUN)
    saved = json.loads(path.read_text())
    assert saved["settings"]["names"] == SPACE_2D.names and saved["settings"]["seed"] == 3
    assert [r["iteration"] for r in saved["history"]] == list(range(9))
    assert all(set(r) == {"point", "score", "seconds", "iteration"} for r in saved["history"])
    assert points_and_scores(saved["history"]) == points_and_scores(uninterrupted)  # deterministic by seed
    result = SearchResult.load(path)
    assert result.best_score == max(r["score"] for r in uninterrupted)
    assert BUMP_2D(result.best_point) == result.best_score and result.to_json()["history"] == saved["history"]


def test_objective_failure_then_resume_equals_uninterrupted_run(uninterrupted, tmp_path):
    path, calls = tmp_path / "h.json", []

    def fails_after_six(point):
        if len(calls) == 6:
            raise RuntimeError("simulated crash")
        calls.append(point)
        return BUMP_2D(point)

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_search(fails_after_six, SPACE_2D, history_path=path, **RESUME_RUN)
    prefix = json.loads(path.read_text())["history"]
    assert len(prefix) == 6

    resumed_calls = []
    result = run_search(lambda p: resumed_calls.append(p) or BUMP_2D(p), SPACE_2D, history_path=path, resume=True,
                        **RESUME_RUN)
    assert len(resumed_calls) == 3  # finished evaluations are not re-run
    assert result.history[:6] == prefix
    assert [r["iteration"] for r in result.history] == list(range(9))
    assert points_and_scores(result.history) == points_and_scores(uninterrupted)
    # Resuming a finished search runs nothing; a larger n_iterations extends it.
    assert run_search(BUMP_2D, SPACE_2D, history_path=path, resume=True, **RESUME_RUN).history == result.history
    extended = run_search(BUMP_2D, SPACE_2D, history_path=path, resume=True, **{**RESUME_RUN, "n_iterations": 10})
    assert extended.history[:9] == result.history and len(extended.history) == 10


CHILD = """
import sys, time
from pathlib import Path
from lib.kits.optimize import SearchSpace, gaussian_bump, run_search
bump = gaussian_bump({{"early": 0.4, "late": 2.5}}, width=0.8)
def slow(point):
    time.sleep(0.4)
    return bump(point)
run_search(slow, SearchSpace(["early", "late"], [(-1.0, 2.0), (0.0, 4.0)]), history_path=Path({path!r}), **{run!r})
"""


def test_sigkilled_search_resumes_without_losing_or_repeating_evaluations(uninterrupted, tmp_path):
    path, log = tmp_path / "h.json", (tmp_path / "child.log").open("w")
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(path=str(path), run=RESUME_RUN)], cwd=REPO_ROOT,
                             stdout=log, stderr=subprocess.STDOUT)
    deadline, finished = time.monotonic() + 90, 0
    try:
        while finished < 5:
            assert child.poll() is None, f"child exited early:\n{(tmp_path / 'child.log').read_text()}"
            assert time.monotonic() < deadline, "child did not record 5 evaluations within 90 s"
            time.sleep(0.05)
            if path.exists():  # written atomically, so always whole JSON
                finished = len(json.loads(path.read_text())["history"])
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        log.close()
    prefix = json.loads(path.read_text())["history"]
    assert 5 <= len(prefix) < RESUME_RUN["n_iterations"]

    resumed_calls = []
    result = run_search(lambda p: resumed_calls.append(p) or BUMP_2D(p), SPACE_2D, history_path=path, resume=True,
                        **RESUME_RUN)
    assert len(resumed_calls) == RESUME_RUN["n_iterations"] - len(prefix)
    assert result.history[:len(prefix)] == prefix
    assert [r["iteration"] for r in result.history] == list(range(RESUME_RUN["n_iterations"]))
    assert points_and_scores(result.history) == points_and_scores(uninterrupted)


def test_random_search_resumes_exactly(tmp_path):
    run = {**RESUME_RUN, "method": "random"}
    full = run_search(BUMP_2D, SPACE_2D, history_path=tmp_path / "full.json", **run).history
    run_search(BUMP_2D, SPACE_2D, history_path=tmp_path / "part.json", **{**run, "n_iterations": 4})
    resumed = run_search(BUMP_2D, SPACE_2D, history_path=tmp_path / "part.json", resume=True, **run).history
    assert points_and_scores(resumed) == points_and_scores(full)
    low, high = np.array(SPACE_2D.bounds).T
    assert all(np.all((low <= v) & (v < high)) for v in (np.array(list(r["point"].values())) for r in full))


def test_existing_history_is_never_overwritten_and_resume_checks_settings(tmp_path):
    path = tmp_path / "h.json"
    run_search(BUMP_2D, SPACE_2D, history_path=path, **{**RESUME_RUN, "n_iterations": 4})
    before = path.read_text()
    with pytest.raises(FileExistsError, match="resume=True"):
        run_search(BUMP_2D, SPACE_2D, history_path=path, **RESUME_RUN)
    for change, name in (({"seed": 4}, "seed"), ({"method": "random"}, "method"), ({"n_initial_points": 3},
                         "n_initial_points"), ({"maximize": False}, "maximize")):
        with pytest.raises(ValueError, match=name):
            run_search(BUMP_2D, SPACE_2D, history_path=path, resume=True, **{**RESUME_RUN, **change})
    with pytest.raises(ValueError, match="bounds"):
        run_search(BUMP_2D, SearchSpace(["early", "late"], [(-1.0, 2.0), (0.0, 5.0)]), history_path=path,
                   resume=True, **RESUME_RUN)
    assert path.read_text() == before
    tampered = json.loads(before)
    tampered["history"][1]["point"]["early"] += 0.1
    path.write_text(json.dumps(tampered))
    with pytest.raises(RuntimeError, match="replaying evaluation 1"):
        run_search(BUMP_2D, SPACE_2D, history_path=path, resume=True, **RESUME_RUN)


def test_argument_errors_name_the_parameter(tmp_path):
    for change, name in (({"method": "grid"}, "method"), ({"n_iterations": 0}, "n_iterations"),
                         ({"n_initial_points": 20}, "n_initial_points")):
        with pytest.raises(ValueError, match=name):
            run_search(BUMP_2D, SPACE_2D, history_path=tmp_path / "h.json", **{**RESUME_RUN, **change})
    with pytest.raises(ValueError, match="finite"):
        run_search(lambda p: float("nan"), SPACE_2D, history_path=tmp_path / "nan.json", **RESUME_RUN)


@pytest.mark.parametrize(("names", "bounds", "message"), [
    ([], [], "names is empty"),
    (["a", "a"], [(0, 1), (0, 1)], r"repeats \['a'\]"),
    (["a", "b"], [(0, 1)], "bounds has 1 entries but names has 2"),
    (["a", "b"], [(0, 1), (2, 1)], "bounds for 'b'"),
    (["a"], [(0, float("inf"))], "bounds for 'a'"),
    (["a"], [(0, 1, 2)], "bounds for 'a'"),
])
def test_search_space_validation(names, bounds, message):
    with pytest.raises(ValueError, match=message):
        SearchSpace(names, bounds)


def test_gp_surrogate_uses_the_optimisers_transform_and_fits_the_history(uninterrupted):
    from skopt import Optimizer

    optimizer = Optimizer(SPACE_2D.bounds, base_estimator="GP")
    points, scores = SPACE_2D.matrix(uninterrupted)
    expected = optimizer.space.transform(points.tolist())
    assert np.allclose(expected, (points - [-1.0, 0.0]) / [3.0, 4.0])
    kernel = str(optimizer.base_estimator_.kernel)
    assert "Matern" in kernel and "nu=2.5" in kernel

    surrogate = gp_surrogate(uninterrupted, SPACE_2D, seed=0)
    assert "Matern" in str(surrogate.model.kernel_)
    mean, sd = surrogate.predict(points)
    assert np.all(np.abs(mean - scores) <= 2 * sd + 0.05), (mean, scores, sd)


def test_figures_are_drawn_from_the_history_alone(uninterrupted, tmp_path):
    from PIL import Image

    from lib.kits.optimize_plots import animate, bo_vs_random_figure, gp_1d_frames, gp_2d_grid, parallel_coordinates

    frames = gp_1d_frames(uninterrupted, SPACE_2D, tmp_path / "frames", every=3, start=4)
    assert [f.name for f in frames] == ["gp_1d_0004.png", "gp_1d_0007.png", "gp_1d_0009.png"]
    gif = animate(frames, tmp_path / "gp.gif", duration_ms=200)
    assert Image.open(gif).n_frames == len(frames) > 1
    random_history = run_search(BUMP_2D, SPACE_2D, history_path=tmp_path / "r.json",
                                **{**RESUME_RUN, "method": "random"}).history
    written = [
        gp_2d_grid(uninterrupted, SPACE_2D, tmp_path / "grid.png", n=15),
        parallel_coordinates(uninterrupted, SPACE_2D, tmp_path / "parallel.png"),
        bo_vs_random_figure(uninterrupted, random_history, tmp_path / "single.png", optimum=1.0),
        bo_vs_random_figure([uninterrupted] * 2, [random_history] * 2, tmp_path / "seeds.png"),
    ]
    for path in [*frames, *written]:
        assert path.stat().st_size > 1000, path


def test_grid_handles_more_groups(tmp_path):
    from lib.kits.optimize_plots import gp_2d_grid

    history = run_search(BUMP_3D, SPACE_3D, history_path=tmp_path / "h.json", method="random", n_iterations=8,
                         n_initial_points=1, seed=0, progress=False).history
    assert gp_2d_grid(history, SPACE_3D, tmp_path / "grid.png", n=10).stat().st_size > 1000
