"""The shared figure parts of lib.kits.plots."""

from __future__ import annotations


def test_sweep_heatmaps_draw_every_numeric_summary_column(tmp_path):
    """Any metric a notebook's summary names gets its heatmap (they were hard-coded to delta, specific_delta and
    side_effect); text columns and the grid keys do not."""
    import csv

    from lib.kits.plots import summary_metrics, sweep_heatmaps

    rows = [{"layer": str(layer), "scale": str(scale), "trait_effect": str(layer * scale), "kl": "0.1",
             "note": "text", "run_dir": "x", "status": "ok", "error": ""} for layer in (6, 12) for scale in (1, 2)]
    path = tmp_path / "summary.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert summary_metrics(rows, ("layer", "scale")) == ["trait_effect", "kl"]
    written = sweep_heatmaps(path, "layer", "scale", tmp_path)
    assert sorted(p.name for p in written) == ["heatmap_kl.png", "heatmap_trait_effect.png"]
