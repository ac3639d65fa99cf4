"""Figures shared by every experiment: the common figure ending and a sweep's heatmaps. Each experiment's own
figures live in its module (lib/experiments/); all are drawn from results files, so they can be redrawn without
re-running anything."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt


def finish_figure(fig: Any, axes: tuple, title: str, path: Path | None, suptitle: bool = True) -> Any:
    """Shared ending: grid and legend on every axis (where something is labelled), title, save."""
    for axis in axes:
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    if suptitle:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


NOT_METRICS = ("run_dir", "status", "error")


def summary_metrics(rows: list[dict[str, str]], keys: tuple[str, ...] = ()) -> list[str]:
    """The columns of a sweep's summary.csv that are metrics: every column (other than the grid `keys`, run_dir,
    status and error) whose filled cells are all numbers, whatever a notebook's `summary` calls them (issue "One
    evaluation kit": the heatmaps knew three names)."""
    if not rows:
        return []
    columns = [c for c in rows[0] if c not in keys and c not in NOT_METRICS]
    return [c for c in columns if any(r.get(c) not in (None, "") for r in rows)
            and all(_numeric(r[c])[0] == 0 for r in rows if r.get(c) not in (None, ""))]


def sweep_heatmaps(summary_csv: Path, row_key: str, col_key: str, out_dir: Path) -> list[Path]:
    """One heatmap over a 2-D grid per metric column of the summary (`summary_metrics`): the effect, its
    control-corrected version, the side effect, or whatever else a notebook summarises."""
    import numpy as np

    with open(summary_csv) as handle:
        rows = list(csv.DictReader(handle))
    row_values = sorted({r[row_key] for r in rows}, key=_numeric)
    col_values = sorted({r[col_key] for r in rows}, key=_numeric)
    written = []
    for metric in summary_metrics(rows, (row_key, col_key)):
        grid = np.full((len(row_values), len(col_values)), np.nan)
        for r in rows:
            if r.get(metric) not in (None, ""):
                grid[row_values.index(r[row_key]), col_values.index(r[col_key])] = float(r[metric])
        fig, axis = plt.subplots(figsize=(1.2 * len(col_values) + 2.5, 0.6 * len(row_values) + 2))
        image = axis.imshow(grid, cmap="viridis", aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            if np.isfinite(value):
                axis.text(j, i, f"{value:.2f}", ha="center", va="center", color="w", fontsize=8)
        axis.set_xticks(range(len(col_values)), col_values)
        axis.set_yticks(range(len(row_values)), row_values)
        axis.set(xlabel=col_key, ylabel=row_key, title=metric)
        fig.colorbar(image, ax=axis)
        fig.tight_layout()
        path = out_dir / f"heatmap_{metric}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def _numeric(text: str) -> tuple[int, float | str]:
    try:
        return (0, float(text))
    except ValueError:
        return (1, text)


