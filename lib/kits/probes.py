"""How well a direction separates a behaviour, and a monitor that reads it (issue "Beyond addition", item 3).

- `direction_report`: per layer and estimator (mean difference, PCA of paired differences, LDA, a logistic probe;
  `lib.vectors`), the direction built on training activations and read on held-out ones: AUC of the projections
  (target above baseline), accuracy at the threshold midway between the training classes' mean projections, and
  the cosine to the mean difference (AxBench, Wu et al. 2025, compares these estimators; there prompting won).
- `token_projections`: the projection of each token of a reply on a unit direction at one layer, read as the reply
  to its prompt (Chen et al. 2025: the persona vector's projection monitors the trait, per token and per
  response); `auroc` scores a monitor against labels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from lib.extract import prompt_and_completion
from lib.hooks import record
from lib.vectors import SteeringVector, lda_direction, mean_difference, pca_direction, probe_direction

Activations = Mapping[int, torch.Tensor]
Estimator = Callable[[Activations, Activations], SteeringVector]
ESTIMATORS: dict[str, Estimator] = {
    "mean_difference": mean_difference,
    "pca": pca_direction,  # paired differences: the two training sets must be paired rows
    "lda": lda_direction,
    "probe": probe_direction,
}


def auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> float:
    """The probability that a positive's score exceeds a negative's (ties count half): the Mann-Whitney AUC."""
    values = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(labels, dtype=bool)
    if values.shape != truth.shape or values.ndim != 1:
        raise ValueError(f"scores {values.shape} and labels {truth.shape} must be 1-D of one length")
    if truth.all() or not truth.any():
        raise ValueError("labels are all of one class: an AUC needs positives and negatives")
    if np.isnan(values).any():
        raise ValueError("scores contain NaN: drop the rows without a score first (e.g. empty replies)")
    positives, negatives = values[truth], values[~truth]
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(positives) * len(negatives)))


def direction_report(train_target: Activations, train_baseline: Activations, test_target: Activations,
                     test_baseline: Activations, estimators: Sequence[str] = ("mean_difference", "lda", "probe"),
                     ) -> pd.DataFrame:
    """Per layer x estimator: held-out AUC and accuracy of the direction's projections, and its cosine to the mean
    difference. `pca` needs paired training sets (equal counts, row i of each a pair)."""
    unknown = [name for name in estimators if name not in ESTIMATORS]
    if unknown:
        raise ValueError(f"estimators {unknown} are not among {sorted(ESTIMATORS)}")
    reference = mean_difference(train_target, train_baseline)
    rows = []
    for name in estimators:
        vector = ESTIMATORS[name](train_target, train_baseline)
        for layer in sorted(vector.vectors):
            unit = vector[layer].float() / vector[layer].float().norm().clamp_min(1e-12)
            low = float((train_baseline[layer].float() @ unit).mean())
            high = float((train_target[layer].float() @ unit).mean())
            scores = torch.cat([test_target[layer].float() @ unit, test_baseline[layer].float() @ unit]).numpy()
            labels = np.r_[np.ones(len(test_target[layer]), bool), np.zeros(len(test_baseline[layer]), bool)]
            predicted = scores > (low + high) / 2
            cosine = float(torch.nn.functional.cosine_similarity(unit, reference[layer].float(), dim=0))
            rows.append({"layer": layer, "estimator": name, "auc": auroc(scores, labels),
                         "accuracy": float(np.mean(predicted == labels)), "cosine_to_mean_difference": cosine,
                         "n_train": len(train_target[layer]) + len(train_baseline[layer]), "n_test": len(labels)})
    return pd.DataFrame(rows)


@torch.no_grad()
def token_projections(model: nn.Module, tokenizer: Any, prompts: Sequence[Any], texts: Sequence[str],
                      direction: Mapping[int, torch.Tensor], layer: int) -> list[np.ndarray]:
    """Per text, [its tokens] the block-`layer` output at each of the text's tokens (read as the reply to its
    prompt, one unpadded forward per text) projected on the unit direction: the monitor's per-token reading. Its
    mean is the per-response score (`lib.kits.text_scorers.projection_score` gives it batched)."""
    if len(prompts) != len(texts):
        raise ValueError(f"{len(prompts)} prompts for {len(texts)} texts")
    unit = direction[layer].float() / direction[layer].float().norm()
    joined, starts = prompt_and_completion(tokenizer, list(prompts), list(texts))
    device = next(model.parameters()).device
    out = []
    for text, start in zip(joined, starts, strict=True):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        with record(model, [layer], reduction="all") as acts:
            model(input_ids=torch.tensor([ids], device=device))
        out.append((acts[layer][0, start:].float() @ unit).numpy())
    return out
