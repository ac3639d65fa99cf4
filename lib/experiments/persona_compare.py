"""A persona trait three ways, measured with the evaluation kit only (issue "One evaluation kit": its worked
example): a persona vector (Chen et al. 2025) at coefficients relative to the residual norm, the same persona as a
system prompt, and random directions matched to each vector condition's KL, all scored on generated replies by a
likelihood judge (log p(reply | "answer as <trait>") - log p(reply | plain question)), with degenerate-text flags,
the plain model's NLL of the replies (fluency) and the KL on neutral text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pandas as pd

from lib.config import ModelConfig, check_layer_parameter, check_positive, model_layer_count
from lib.kits.persona import check_trait, split_questions
from lib.memory import Workload


@dataclass
class PersonaCompareConfig(ModelConfig):
    """A persona vector vs a system prompt vs KL-matched random directions, on generated replies."""

    notebook: ClassVar[str] = "persona_compare"
    trait: str = "pirate"
    layer: int = 12
    relative_coefficients: tuple[float, ...] | list[float] = (0.25, 0.5)  # of the layer's median residual norm
    n_train: int = 8
    n_eval: int = 8
    max_new_tokens: int = 32
    n_random: int = 2
    n_boot: int = 2000
    batch_size: int = 16
    seed: int = 0
    out_dir: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_trait(self.trait)
        for name in ("n_train", "n_eval", "max_new_tokens", "n_boot", "batch_size"):
            check_positive(name, getattr(self, name))
        check_positive("n_random", self.n_random, allow_zero=True)
        split_questions(self.n_train, self.n_eval)
        if not self.relative_coefficients or any(not isinstance(c, int | float) or isinstance(c, bool) or c <= 0
                                                 for c in self.relative_coefficients):
            raise ValueError(f"relative_coefficients={self.relative_coefficients!r} must be positive numbers, e.g. "
                             "[0.25, 0.5] (multiples of the layer's median residual norm)")
        self.relative_coefficients = [float(c) for c in self.relative_coefficients]

    def check_inputs(self) -> None:
        check_layer_parameter("layer", self.layer, self.model, model_layer_count(self.model))

    def workload(self) -> Workload:
        return Workload(batch=self.batch_size, tokens=96 + self.max_new_tokens)

    @property
    def train_questions(self) -> list[str]:
        return split_questions(self.n_train, self.n_eval)[0]

    @property
    def eval_questions(self) -> list[str]:
        return split_questions(self.n_train, self.n_eval)[1]


def summary(table: pd.DataFrame) -> dict[str, float]:
    """The main metric (the judge's score) of the strongest vector condition beside the unsteered baseline and the
    system prompt, and its side effect (KL) and fluency."""
    judge = table[table.metric == "trait"].set_index("condition")
    vectors = [name for name in judge.index if name.startswith("vector")]
    strongest = vectors[-1]
    fluency = table[table.metric == "fluency_nll"].set_index("condition")
    return {"main": float(judge.loc[strongest, "value"]), "baseline": float(judge.loc["unsteered", "value"]),
            "prompt": float(judge.loc["system prompt", "value"]), "side_effect": float(judge.loc[strongest, "kl"]),
            "fluency_nll": float(fluency.loc[strongest, "value"])}
