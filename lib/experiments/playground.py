"""The steering playground notebook: what does this vector do at this layer and coefficient?

The notebook opens the live widget (`lib.kits.playground.Playground`) on a vector, by default the one the
contrastive demo (`./just run contrastive_steering`) writes. Because papermill runs it headless and every run
ends with a summary, it also computes one table for the configured prompt and coefficients and writes
results.json: how much of the generated text the configured coefficient changes beside the unsteered 0, and the
KL it costs on neutral text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from lib.config import (
    ModelConfig,
    check_choice,
    check_layer_parameter,
    check_positive,
    layer_list,
    model_layer_count,
    model_size_of,
)
from lib.io import REPO_ROOT
from lib.kits.playground import (
    POSITIONS,
    PlaygroundOutputs,
    check_vector_layers,
    load_vector,
    resolve_vector_path,
    run_coefficients,
)
from lib.memory import Workload
from lib.vectors import SteeringVector

# Where the default `./just run contrastive_steering` saves its vector (`out/<notebook>/default/vector`).
CONTRASTIVE_DEMO_VECTOR = "out/contrastive_steering/default/vector"
KL_BATCH_SIZE = 16


@dataclass
class PlaygroundConfig(ModelConfig):
    """A steering playground run: one prompt at the unsteered 0, `coefficient` and `coefficients` in one batch.

    vector: a run folder, a vector file or its base path. "" builds the contrastive demo's vector in this run (as
    `./just run contrastive_steering` does); the default path, when that run has not been made, does the same
    with a note.
    """

    notebook: ClassVar[str] = "playground"
    vector: str = CONTRASTIVE_DEMO_VECTOR
    layers: tuple[int, ...] | list[int] = (10,)
    coefficient: float = 2.0  # the headline: the summary compares it with the unsteered 0
    coefficients: tuple[float, ...] | list[float] = (4.0, 8.0)  # more rows in the same batch
    positions: str = "all"
    prompt: str = "What should I cook for dinner tonight?"
    temperature: float = 0.0
    max_new_tokens: int = 32
    seed: int = 0
    out_dir: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.layers = layer_list("layers", self.layers)
        if not self.layers:
            raise ValueError("layers=[] selects no layer: give one or more of the vector's layers, e.g. [10]")
        if isinstance(self.coefficient, bool) or not isinstance(self.coefficient, int | float) or \
                not math.isfinite(self.coefficient):
            raise ValueError(f"coefficient={self.coefficient!r} must be a finite number")
        if not isinstance(self.coefficients, list | tuple):
            raise ValueError(f"coefficients={self.coefficients!r} must be a list of numbers, e.g. [4.0, 8.0]")
        bad = [c for c in self.coefficients if isinstance(c, bool) or not isinstance(c, int | float)
               or not math.isfinite(c)]
        if bad:
            raise ValueError(f"coefficients={self.coefficients!r}: {bad[0]!r} is not a finite number")
        self.coefficient, self.coefficients = float(self.coefficient), [float(c) for c in self.coefficients]
        check_choice("positions", self.positions, POSITIONS)
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"prompt={self.prompt!r} is empty: give the prompt to steer")
        check_positive("temperature", self.temperature, allow_zero=True)
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or \
                self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens!r} must be an int >= 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed={self.seed!r} must be an int")
        self.vector = str(self.vector)

    @property
    def run_coefficients(self) -> list[float]:
        """The table's rows: 0 (unsteered), `coefficient`, then `coefficients`, each once."""
        return run_coefficients([self.coefficient, *self.coefficients])

    @property
    def builds_vector(self) -> bool:
        """True when this run builds the contrastive demo's vector itself: vector="", or the default path while the
        contrastive demo has not been run."""
        if not self.vector:
            return True
        try:
            resolve_vector_path(self.vector, "vector")
        except FileNotFoundError:
            return self.vector == CONTRASTIVE_DEMO_VECTOR
        return False

    def workload(self) -> Workload:
        # generation: one row per coefficient, about 64 prompt tokens (chat template + prompt; an assumption) plus
        # the new ones; the KL: batches of 16 neutral texts (about 20 tokens) with log-probs at every position
        rows = len(self.run_coefficients)
        return Workload(batch=max(rows, KL_BATCH_SIZE), tokens=64 + self.max_new_tokens,
                        generated=self.max_new_tokens, batch_parameter="coefficients")

    def check_inputs(self) -> None:
        check_layer_parameter("layers", self.layers, self.model, model_layer_count(self.model))
        if self.builds_vector:
            return  # built in the run on this model, at every layer
        try:
            vector = load_vector(self.vector, "vector")
        except (ValueError, FileNotFoundError) as error:
            raise ValueError(f"{error} (or vector='' to build the contrastive demo's vector in this run)") from None
        check_vector_layers(vector, self.layers)
        hidden, size = model_size_of(self.model).hidden, next(iter(vector.vectors.values())).shape
        if tuple(size) != (hidden,):
            raise ValueError(f"vector={self.vector!r} holds vectors of shape {tuple(size)}; model={self.model!r} has "
                             f"hidden size {hidden}")
        built_on = vector.meta.get("model")
        if built_on is not None and built_on != self.model:
            raise ValueError(f"vector={self.vector!r} was built on model={built_on!r}, not model={self.model!r}; "
                             "give a vector built on this model, or vector='' to build the contrastive demo's vector "
                             "on it")


def vector_source(cfg: PlaygroundConfig) -> str:
    """Where the run's vector comes from, for results.json (repository-relative where it can be)."""
    if cfg.builds_vector:
        return "built in this run (the contrastive demo's defaults)"
    found = resolve_vector_path(cfg.vector)
    return str(found.relative_to(REPO_ROOT)) if found.is_relative_to(REPO_ROOT) else str(found)


def assemble_results(cfg: PlaygroundConfig, vector: SteeringVector, outputs: PlaygroundOutputs) -> dict[str, Any]:
    """results.json: parameters, the table, and a summary a sweep collects. Main metric: the fraction of the
    generated text the configured coefficient changes (its baseline, the unsteered 0, is 0 by construction); side
    effects: the KL it costs on neutral text, and the text's fluency (beside the unsteered text's) and degenerate
    flag (the evaluation kit's readings of generated text)."""
    at = outputs.row(cfg.coefficient)
    base = outputs.unsteered
    norms = {layer: float(vector[layer].norm()) for layer in outputs.layers}
    return {
        "metadata": {
            "model": cfg.model,
            "vector": vector_source(cfg),
            "vector_meta": {k: v for k, v in vector.meta.items() if k in ("method", "model", "target", "baseline",
                                                                            "position", "source")},
            "layers": outputs.layers,
            "vector_norms": norms,
            "coefficient": cfg.coefficient,
            "effective_magnitude": {layer: norm * cfg.coefficient for layer, norm in norms.items()},
            "parameters": cfg.as_dict(),
        },
        "outputs": outputs.as_dict(),
        "summary": {
            "main_metric": "text_changed",
            "main": at.changed,
            "baseline": base.changed,
            "delta": at.changed - base.changed,
            "side_effect_metric": "kl_neutral",
            "side_effect": at.kl,
            "fluency_nll": at.fluency_nll,  # the unsteered model's NLL per token of the steered text
            "baseline_fluency_nll": base.fluency_nll,
            "degenerate": at.degenerate,
        },
    }
