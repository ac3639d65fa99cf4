"""The contrastive-steering experiment (seed: "Chunky Tulu Contrastive Steering").

Activations at the last prompt token (chat template applied) of a target and a baseline
subset give `vector = mean(target) - mean(baseline)` (CAA, Rimsky et al. 2024). It is
added at one layer with `scale` while generating, and measured without generation: the
log-probability gap between held-out target and baseline replies as a function of scale,
beside the KL it costs on neutral text, with a norm-matched random direction as control.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from torch import nn

from lib.config import (
    ModelConfig,
    check_choice,
    check_layer_parameter,
    check_positive,
    check_subset,
    model_layer_count,
)
from lib.extract import extract
from lib.generation import generate, render_chat
from lib.hooks import Steering
from lib.kits.data import DEFAULT_PROMPTS, NEUTRAL_TEXTS, Example, load_subset, reply_pairs, split_examples, subset_name
from lib.kits.evaluation import (
    ContinuationPair,
    compare,
    curves,
    on_grid,
    scorer_metrics,
    side_effect_kl,
    steered,
    unsteered,
)
from lib.kits.plots import finish_figure
from lib.memory import Workload
from lib.vectors import SteeringVector, mean_difference


@dataclass
class ContrastiveConfig(ModelConfig):
    """Contrastive steering between two data sets (seed: "Chunky Tulu Contrastive Steering")."""

    notebook: ClassVar[str] = "contrastive_steering"
    SEED_NAMES: ClassVar[dict[str, str]] = {"scale": "coefficient", "curve_scales": "curve_coefficients"}
    target: str = "math"
    baseline: str = "howto"
    layer: int = 10
    scale: float = 2.0
    n_samples: int = 32
    n_eval: int = 16
    include_response: bool = False
    inference_set: str = ""
    inference_n: int = 5
    max_tokens: int = 48
    temperature: float = 0.0
    curve_scales: tuple[float, ...] | list[float] = (0.0, 1.0, 2.0, 4.0, 8.0)
    curve_prompts: str = "neutral"
    random_control: bool = True
    n_random: int = 1
    batch_size: int = 16
    seed: int = 0
    out_dir: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"layer={self.layer!r} must be a non-negative int (a decoder layer index)")
        if not isinstance(self.scale, int | float) or isinstance(self.scale, bool):
            raise ValueError(f"scale={self.scale!r} must be a number")
        for name in ("n_samples", "inference_n", "max_tokens", "batch_size", "n_random"):
            check_positive(name, getattr(self, name))
        check_positive("n_eval", self.n_eval, allow_zero=True)
        check_positive("temperature", self.temperature, allow_zero=True)
        check_choice("curve_prompts", self.curve_prompts, ("neutral", "own"))
        if not self.curve_scales or 0.0 not in [float(s) for s in self.curve_scales]:
            raise ValueError(f"curve_scales={self.curve_scales!r} must include 0.0 (the unsteered baseline)")
        self.curve_scales = [float(s) for s in self.curve_scales]
        self.target, self.baseline, self.inference_set = str(self.target), str(self.baseline), str(self.inference_set)

    @property
    def coefficient(self) -> float:
        """`scale`, the seed's name: the coefficient of the contrastive vector in the generations."""
        return float(self.scale)

    @property
    def curve_coefficients(self) -> list[float]:
        """`curve_scales`, the seed's name: the coefficients of the effect curve."""
        return list(self.curve_scales)

    def workload(self) -> Workload:
        # about 512 prompt tokens (an assumption: chat template plus a data-set prompt) and the generated ones
        return Workload(batch=self.batch_size, tokens=512 + self.max_tokens, generated=self.max_tokens)

    def check_inputs(self) -> None:
        for name in ("target", "baseline") + (("inference_set",) if self.inference_set else ()):
            check_subset(name, getattr(self, name))
        check_layer_parameter("layer", self.layer, self.model, model_layer_count(self.model))


@dataclass
class ContrastiveData:
    target_train: list[Example]
    target_eval: list[Example]
    baseline_train: list[Example]
    baseline_eval: list[Example]
    inference_prompts: list[str]


def load_data(cfg: ContrastiveConfig) -> ContrastiveData:
    target_train, target_eval = split_examples(load_subset(cfg.target, cfg.seed), cfg.n_samples, cfg.n_eval)
    baseline_train, baseline_eval = split_examples(load_subset(cfg.baseline, cfg.seed), cfg.n_samples, cfg.n_eval)
    if cfg.inference_set:
        # Prompts from the inference set, never ones the vector was built from.
        pool = load_subset(cfg.inference_set, cfg.seed + 1)
        used = {e.prompt for e in target_train + baseline_train}
        prompts = [e.prompt for e in pool if e.prompt not in used][: cfg.inference_n]
    else:
        prompts = DEFAULT_PROMPTS[: cfg.inference_n]
    return ContrastiveData(target_train, target_eval, baseline_train, baseline_eval, prompts)


def _texts(model_tokenizer: Any, examples: list[Example], include_response: bool) -> list[str]:
    return [render_chat(model_tokenizer, e.prompt) + (e.response if include_response else "") for e in examples]


def build_vector(model: nn.Module, tokenizer: Any, cfg: ContrastiveConfig, data: ContrastiveData) -> SteeringVector:
    """mean(target) - mean(baseline) at every layer; activations come from the on-disk cache when present."""
    target = extract(model, tokenizer, _texts(tokenizer, data.target_train, cfg.include_response),
                     reduction="last", batch_size=cfg.batch_size)
    baseline = extract(model, tokenizer, _texts(tokenizer, data.baseline_train, cfg.include_response),
                       reduction="last", batch_size=cfg.batch_size)
    position = "last prompt token" + (" after the reply" if cfg.include_response else "")
    return mean_difference(target, baseline, {"model": cfg.model, "target": cfg.target, "baseline": cfg.baseline,
                                              "position": position, "source": "contrastive_steering"})


def side_by_side(model: nn.Module, tokenizer: Any, cfg: ContrastiveConfig, vector: SteeringVector,
                 prompts: list[str]) -> list[dict[str, Any]]:
    """Unsteered and steered generations in one batch: coefficient 0 rows and `scale` rows."""
    steering = Steering(vector.select([cfg.layer]))
    outputs = generate(model, tokenizer, prompts * 2, max_new_tokens=cfg.max_tokens, temperature=cfg.temperature,
                       seed=cfg.seed, batch_size=cfg.batch_size, steering=steering,
                       coefficients=[0.0] * len(prompts) + [cfg.coefficient] * len(prompts))
    n = len(prompts)
    return [{"prompt_index": i, "prompt": p, "baseline": outputs[i], "steered": outputs[n + i]}
            for i, p in enumerate(prompts)]


def measure_curves(model: nn.Module, tokenizer: Any, cfg: ContrastiveConfig, vector: SteeringVector,
                   data: ContrastiveData) -> dict[str, dict[str, list[float]]]:
    """Log-prob gap and neutral-text KL against scale, for the vector and (optionally) KL-matched random controls,
    by the evaluation kit (`lib.kits.evaluation.compare` on a coefficient grid, docs/evaluation.md).

    curve_prompts="neutral": held-out replies are scored after the built-in neutral prompts (cycled), so the gap
    measures a preference for the target set's style itself; "own": after their own prompts. The gap is the mean
    over held-out pairs of target minus baseline log-prob per token (the two sets' mean difference, as before); the
    effect is its paired difference from the unsteered gap, with a bootstrap interval over pairs. The KL reads the
    neutral texts raw, as it always did here. The random control was one norm-matched direction until the kit; it
    is now `n_random` directions matched to the vector's KL at each scale ("random" curve: their mean)."""
    scales = sorted(set(cfg.curve_coefficients) | {0.0, cfg.coefficient})
    target = reply_pairs(data.target_eval, cfg.curve_prompts)
    baseline = reply_pairs(data.baseline_eval, cfg.curve_prompts)
    steering = steered("steering", vector.select([cfg.layer]), 1.0)
    if not target:  # n_eval = 0: only the side effect
        kls = side_effect_kl(model, tokenizer, on_grid([steering], scales), NEUTRAL_TEXTS, cfg.batch_size, "raw")
        return {"steering": {"scale": scales, "kl": [kls[f"steering@{c:g}"] for c in scales]}}
    scorer = ContinuationPair([p for p, _ in target], [r for _, r in target], [r for _, r in baseline], main="gap",
                              baseline_prompts=[p for p, _ in baseline])
    table = compare(model, tokenizer, [unsteered(), steering], scorer, coefficients=scales, baseline="unsteered",
                    n_random=cfg.n_random if cfg.random_control else 0, kl_rendering="raw", batch_size=cfg.batch_size,
                    seed=cfg.seed)
    rows = {metric: curves(table, metric).set_index("coefficient") for metric in scorer_metrics(table)}
    gap = rows["gap"]
    out = {"steering": {"scale": scales, "target_logprob": rows["target_logprob"].value.tolist(),
                        "baseline_logprob": rows["baseline_logprob"].value.tolist(), "gap": gap.value.tolist(),
                        "gap_low": gap.low.tolist(), "gap_high": gap.high.tolist(), "effect": gap.effect.tolist(),
                        "effect_low": gap.effect_low.tolist(), "effect_high": gap.effect_high.tolist(),
                        "kl": gap.kl.tolist()}}
    if cfg.random_control:  # at scale 0 the control is the unsteered model itself; NaN where none was matched
        unsteered_gap = float(table[(table.condition == "unsteered") & (table.metric == "gap")].value.iloc[0])
        zero = gap.index == 0.0
        column = {name: gap[name] if name in gap else pd.Series(float("nan"), index=gap.index)
                  for name in ("random_mean", "random_kl", "control_p", "control_floor", "control_note")}
        out["random"] = {"scale": scales,
                         "gap": np.where(zero, unsteered_gap, unsteered_gap + column["random_mean"]).tolist(),
                         "kl": np.where(zero, 0.0, column["random_kl"]).tolist(),
                         "control_p": column["control_p"].tolist(), "control_floor": column["control_floor"].tolist(),
                         "control_note": [note if isinstance(note, str) else "" for note in column["control_note"]],
                         "n_random": cfg.n_random}
    return out


def assemble_results(cfg: ContrastiveConfig, vector: SteeringVector, generations: list[dict[str, Any]],
                     curves: dict[str, dict[str, list[float]]], n_inference: int) -> dict[str, Any]:
    norm = float(vector[cfg.layer].norm())
    steering_curve = curves["steering"]
    at = steering_curve["scale"].index(cfg.coefficient)
    zero = steering_curve["scale"].index(0.0)
    summary: dict[str, Any] = {"side_effect_metric": "kl_neutral", "side_effect": steering_curve["kl"][at]}
    if "gap" in steering_curve:
        summary |= {"main_metric": "logprob_gap", "main": steering_curve["gap"][at],
                    "baseline": steering_curve["gap"][zero],
                    "delta": steering_curve["gap"][at] - steering_curve["gap"][zero]}
        if "effect_low" in steering_curve:
            summary["delta_ci"] = [steering_curve["effect_low"][at], steering_curve["effect_high"][at]]
        if "random" in curves:
            summary["random_delta"] = curves["random"]["gap"][at] - curves["random"]["gap"][zero]
            summary["random_kl"] = curves["random"]["kl"][at]
            # what the vector does beyond a random direction that changes the model as much: the number to trust
            summary["specific_delta"] = summary["delta"] - summary["random_delta"]
            if "control_p" in curves["random"]:
                summary["control_p"] = curves["random"]["control_p"][at]
                summary["control_floor"] = curves["random"]["control_floor"][at]
    return {
        "metadata": {
            "target_subset": {"key": cfg.target, "name": subset_name(cfg.target)},
            "baseline_subset": {"key": cfg.baseline, "name": subset_name(cfg.baseline)},
            "n_samples": cfg.n_samples,
            "layer": cfg.layer,
            "scale": cfg.scale,  # results keep the seed's name
            "vector_norm": norm,
            "effective_magnitude": norm * cfg.scale,
            "inference_set": cfg.inference_set or "default_prompts",
            "inference_size": n_inference,
            "model": cfg.model,
            "n_eval": cfg.n_eval,
            "position": vector.meta.get("position"),
            "parameters": cfg.as_dict(),
        },
        "results": generations,
        "curves": curves,
        "summary": summary,
    }


# ----------------------------------------------------------------------------- figures


def effect_curve_figure(curves: dict[str, dict[str, list[float]]], title: str, path: Path | None = None) -> Any:
    """Left: target-minus-baseline log-prob gap against scale (shaded: its bootstrap interval); right: KL on neutral
    text. Random directions matched to the vector's KL are the control: a real effect separates from them."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    styles = {"steering": {"color": "C0", "marker": "o"}, "random": {"color": "0.5", "marker": "x", "ls": "--"}}
    for name, curve in curves.items():
        if "gap" in curve:
            left.plot(curve["scale"], curve["gap"], label=name, **styles.get(name, {}))
        if "gap_low" in curve:  # the bootstrap interval over held-out pairs
            left.fill_between(curve["scale"], curve["gap_low"], curve["gap_high"], alpha=0.2,
                              color=styles.get(name, {}).get("color"))
        right.plot(curve["scale"], curve["kl"], label=name, **styles.get(name, {}))
    if "steering" in curves and "gap" in curves["steering"]:
        zero = curves["steering"]["scale"].index(0.0)
        left.axhline(curves["steering"]["gap"][zero], color="k", lw=0.8, ls=":", label="unsteered")
    left.set(xlabel="scale", ylabel="log p(target reply) - log p(baseline reply)", title="effect")
    right.set(xlabel="scale", ylabel="KL(unsteered || steered), nats/token", title="side effect (neutral text)")
    return finish_figure(fig, (left, right), title, path)
