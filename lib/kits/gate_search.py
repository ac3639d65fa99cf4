"""Choosing a conditional-steering gate (Lee et al. 2025, CAST): the condition layer, comparison and threshold with
the best F1 on labelled prompts, as the paper's grid search does.

Each prompt is read as the model reads it before replying (the chat template with the generation prompt), its mean
hidden state per layer comes from one extraction pass (`lib.extract`), and CAST's score (`lib.gates.cast_score`) is
taken against the condition direction of each layer. Thresholds are the midpoints between consecutive scores, so a
threshold never sits on a prompt's score; ties in F1 go to the higher accuracy, then the lower layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from lib.extract import extract
from lib.gates import Gate, cast_score
from lib.generation import render_chat


def prompt_means(model: nn.Module, tokenizer: Any, prompts: Sequence[str], layers: Sequence[int],
                 batch_size: int = 16, progress: bool = False) -> dict[int, torch.Tensor]:
    """{layer: [prompts, hidden]} each chat-rendered prompt's mean hidden state over its tokens: what a gate reads
    during the prefill (`Gate.read_prefill`), and what a condition direction is built from."""
    rendered = [render_chat(tokenizer, prompt) for prompt in prompts]
    return extract(model, tokenizer, rendered, layers=list(layers), reduction="mean", batch_size=batch_size,
                   progress=progress)


def gate_scores(model: nn.Module, tokenizer: Any, prompts: Sequence[str], direction: Mapping[int, torch.Tensor],
                layers: Sequence[int] | None = None, batch_size: int = 16,
                progress: bool = False) -> dict[int, np.ndarray]:
    """{layer: [prompts] CAST score} for each layer of `direction` (or `layers`), one extraction pass."""
    layers = sorted(direction) if layers is None else [int(layer) for layer in layers]
    missing = [layer for layer in layers if layer not in direction]
    if missing:
        raise ValueError(f"the condition direction has no vector at layers {missing} (it has {sorted(direction)})")
    if not prompts:
        raise ValueError("prompts is empty: the gate is chosen on labelled prompts")
    means = prompt_means(model, tokenizer, prompts, layers, batch_size, progress)
    return {layer: cast_score(means[layer], direction[layer]).double().numpy() for layer in layers}


def _f1(predicted: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    true_positive = float(np.sum(predicted & labels))
    precision = true_positive / max(float(np.sum(predicted)), 1.0)
    recall = true_positive / max(float(np.sum(labels)), 1.0)
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return f1, float(np.mean(predicted == labels))


@dataclass
class GateSearch:
    """The best gate and every (layer, comparison, threshold) tried with its F1 and accuracy."""

    gate: Gate
    table: pd.DataFrame

    @property
    def best(self) -> dict[str, Any]:
        return self.table.iloc[0].to_dict()


def search_gate(model: nn.Module, tokenizer: Any, prompts: Sequence[str], labels: Sequence[bool],
                direction: Mapping[int, torch.Tensor], layers: Sequence[int] | None = None,
                batch_size: int = 16) -> GateSearch:
    """The gate with the best F1 at telling `labels` (True: steer this prompt) from the prompts, over layers, both
    comparisons and every midpoint threshold. Refuses labels of one class (no threshold can be chosen)."""
    truth = np.asarray(labels, dtype=bool)
    if len(truth) != len(prompts):
        raise ValueError(f"labels has {len(truth)} entries for {len(prompts)} prompts; give one per prompt")
    if truth.all() or not truth.any():
        raise ValueError("labels are all of one class: the gate needs prompts to steer and prompts to leave alone")
    rows = []
    for layer, scores in gate_scores(model, tokenizer, prompts, direction, layers, batch_size).items():
        ordered = np.unique(scores)
        thresholds = (ordered[1:] + ordered[:-1]) / 2 if len(ordered) > 1 else ordered
        for comparison in (">", "<"):
            for threshold in thresholds:
                predicted = scores > threshold if comparison == ">" else scores < threshold
                f1, accuracy = _f1(predicted, truth)
                rows.append({"layer": layer, "comparison": comparison, "threshold": float(threshold), "f1": f1,
                             "accuracy": accuracy, "opens": int(predicted.sum())})
    table = pd.DataFrame(rows).sort_values(["f1", "accuracy", "layer"], ascending=[False, False, True],
                                           kind="stable").reset_index(drop=True)
    best = table.iloc[0]
    gate = Gate(direction[int(best.layer)], int(best.layer), float(best.threshold), best.comparison)
    return GateSearch(gate, table)
