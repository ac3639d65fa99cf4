"""toy_sweep: its config and what its notebook computes. lib/experiments/toy_sweep.py holds only the config; the
computation (a random 4-layer linear residual stream, a mean-difference vector, a readout as the behaviour) lives in
nbs/toy_sweep.py's cells. Those cells run here in-process, as papermill would run them after injecting parameters
(seconds, no kernel), and their summary is checked against a hand recompute of the stream the notebook describes.
Each test names the one-line mutation it catches."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from lib.experiments.toy_sweep import ToySweepConfig
from lib.io import REPO_ROOT


def run_notebook_cells(overrides: dict[str, Any]) -> dict[str, Any]:
    """Every code cell of nbs/toy_sweep.py in order, with `overrides` assigned right after the parameters cell (where
    papermill injects them); returns the notebook's namespace."""
    import jupytext
    import matplotlib

    matplotlib.use("Agg")
    notebook = jupytext.read(REPO_ROOT / "nbs" / "toy_sweep.py")
    namespace: dict[str, Any] = {"__name__": "toy_sweep"}
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        exec(compile(cell.source, "nbs/toy_sweep.py", "exec"), namespace)
        if "parameters" in cell.metadata.get("tags", []):
            namespace.update(overrides)
    import matplotlib.pyplot as plt

    plt.close("all")
    return namespace


def hand_stream(weights: list[np.ndarray], x: np.ndarray, add: np.ndarray, at: int) -> np.ndarray:
    """The final state of the stream the notebook describes, written out: x <- x + tanh(x W) per layer, with `add`
    joining after layer `at`."""
    for index, weight in enumerate(weights):
        x = x + np.tanh(x @ weight)
        if index == at:
            x = x + add
    return x


@pytest.mark.parametrize(("layer", "scale"), [(1, 2.0), (2, -1.5)])
def test_summary_is_a_hand_recompute_of_the_steered_stream(tmp_path, layer, scale):
    """The vector is mean(target) - mean(baseline) of the states after `layer`; main is the mean sigmoid readout of
    the neutral inputs with scale * vector added after that layer, baseline the same unsteered, the side effect the
    mean squared off-readout part of the change; results.json and the figure are written to out_dir. Catches: the
    vector read at another layer than it is added, the scale not applied, the readout part left in the drift,
    target and baseline swapped (the sign of the effect)."""
    ns = run_notebook_cells({"layer": layer, "scale": scale, "n_samples": 32, "out_dir": str(tmp_path)})
    weights, readout = ns["weights"], ns["readout"]
    states = lambda x: [x := x + np.tanh(x @ w) for w in weights]  # noqa: E731  (the unsteered states per layer)
    vector = states(ns["target"])[layer].mean(0) - states(ns["baseline"])[layer].mean(0)
    np.testing.assert_allclose(ns["vector"], vector, rtol=1e-12)
    unsteered = hand_stream(weights, ns["neutral"], np.zeros_like(vector), layer)
    steered = hand_stream(weights, ns["neutral"], scale * vector, layer)
    sigmoid = lambda s: float(np.mean(1 / (1 + np.exp(-s @ readout))))  # noqa: E731
    change = steered - unsteered
    off_readout = change - np.outer(change @ readout, readout)
    summary = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert summary["main"] == pytest.approx(sigmoid(steered), rel=1e-12)
    assert summary["baseline"] == pytest.approx(sigmoid(unsteered), rel=1e-12)
    assert summary["delta"] == pytest.approx(sigmoid(steered) - sigmoid(unsteered), abs=1e-12)
    assert summary["side_effect"] == pytest.approx(float(np.mean(np.sum(off_readout**2, axis=1))), rel=1e-12)
    assert np.sign(summary["delta"]) == np.sign(scale)  # target inputs lie along the readout: it follows the scale
    assert (tmp_path / "effect_curve.png").stat().st_size > 0


def test_scale_zero_changes_nothing_and_the_curve_starts_at_the_baseline(tmp_path):
    """At scale 0 the steered stream is the unsteered one (main == baseline, no drift), and the effect curve's first
    point (scale 0) is the baseline while its point at the configured scale is `main` (catches: the curve computed
    on other inputs than the summary, or the addition not multiplied by the scale)."""
    ns = run_notebook_cells({"scale": 0.0, "n_samples": 16, "out_dir": str(tmp_path / "zero")})
    assert ns["summary"]["main"] == ns["summary"]["baseline"] and ns["summary"]["side_effect"] == 0.0
    ns = run_notebook_cells({"scale": 1.0, "n_samples": 16, "out_dir": str(tmp_path / "one")})
    curve = json.loads((tmp_path / "one" / "results.json").read_text())["curve"]
    assert curve["scales"][0] == 0.0 and curve["readout"][0] == ns["summary"]["baseline"]
    assert curve["readout"][curve["scales"].index(1.0)] == ns["summary"]["main"]


def test_fail_scale_fails_only_that_run(tmp_path):
    """fail_scale is the deliberate error a sweep test relies on: the run at that scale raises, naming it, and
    another scale runs (catches: the comparison inverted, or the check dropped)."""
    with pytest.raises(ValueError, match=r"deliberate failure at scale=2.0 \(fail_scale=2.0\)"):
        run_notebook_cells({"scale": 2.0, "fail_scale": 2.0, "out_dir": str(tmp_path / "a")})
    assert "summary" in run_notebook_cells({"scale": 1.0, "fail_scale": 2.0, "out_dir": str(tmp_path / "b")})


@pytest.mark.parametrize(("change", "message"), [
    ({"layer": 4}, r"^layer=4 must be an int in \[0, 3\]"), ({"layer": -1}, r"^layer=-1"),
    ({"scale": "1"}, r"^scale='1' must be a number"), ({"scale": True}, r"^scale=True"),
    ({"n_samples": 0}, r"^n_samples=0"), ({"work": -1}, r"^work=-1"), ({"sleep_seconds": -0.5}, r"^sleep_seconds="),
])
def test_config_refuses_bad_values_naming_the_parameter(change, message):
    """Catches: any one check of ToySweepConfig.__post_init__ removed."""
    with pytest.raises(ValueError, match=message):
        ToySweepConfig(**change)

