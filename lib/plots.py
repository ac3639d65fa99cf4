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


def alpha_accuracy_figure(alphas: list[dict], randoms: list[dict], title: str, path: Path | None = None) -> Any:
    """Test accuracy against alpha with bootstrap CIs, amplification (alpha >= 0) and suppression (alpha <= 0)
    panels; random directions at the same alphas (grey crosses, their mean a black bar) are the control."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    base = next(row["accuracy"] for row in alphas if row["alpha"] == 0.0)
    for axis, keep, name in ((axes[0], lambda a: a >= 0, "amplification"), (axes[1], lambda a: a <= 0, "suppression")):
        rows = [row for row in alphas if keep(row["alpha"])]
        x = [row["alpha"] for row in rows]
        y = [row["accuracy"] for row in rows]
        errors = [[row["accuracy"] - row["ci_low"] for row in rows], [row["ci_high"] - row["accuracy"] for row in rows]]
        axis.errorbar(x, y, yerr=errors, marker="o", capsize=3, label="direction (95% bootstrap CI)")
        for row in rows:
            if row.get("significant"):
                axis.annotate(f"p={row['p_mcnemar']:.3f}", (row["alpha"], row["accuracy"]), fontsize=7,
                              textcoords="offset points", xytext=(4, 6))
        points = [r for r in randoms if r["direction"].startswith("random_") and keep(r["alpha"])]
        means = [r for r in randoms if r["direction"] == "random mean" and keep(r["alpha"])]
        if points:
            axis.scatter([r["alpha"] for r in points], [base + r["delta_points"] / 100 for r in points], marker="x",
                         color="0.5", label="random directions")
            axis.scatter([r["alpha"] for r in means], [base + r["delta_points"] / 100 for r in means], marker="_",
                         s=300, color="k", label="random mean")
        axis.axhline(base, color="k", lw=0.8, ls=":", label="unsteered")
        axis.set(xlabel="alpha", title=name)
    axes[0].set_ylabel("test accuracy")
    return _finish(fig, tuple(axes), title, path)


def transition_figure(moves: list[dict], title: str, path: Path | None = None) -> Any:
    """Stacked bars per alpha: problems that stayed correct / became correct / became wrong / stayed wrong."""
    fig, axis = plt.subplots(figsize=(8, 3.8))
    colours = {"stayed_correct": "C2", "became_correct": "C0", "became_wrong": "C3", "stayed_wrong": "0.7"}
    labels = [f"{row['alpha']:+g}" for row in moves]
    bottom = [0] * len(moves)
    for key, colour in colours.items():
        heights = [row[key] for row in moves]
        axis.bar(labels, heights, bottom=bottom, color=colour, label=key.replace("_", " "))
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    axis.set(xlabel="alpha", ylabel="test problems", title="vs unsteered (alpha 0)")
    return _finish(fig, (axis,), title, path)


def direction_heatmaps(norms: Any, first_dims: Any, dims_label: str, title: str, path: Path | None = None) -> Any:
    """Left: direction norm by layer (rows) and latent step (columns); right: the first dimensions of the
    direction at the steered layer(s) (rows: layers in token mode, latent steps in latent mode)."""
    import seaborn as sns

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5), gridspec_kw={"width_ratios": [1, 3]})
    sns.heatmap(norms, ax=left, cmap="viridis", cbar_kws={"label": "norm"})
    left.set(xlabel="latent step" if norms.shape[1] > 1 else "", ylabel="layer", title="direction norm")
    sns.heatmap(first_dims, ax=right, cmap="RdBu_r", center=0.0)
    right.set(xlabel="dimension", ylabel=dims_label,
              title=f"first {first_dims.shape[1]} dimensions of the unit direction")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
