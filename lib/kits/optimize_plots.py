"""Figures of a search, drawn from its history alone (`SearchResult.load(path).history`), so they can be
redrawn without calling the objective again. Surfaces come from `gp_surrogate`, a GP of the family the
optimiser used, refitted on the recorded evaluations.

Built on `matplotlib.figure.Figure` rather than pyplot: works under any backend (headless Agg
included) without forcing one, and leaves no open figures behind in a notebook.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from lib.kits.optimize import SearchSpace, Surrogate, gp_surrogate, running_best

History = list[dict[str, Any]]


def _best_index(scores: np.ndarray, maximize: bool) -> int:
    return int(np.argmax(scores) if maximize else np.argmin(scores))


def _slice(surrogate: Surrogate, through: np.ndarray, dim: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GP mean and sd along one dimension, the others held at `through`."""
    low, high = surrogate.space.bounds[dim]
    xs = np.linspace(low, high, n)
    points = np.tile(through, (n, 1))
    points[:, dim] = xs
    mean, sd = surrogate.predict(points)
    return xs, mean, sd


def _draw_slice(axis: Any, surrogate: Surrogate, points: np.ndarray, scores: np.ndarray, best: int, dim: int,
                n: int = 80) -> None:
    xs, mean, sd = _slice(surrogate, points[best], dim, n)
    axis.fill_between(xs, mean - 2 * sd, mean + 2 * sd, color="C0", alpha=0.2, label="GP mean ± 2 sd")
    axis.plot(xs, mean, color="C0")
    axis.scatter(points[:, dim], scores, s=12, color="0.3", zorder=3, label="evaluated (projected)")
    axis.axvline(points[best, dim], color="C3", lw=1, ls="--", label="best")
    axis.set_xlim(*surrogate.space.bounds[dim])


def gp_1d_frames(history: History, space: SearchSpace, out_dir: Path, *, every: int = 1, start: int = 2,
                 maximize: bool = True, seed: int = 0) -> list[Path]:
    """One PNG per step i = start, start + every, ..., len(history): the GP fitted on the first i
    evaluations, sliced along each group through the best point so far, and the point it chose next."""
    if every < 1 or start < 1:
        raise ValueError(f"every={every}, start={start}; both must be >= 1")
    points, scores = space.matrix(history)
    spread = float(np.ptp(scores)) or 1.0
    ylim = (scores.min() - 0.3 * spread, scores.max() + 0.3 * spread)  # fixed, so an animation does not jump
    steps = list(range(min(start, len(history)), len(history) + 1, every))
    if steps and steps[-1] != len(history):
        steps.append(len(history))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for step in steps:
        seen_points, seen_scores = points[:step], scores[:step]
        surrogate = gp_surrogate(history[:step], space, seed)
        best = _best_index(seen_scores, maximize)
        fig = Figure(figsize=(3.2 * len(space.names), 3.0))
        axes = fig.subplots(1, len(space.names), squeeze=False)[0]
        for dim, axis in enumerate(axes):
            _draw_slice(axis, surrogate, seen_points, seen_scores, best, dim)
            if step < len(history):
                axis.scatter(points[step, dim], scores[step], marker="*", s=90, color="C1", zorder=4,
                             label="next evaluation")
            axis.set(xlabel=space.names[dim], ylim=ylim)
        axes[0].set_ylabel("score")
        axes[-1].legend(fontsize=7, loc="best")
        fig.suptitle(f"GP after {step} evaluations (best {seen_scores[best]:.3g}); slices through the best point",
                     fontsize=9)
        fig.tight_layout()
        path = out_dir / f"gp_1d_{step:04d}.png"
        fig.savefig(path, dpi=90)
        written.append(path)
    return written


def gp_2d_grid(history: History, space: SearchSpace, path: Path, *, maximize: bool = True, seed: int = 0,
               n: int = 40) -> Path:
    """Lower triangle: GP mean (colour) and sd (white contour lines) over each pair of groups, the other
    groups held at the best point, evaluated points coloured by score. Diagonal: 1-D slices with ± 2 sd."""
    points, scores = space.matrix(history)
    surrogate = gp_surrogate(history, space, seed)
    best = _best_index(scores, maximize)
    d = len(space.names)
    surfaces = {}
    for row in range(d):
        for col in range(row):
            xs = np.linspace(*space.bounds[col], n)
            ys = np.linspace(*space.bounds[row], n)
            grid_x, grid_y = np.meshgrid(xs, ys)
            grid = np.tile(points[best], (n * n, 1))
            grid[:, col], grid[:, row] = grid_x.ravel(), grid_y.ravel()
            mean, sd = surrogate.predict(grid)
            surfaces[row, col] = (grid_x, grid_y, mean.reshape(n, n), sd.reshape(n, n))
    values = np.concatenate([scores] + [s[2].ravel() for s in surfaces.values()])
    norm = Normalize(values.min(), values.max())
    fig = Figure(figsize=(2.4 * d + 1.4, 2.2 * d + 0.5), layout="constrained")
    axes = fig.subplots(d, d, squeeze=False)
    for row in range(d):
        for col in range(d):
            axis = axes[row, col]
            if col > row:
                axis.set_axis_off()
            elif col == row:
                _draw_slice(axis, surrogate, points, scores, best, col)
                axis.set_title(f"score along {space.names[col]}", fontsize=8)
            else:
                grid_x, grid_y, mean, sd = surfaces[row, col]
                axis.contourf(grid_x, grid_y, mean, levels=12, cmap="viridis", norm=norm)
                lines = axis.contour(grid_x, grid_y, sd, levels=4, colors="white", linewidths=0.7)
                axis.clabel(lines, fontsize=6, fmt="%.2g")
                axis.scatter(points[:, col], points[:, row], c=scores, cmap="viridis", norm=norm, s=14,
                             edgecolors="k", linewidths=0.4)
                axis.scatter(points[best, col], points[best, row], marker="*", s=120, color="C3", edgecolors="k")
            if row == d - 1:
                axis.set_xlabel(space.names[col])
            if col == 0 and row > 0:
                axis.set_ylabel(space.names[row])
    mappable, label = ScalarMappable(norm, "viridis"), "GP mean / observed score"
    if d > 1:  # in the empty upper triangle
        fig.colorbar(mappable, cax=axes[0, -1].inset_axes((0.45, 0.0, 0.1, 1.0)), label=label)
    else:
        fig.colorbar(mappable, ax=axes, label=label)
    fig.suptitle(f"GP over pairs of groups through the best point ({len(history)} evaluations; white: sd)",
                 fontsize=9)
    fig.savefig(path, dpi=100)
    return Path(path)


def parallel_coordinates(history: History, space: SearchSpace, path: Path, *, maximize: bool = True) -> Path:
    """Every evaluated configuration as a line across the group axes (each scaled to its bounds),
    coloured by score, best drawn last and thickest."""
    points, scores = space.matrix(history)
    low, high = np.array(space.bounds).T
    scaled = (points - low) / (high - low)
    order = np.argsort(scores if maximize else -scores)  # best last, on top
    xs = np.arange(len(space.names))
    norm = Normalize(scores.min(), scores.max())
    fig = Figure(figsize=(1.6 * len(space.names) + 2.5, 4.0))
    axis = fig.subplots()
    lines = LineCollection([np.column_stack([xs, scaled[i]]) for i in order], cmap="viridis", norm=norm,
                           linewidths=1.0, alpha=0.8)
    lines.set_array(scores[order])
    axis.add_collection(lines)
    axis.plot(xs, scaled[order[-1]], color="C3", lw=2.5, label=f"best ({scores[order[-1]]:.3g})")
    for x, (lo, hi) in zip(xs, space.bounds, strict=True):
        axis.axvline(x, color="0.6", lw=0.8)
        axis.annotate(f"{lo:.3g}", (x, 0), xytext=(0, -10), textcoords="offset points", ha="center", fontsize=7)
        axis.annotate(f"{hi:.3g}", (x, 1), xytext=(0, 4), textcoords="offset points", ha="center", fontsize=7)
    axis.set_xticks(xs, space.names)
    axis.set(xlim=(-0.2, xs[-1] + 0.2), ylim=(-0.08, 1.08), yticks=[], title=f"{len(history)} configurations")
    axis.legend(fontsize=8, loc="upper right")
    fig.colorbar(lines, ax=axis, label="score")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def animate(frames: Sequence[Path], path: Path, duration_ms: int = 500) -> Path:
    """An animated, looping GIF of PNG frames (e.g. from gp_1d_frames), via Pillow."""
    from PIL import Image

    if not frames:
        raise ValueError("frames is empty; pass the PNG paths returned by gp_1d_frames")
    images = [Image.open(frame).convert("RGB") for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return Path(path)


def _runs(histories: History | Sequence[History]) -> list[History]:
    """One history, or one per seed."""
    return [histories] if histories and isinstance(histories[0], dict) else list(histories)  # type: ignore[list-item]


def bo_vs_random_figure(bo_history: History | Sequence[History], random_history: History | Sequence[History],
                        path: Path, optimum: float | None = None, *, maximize: bool = True,
                        tolerance: float = 0.05) -> Path:
    """Running best against evaluation number for both methods; with several seeds each, thin lines
    per seed and the median bold."""
    fig = Figure(figsize=(6.5, 4.0))
    axis = fig.subplots()
    for label, histories, color in (("BO (GP-EI)", bo_history, "C0"), ("random search", random_history, "C1")):
        curves = [running_best(h, maximize) for h in _runs(histories)]
        for curve in curves:
            axis.plot(range(1, len(curve) + 1), curve, color=color, lw=0.8, alpha=0.35)
        shortest = min(len(c) for c in curves)
        median = np.median([c[:shortest] for c in curves], axis=0)
        axis.plot(range(1, shortest + 1), median, color=color, lw=2.2,
                  label=label if len(curves) == 1 else f"{label}, median of {len(curves)}")
    if optimum is not None:
        axis.axhline(optimum, color="k", lw=1, label="optimum")
        within = optimum - tolerance * abs(optimum) if maximize else optimum + tolerance * abs(optimum)
        axis.axhline(within, color="k", lw=0.8, ls=":", label=f"within {tolerance:.0%}")
    axis.set(xlabel="evaluation", ylabel="best score so far", xscale="log")
    axis.xaxis.set_major_formatter(ScalarFormatter())
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)
