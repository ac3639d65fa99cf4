"""The math-steering experiment's steps (notebook `math_steering`): vectors from base vs finetuned,
then pass@k of base, finetuned and base + w * vector on one eval set, with side effects."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from lib.config import (
    ModelConfig,
    check_choice,
    check_finetuned,
    check_math_source,
    check_positive,
    check_sampled,
    model_layer_count,
)
from lib.evals import mean_kl, next_token_kl, text_logprobs
from lib.hooks import Steering
from lib.io import repo_path
from lib.kits.controls import KLUnreachable, kl_matched_random
from lib.kits.data import NEUTRAL_TEXTS
from lib.kits.mathdata import MathProblem, build_messages, train_eval_split
from lib.kits.matheval import evaluate_math
from lib.kits.plots import finish_figure
from lib.kits.uncertainty import bootstrap
from lib.memory import Workload
from lib.model_diff import base_side, difference_vector, finetuned_side
from lib.models import load_model
from lib.vectors import SteeringVector, random_like


@dataclass
class MathSteeringConfig(ModelConfig):
    """Steering vectors from base vs GRPO-finetuned activations, evaluated on a weight grid (the seed's "Day 4")."""

    notebook: ClassVar[str] = "math_steering"
    SEED_NAMES: ClassVar[dict[str, str]] = {"weights": "coefficients"}  # the seed's "w" in base + w * vector
    finetuned: str = "out/grpo_math/default/final_model"
    source: str = "arithmetic"
    train_size: int = 16
    eval_size: int = 8
    max_examples: int = 16
    reduction: str = "completion_mean"
    weights: tuple[float, ...] | list[float] = (0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35)
    num_completions_eval: int = 1
    eval_temperature: float = 0.0
    max_completion_length: int = 32
    one_shot: bool = True
    random_control: bool = True
    batch_size: int = 16
    seed: int = 0
    out_dir: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("train_size", "eval_size", "max_examples", "num_completions_eval", "max_completion_length",
                     "batch_size"):
            check_positive(name, getattr(self, name))
        check_choice("reduction", self.reduction, ("completion_mean", "prompt_last", "all_mean"))
        if not self.weights or 0.0 not in [float(w) for w in self.weights]:
            raise ValueError(f"weights={self.weights!r} must include 0.0 (the unsteered base in the same batch)")
        self.weights = [float(w) for w in self.weights]
        check_sampled("num_completions_eval", self.num_completions_eval, "eval_temperature", self.eval_temperature)

    @property
    def coefficients(self) -> list[float]:
        """`weights`, the seed's name: coefficients of the steering vector, one batch row each."""
        return list(self.weights)

    def workload(self) -> Workload:
        return Workload(batch=self.batch_size, tokens=256 + self.max_completion_length,
                        generated=self.max_completion_length, logits="last")  # finetuned first, freed, then base

    def check_inputs(self) -> None:
        check_math_source("source", self.source)
        check_finetuned(self.finetuned)
        model_layer_count(self.model)


def finetuned_source(finetuned: str) -> str:
    """The finetuned model to load: a local folder (absolute or repo-relative) or a hub id."""
    local = repo_path(finetuned)
    if local.exists():
        return str(local)
    if finetuned.startswith(("out/", "./", "/")):
        raise FileNotFoundError(f"finetuned={finetuned!r} does not exist: run the grpo_math notebook first "
                                "(./just run grpo_math ...) and pass its final_model folder")
    return finetuned  # a hub id


@dataclass
class FinetunedPass:
    """What the notebook keeps of the finetuned model after freeing it: its activations on the vector's texts,
    the completions they end with, its evaluation and its log-probs on neutral text (for the KL from base)."""

    activations: dict[int, Any]
    completions: list[str]
    evaluation: Any
    neutral_logprobs: list[Any]


def _settings(cfg: MathSteeringConfig) -> dict[str, Any]:
    return {"n_completions": cfg.num_completions_eval, "temperature": cfg.eval_temperature,
            "max_new_tokens": cfg.max_completion_length, "batch_size": cfg.batch_size, "seed": cfg.seed,
            "one_shot": cfg.one_shot}


def _prompts(cfg: MathSteeringConfig, train: list[MathProblem]) -> list[Any]:
    return [build_messages(p.question, one_shot=cfg.one_shot) for p in train[: cfg.max_examples]]


def problems(cfg: MathSteeringConfig) -> tuple[list[MathProblem], list[MathProblem]]:
    return train_eval_split(cfg.source, cfg.train_size, cfg.eval_size, cfg.seed)


def finetuned_pass(cfg: MathSteeringConfig, train: list[MathProblem], eval_problems: list[MathProblem]
                   ) -> FinetunedPass:
    """Everything the finetuned model is needed for, then it is freed: base and finetuned are never in memory
    together (at 7B that halves the peak)."""
    tuned, tokenizer = load_model(finetuned_source(cfg.finetuned), **cfg.loading())
    activations, completions = finetuned_side(tuned, tokenizer, _prompts(cfg, train), reduction=cfg.reduction,
                                              max_new_tokens=cfg.max_completion_length, batch_size=cfg.batch_size)
    result = FinetunedPass(activations, completions, evaluate_math(tuned, tokenizer, eval_problems,
                                                                   **_settings(cfg))[None],
                           text_logprobs(tuned, tokenizer, NEUTRAL_TEXTS, batch_size=cfg.batch_size))
    del tuned
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def load_base(cfg: MathSteeringConfig) -> tuple[nn.Module, Any]:
    return load_model(cfg.model, **cfg.loading())


def build_vector(cfg: MathSteeringConfig, base: nn.Module, tokenizer: Any, train: list[MathProblem],
                 finetuned: FinetunedPass) -> SteeringVector:
    prompts = _prompts(cfg, train)
    acts_base = base_side(base, tokenizer, prompts, finetuned.completions, reduction=cfg.reduction,
                          batch_size=cfg.batch_size)
    return difference_vector(finetuned.activations, acts_base, cfg.reduction, len(prompts),
                             {"model": cfg.model, "finetuned": cfg.finetuned, "source": cfg.source, "seed": cfg.seed})


def evaluate(cfg: MathSteeringConfig, base: nn.Module, tokenizer: Any, eval_problems: list[MathProblem],
             vector: SteeringVector, finetuned: FinetunedPass) -> dict[str, Any]:
    """Every configuration on the same problems and generation settings; weights run as one batch."""
    settings = _settings(cfg)
    steering = Steering(vector)
    steered = evaluate_math(base, tokenizer, eval_problems, steering=steering, coefficients=cfg.coefficients,
                            **settings)
    evaluation: dict[str, Any] = {
        "base": steered[0.0].summary(),  # weight 0 is the unsteered base, in the same batch
        "finetuned": finetuned.evaluation.summary(),
        "steered": [steered[w].summary() for w in cfg.coefficients],
        "kl_steered": next_token_kl(base, tokenizer, NEUTRAL_TEXTS, steering=steering, coefficients=cfg.coefficients,
                                    batch_size=cfg.batch_size).tolist(),
        "kl_finetuned": mean_kl(text_logprobs(base, tokenizer, NEUTRAL_TEXTS, batch_size=cfg.batch_size),
                                finetuned.neutral_logprobs),
        "sample_completions": {str(w): steered[w].completions[0][:1] for w in cfg.coefficients},
    }
    evaluation["effects"] = [pass1_effect(steered[w], steered[0.0], cfg.seed) for w in cfg.coefficients]
    if cfg.random_control:
        evaluation |= random_control(cfg, base, tokenizer, eval_problems, vector, evaluation["kl_steered"])
    return evaluation


def pass1_effect(result: Any, base: Any, seed: int = 0) -> dict[str, float]:
    """pass@1 minus the base's on the same problems, with a paired bootstrap interval over problems (per-problem
    pass@1 = correct / completions); `lib.kits.uncertainty.bootstrap`. Two or more problems are needed."""
    def per_problem(evaluation: Any) -> np.ndarray:
        return np.asarray(evaluation.correct_counts, dtype=np.float64) / evaluation.n_completions

    estimate = bootstrap(lambda a, b: float(np.mean(a - b)), per_problem(result), per_problem(base), seed=seed)
    return {"value": estimate.value, "low": estimate.low, "high": estimate.high, "n": estimate.n}


def random_control(cfg: MathSteeringConfig, base: nn.Module, tokenizer: Any, eval_problems: list[MathProblem],
                   vector: SteeringVector, kl_steered: list[float]) -> dict[str, Any]:
    """One random direction (per-layer norms of the vector, seed `cfg.seed`) scaled, at each weight, to the KL the
    vector has there (`lib.kits.controls.kl_matched_random`, raw neutral text as `kl_steered`): a control that
    changes the model as much as the steering does. A norm-matched direction was used before the evaluation kit.
    The scales differ per weight, so the control runs as one batch with the scales as its coefficients. Where no
    scale reaches the vector's KL, that weight has no control (`random_notes` says why; None in `random`)."""
    scales: list[float | None] = []
    notes: dict[str, str] = {}
    for weight, kl in zip(cfg.coefficients, kl_steered, strict=True):
        if weight == 0.0 or kl <= 0:
            scales.append(0.0)
            continue
        try:
            _, match = kl_matched_random(base, tokenizer, vector, kl, seed=cfg.seed, rendering="raw",
                                         batch_size=cfg.batch_size)
            scales.append(match.scale)
        except KLUnreachable as error:
            notes[str(weight)] = str(error)
            scales.append(None)
    run = sorted({s for s in scales if s is not None})
    control = Steering(random_like(vector, seed=cfg.seed))
    randomised = evaluate_math(base, tokenizer, eval_problems, steering=control, coefficients=run, **_settings(cfg))
    kls = dict(zip(run, next_token_kl(base, tokenizer, NEUTRAL_TEXTS, steering=control, coefficients=run,
                                      batch_size=cfg.batch_size).tolist(), strict=True))
    return {"random": [None if s is None else randomised[s].summary() for s in scales],
            "kl_random": [None if s is None else kls[s] for s in scales],  # re-measured at the matched scale
            "random_scales": scales, "random_notes": notes,
            "random_effects": [None if s is None else pass1_effect(randomised[s], randomised[0.0], cfg.seed)
                               for s in scales]}


def table(evaluation: dict[str, Any], weights: list[float]) -> pd.DataFrame:
    """One row per configuration; steered and random rows carry their pass@1 effect vs the base with its interval
    (`effect`, `effect_low`, `effect_high`); a random row without a KL-matched control says so."""
    rows = [{"config": "base", **_row(evaluation["base"]), "kl_from_base": 0.0},
            {"config": "finetuned", **_row(evaluation["finetuned"]), "kl_from_base": evaluation["kl_finetuned"]}]
    for kind, effects in (("steered", "effects"), ("random", "random_effects")):
        results, kls = evaluation.get(kind, []), evaluation.get(f"kl_{kind}", [])
        for at, (weight, result, kl) in enumerate(zip(weights, results, kls, strict=False)):
            row: dict[str, Any] = {"config": f"{kind} w={weight}"}
            if result is None:
                rows.append({**row, "note": evaluation.get("random_notes", {}).get(str(weight), "no control")})
                continue
            effect = (evaluation.get(effects) or [None] * len(weights))[at]
            if effect is not None:
                row |= {"effect": effect["value"], "effect_low": effect["low"], "effect_high": effect["high"]}
            rows.append({**row, **_row(result), "kl_from_base": kl})
    return pd.DataFrame(rows).set_index("config").round(4)


def _row(result: dict[str, Any]) -> dict[str, Any]:
    return {**{f"pass@{k}": v for k, v in result["pass_at"].items()}, "ci_low": result["pass1_ci"][0],
            "ci_high": result["pass1_ci"][1], "answer_rate": result.get("answer_rate"),
            "n_problems": result["n_problems"]}


def results(cfg: MathSteeringConfig, vector: SteeringVector, evaluation: dict[str, Any]) -> dict[str, Any]:
    steered = [r["pass_at"]["1"] for r in evaluation["steered"]]
    best = max(range(len(steered)), key=steered.__getitem__)
    summary = {
        "main_metric": "pass@1, best steered weight",
        "main": steered[best],
        "best_weight": cfg.coefficients[best],
        "baseline": evaluation["base"]["pass_at"]["1"],
        "finetuned": evaluation["finetuned"]["pass_at"]["1"],
        "side_effect_metric": "KL from base on neutral text at the best weight",
        "side_effect": evaluation["kl_steered"][best],
        "kl_finetuned": evaluation["kl_finetuned"],
        "n_problems": evaluation["base"]["n_problems"],
        "comparisons": len(steered) - 1,  # weights other than 0 the best was picked from

        "n_completions": evaluation["base"]["n_completions"],
    }
    if evaluation.get("effects"):
        effect = evaluation["effects"][best]
        summary["effect_ci"] = [effect["low"], effect["high"]]  # pass@1 minus the base's, paired over problems
    if evaluation.get("random") and evaluation["random"][best] is not None:
        summary["random_at_best"] = evaluation["random"][best]["pass_at"]["1"]  # KL-matched to the best weight
    return {"parameters": cfg.as_dict(), "vector_norms": vector.norms(), "weights": cfg.coefficients, **evaluation,
            "summary": summary}


# ----------------------------------------------------------------------------- figures


def weight_curve_figure(weights: list[float], steered: list[dict], base: dict, finetuned: dict, title: str,
                        path: Path | None = None, random: list[dict] | None = None) -> Any:
    """Steered pass@1 against weight with 95% intervals; base and finetuned as horizontal lines."""
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6.5, 4))

    def band(result: dict, color: str, label: str) -> None:
        value = result["pass_at"]["1"]
        axis.axhline(value, color=color, ls="--", label=f"{label} {value:.2f}")
        axis.axhspan(result["pass1_ci"][0], result["pass1_ci"][1], color=color, alpha=0.1)

    band(base, "k", "base")
    band(finetuned, "C3", "finetuned")
    for results, label, color in ((steered, "base + w * vector", "C0"),
                                  (random or [], "random direction at the same KL", "0.5")):
        kept = [(w, r) for w, r in zip(weights, results, strict=False) if r is not None]  # None: no matched control
        if not kept:
            continue
        values = [r["pass_at"]["1"] for _, r in kept]
        errors = [[v - r["pass1_ci"][0] for v, (_, r) in zip(values, kept, strict=True)],
                  [r["pass1_ci"][1] - v for v, (_, r) in zip(values, kept, strict=True)]]
        axis.errorbar([w for w, _ in kept], values, yerr=errors, marker="o", capsize=3, color=color, label=label)
    axis.set(xlabel="steering weight (all layers)", ylabel="pass@1", title=title)
    return finish_figure(fig, (axis,), title, path, suptitle=False)
