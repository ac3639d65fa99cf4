"""Figures drawn from results files, so they can be redrawn without re-running anything."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt


def effect_curve_figure(curves: dict[str, dict[str, list[float]]], title: str, path: Path | None = None) -> Any:
    """Left: target-minus-baseline log-prob gap against scale; right: KL on neutral text.
    The random norm-matched direction is the control: a real effect separates from it."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    styles = {"steering": {"color": "C0", "marker": "o"}, "random": {"color": "0.5", "marker": "x", "ls": "--"}}
    for name, curve in curves.items():
        if "gap" in curve:
            left.plot(curve["scale"], curve["gap"], label=name, **styles.get(name, {}))
        right.plot(curve["scale"], curve["kl"], label=name, **styles.get(name, {}))
    if "steering" in curves and "gap" in curves["steering"]:
        zero = curves["steering"]["scale"].index(0.0)
        left.axhline(curves["steering"]["gap"][zero], color="k", lw=0.8, ls=":", label="unsteered")
    left.set(xlabel="scale", ylabel="log p(target reply) - log p(baseline reply)", title="effect")
    right.set(xlabel="scale", ylabel="KL(unsteered || steered), nats/token", title="side effect (neutral text)")
    for axis in (left, right):
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def sweep_heatmaps(summary_csv: Path, row_key: str, col_key: str, out_dir: Path) -> list[Path]:
    """Heatmaps of every numeric summary column present among (delta, main, side_effect) over a 2-D grid."""
    import numpy as np

    with open(summary_csv) as handle:
        rows = list(csv.DictReader(handle))
    row_values = sorted({r[row_key] for r in rows}, key=_numeric)
    col_values = sorted({r[col_key] for r in rows}, key=_numeric)
    written = []
    for metric in ("delta", "main", "side_effect"):
        if not rows or metric not in rows[0]:
            continue
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
