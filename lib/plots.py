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
    return _finish(fig, (left, right), title, path)


def _finish(fig: Any, axes: tuple, title: str, path: Path | None, suptitle: bool = True) -> Any:
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


def training_curve_figure(run_log: list[dict], evals: list[dict], title: str, path: Path | None = None) -> Any:
    """Left: mean rewards per GRPO step; right: eval pass@1 with its 95% interval at each evaluation."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = [e["step"] for e in run_log]
    for key, label in (("reward", "total"), ("rewards/trl_correctness_reward/mean", "correctness"),
                       ("rewards/trl_format_reward/mean", "format")):
        if run_log and key in run_log[0]:
            left.plot(steps, [e[key] for e in run_log], label=label, alpha=0.8)
    left.set(xlabel="step", ylabel="mean reward", title="training rewards")
    eval_steps = [e["step"] for e in evals]
    pass1 = [e["pass_at"]["1"] for e in evals]
    low = [p - e["pass1_ci"][0] for p, e in zip(pass1, evals, strict=True)]
    high = [e["pass1_ci"][1] - p for p, e in zip(pass1, evals, strict=True)]
    right.errorbar(eval_steps, pass1, yerr=[low, high], marker="o", capsize=3)
    right.set(xlabel="step", ylabel="pass@1", title=f"eval pass@1 ({evals[-1]['n_problems']} problems)" if evals
              else "eval")
    return _finish(fig, (left, right), title, path)


def weight_curve_figure(weights: list[float], steered: list[dict], base: dict, finetuned: dict, title: str,
                        path: Path | None = None, random: list[dict] | None = None) -> Any:
    """Steered pass@1 against weight with 95% intervals; base and finetuned as horizontal lines."""
    fig, axis = plt.subplots(figsize=(6.5, 4))

    def band(result: dict, color: str, label: str) -> None:
        value = result["pass_at"]["1"]
        axis.axhline(value, color=color, ls="--", label=f"{label} {value:.2f}")
        axis.axhspan(result["pass1_ci"][0], result["pass1_ci"][1], color=color, alpha=0.1)

    band(base, "k", "base")
    band(finetuned, "C3", "finetuned")
    for results, label, color in ((steered, "base + w * vector", "C0"), (random or [], "random direction", "0.5")):
        if not results:
            continue
        values = [r["pass_at"]["1"] for r in results]
        errors = [[v - r["pass1_ci"][0] for v, r in zip(values, results, strict=True)],
                  [r["pass1_ci"][1] - v for v, r in zip(values, results, strict=True)]]
        axis.errorbar(weights, values, yerr=errors, marker="o", capsize=3, color=color, label=label)
    axis.set(xlabel="steering weight (all layers)", ylabel="pass@1", title=title)
    return _finish(fig, (axis,), title, path, suptitle=False)


def sweep_heatmaps(summary_csv: Path, row_key: str, col_key: str, out_dir: Path) -> list[Path]:
    """Heatmaps over a 2-D grid of the effect (delta from unsteered), the effect beyond a random
    direction of the same norm (specific_delta), and the side effect, where the summary has them."""
    import numpy as np

    with open(summary_csv) as handle:
        rows = list(csv.DictReader(handle))
    row_values = sorted({r[row_key] for r in rows}, key=_numeric)
    col_values = sorted({r[col_key] for r in rows}, key=_numeric)
    written = []
    for metric in ("delta", "specific_delta", "side_effect"):
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
