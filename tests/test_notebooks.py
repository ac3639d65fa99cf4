"""Notebooks end to end through papermill on the embedded default (quick presets)."""

from __future__ import annotations

import csv
import json

import pytest

from lib.runner import run_notebook, sweep

CONTRASTIVE_QUICK = {"n_samples": 8, "n_eval": 4, "inference_n": 2, "max_tokens": 8, "curve_scales": [0.0, 2.0],
                     "batch_size": 8}


def test_contrastive_notebook_runs_and_writes_results(tmp_path):
    run_dir = run_notebook("contrastive_steering", CONTRASTIVE_QUICK, out_root=tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    metadata = results["metadata"]
    for key in ("target_subset", "baseline_subset", "n_samples", "layer", "scale", "vector_norm",
                "effective_magnitude", "inference_set", "inference_size", "model"):
        assert key in metadata, key
    assert metadata["target_subset"] == {"key": "math", "name": metadata["target_subset"]["name"]}
    assert metadata["effective_magnitude"] == pytest.approx(metadata["vector_norm"] * metadata["scale"])
    assert metadata["inference_size"] == 2 and len(results["results"]) == 2
    assert set(results["results"][0]) == {"prompt_index", "prompt", "baseline", "steered"}
    summary = results["summary"]
    assert summary["side_effect"] > 0 and summary["main"] != summary["baseline"]
    assert results["curves"]["steering"]["kl"][0] == pytest.approx(0.0, abs=1e-6)
    assert (run_dir / "effect_curve.png").stat().st_size > 10_000
    assert (run_dir / "vector.safetensors").exists() and (run_dir / "steering_vectors.json").exists()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "ok" and record["parameters"]["n_samples"] == 8 and "torch" in record["versions"]
    assert run_notebook("contrastive_steering", CONTRASTIVE_QUICK, out_root=tmp_path) == run_dir  # kept, not re-run
    assert json.loads((run_dir / "run.json").read_text())["started"] == record["started"]


@pytest.mark.slow
def test_contrastive_sweep_resumes_and_writes_summary_and_heatmap(tmp_path):
    grid = {"layer": [6, 12], "scale": [1.0, 4.0]}
    first = run_notebook("contrastive_steering", {**CONTRASTIVE_QUICK, "layer": 6, "scale": 1.0}, out_root=tmp_path)
    started = json.loads((first / "run.json").read_text())["started"]
    sweep_dir = sweep("contrastive_steering", grid, fixed=CONTRASTIVE_QUICK, out_root=tmp_path)
    assert json.loads((first / "run.json").read_text())["started"] == started  # resumed, not re-run
    with open(sweep_dir / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and {"layer", "scale", "main", "baseline", "side_effect"} <= set(rows[0])
    assert (sweep_dir / "heatmap_delta.png").exists() and (sweep_dir / "heatmap_side_effect.png").exists()
