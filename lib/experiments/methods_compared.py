"""The field's ways to steer one behaviour, on identical rows, measured by the evaluation kit (issue "Beyond
addition", item 4; notebook `methods_compared`).

The behaviour is a persona trait (pirate by default) whose headroom is measured on the embedded default: its system
prompt moved the likelihood judge by +1.01 [0.87, 1.14] (journal 2026-12-06, persona_compare). On the same held-out
questions, each method writes replies that the same judge scores:

- prompting: the trait's system prompt;
- activation addition along a direction from the same activations (the last prompt token under the trait's system
  prompt and a neutral one): mean difference (Rimsky et al. 2024), PCA of the paired differences (Zou et al. 2023),
  LDA and a logistic probe (AxBench, Wu et al. 2025), each as a unit direction times the layer's median residual
  norm, so a coefficient is a fraction of that norm;
- weight steering (Fierro & Roger 2025): LoRA trained on the model's own replies under the trait prompt and under the
  neutral one (without either prompt), steered by the difference of the two merged deltas;
- directional ablation (Arditi et al. 2024) for a suppression: the mean-difference direction removed from every
  residual write while the trait's system prompt asks for it;
- conditional steering (CAST, Lee et al. 2025): the mean-difference vector applied only where a gate, chosen by grid
  search on labelled prompts, reads a food question;
- a monitor (Chen et al. 2025): each direction's projection on replies, AUROC of the prompted replies against the
  plain ones, and each estimator's held-out AUC per layer on prompts.

Nulls: random directions and directions built from label-shuffled activations, each a curve over the same
coefficients, read at the same KL as every method (`at_matched_kl`), and random-direction ablations. Every vector and
delta is compared where it changes the model equally (KL on neutral text), with intervals over questions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from lib.config import ModelConfig, check_layer_parameter, check_positive, model_layer_count
from lib.generation import generate
from lib.kits.controls import shuffled_labels
from lib.kits.evaluation import at_matched_kl, curves
from lib.kits.persona import FOOD_QUESTIONS, check_trait, split_questions
from lib.kits.probes import ESTIMATORS, auroc
from lib.kits.uncertainty import Estimate, bootstrap
from lib.memory import Workload
from lib.vectors import SteeringVector, mean_difference, random_like

NULL_PREFIXES = ("random", "shuffled")  # families that are controls, not methods


@dataclass
class MethodsComparedConfig(ModelConfig):
    """Prompting, four direction estimators, weight steering, ablation and a gate on one persona trait."""

    notebook: ClassVar[str] = "methods_compared"
    trait: str = "pirate"
    layer: int = 12
    coefficients: tuple[float, ...] | list[float] = (0.125, 0.25, 0.5)  # of the layer's median residual norm
    estimators: tuple[str, ...] | list[str] = ("mean_difference", "pca", "lda", "probe")
    weight_coefficients: tuple[float, ...] | list[float] = (0.5, 1.0)  # of the trained delta difference
    weight_steps: int = 4  # LoRA steps per side; 0 leaves weight steering out
    weight_rank: int = 4
    weight_learning_rate: float = 1e-3
    gate_coefficient: float = 0.5  # one of `coefficients`: the gated vector and its ungated twin
    n_random: int = 1  # random directions, each a curve
    n_shuffled: int = 1  # label-shuffled directions, each a curve
    kl_budgets: tuple[float, ...] | list[float] = (0.05, 0.1)
    n_train: int = 16
    n_eval: int = 8
    max_new_tokens: int = 24
    n_boot: int = 1000
    batch_size: int = 16
    seed: int = 0
    out_dir: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_trait(self.trait)
        for name in ("n_train", "n_eval", "max_new_tokens", "n_boot", "batch_size", "weight_rank"):
            check_positive(name, getattr(self, name))
        for name in ("n_random", "n_shuffled", "weight_steps"):
            check_positive(name, getattr(self, name), allow_zero=True)
        check_positive("weight_learning_rate", self.weight_learning_rate)
        if self.n_train < 2:
            raise ValueError(f"n_train={self.n_train}: LDA, the probe and PCA need at least 2 questions per side")
        split_questions(self.n_train, self.n_eval)
        for name in ("coefficients", "weight_coefficients", "kl_budgets"):
            values = getattr(self, name)
            if not values or any(not isinstance(v, int | float) or isinstance(v, bool) or v <= 0 for v in values):
                raise ValueError(f"{name}={values!r} must be positive numbers, e.g. [0.25, 0.5] (0 is added itself)")
            if len(set(values)) != len(values):
                raise ValueError(f"{name}={values!r} repeats a value")
            setattr(self, name, sorted(float(v) for v in values))
        unknown = [name for name in self.estimators if name not in ESTIMATORS]
        if unknown or not self.estimators or len(set(self.estimators)) != len(self.estimators):
            raise ValueError(f"estimators={list(self.estimators)!r}: give distinct names among {sorted(ESTIMATORS)}")
        self.estimators = list(self.estimators)
        if "mean_difference" not in self.estimators:
            raise ValueError("estimators must include 'mean_difference': ablation, the gate and the monitor's "
                             "reference use it")
        if float(self.gate_coefficient) not in self.coefficients:
            raise ValueError(f"gate_coefficient={self.gate_coefficient} must be one of coefficients="
                             f"{self.coefficients}: the gated vector is compared with the same vector ungated")

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

    @property
    def food_rows(self) -> np.ndarray:
        """[n_eval] True where the held-out question is about food (where the gate should open)."""
        return np.array([question in FOOD_QUESTIONS for question in self.eval_questions])


# ----------------------------------------------------------------------------- directions


def on_residual_scale(direction: torch.Tensor, norm: float, layer: int, meta: Mapping[str, Any]) -> SteeringVector:
    """The unit direction times the layer's median residual norm: coefficient c then adds c of a typical residual,
    so estimators of different lengths are compared at the same norm (and, by `at_matched_kl`, at the same KL)."""
    unit = direction.float() / direction.float().norm().clamp_min(1e-12)
    return SteeringVector({layer: unit * norm}, dict(meta))


def estimator_vectors(trait: Mapping[int, torch.Tensor], neutral: Mapping[int, torch.Tensor], layer: int,
                      estimators: Sequence[str], norm: float) -> dict[str, SteeringVector]:
    """{estimator: its direction at `layer` on the residual scale}, from paired training activations."""
    picked_trait, picked_neutral = {layer: trait[layer]}, {layer: neutral[layer]}
    return {name: on_residual_scale(ESTIMATORS[name](picked_trait, picked_neutral)[layer], norm, layer,
                                    {"method": name}) for name in estimators}


def shuffled_vectors(trait: Mapping[int, torch.Tensor], neutral: Mapping[int, torch.Tensor], layer: int,
                     n_shuffles: int, norm: float, seed: int = 0) -> list[SteeringVector]:
    """Mean differences of the pooled training activations under shuffled trait/neutral labels (the label-shuffled
    null: the whole estimator run on labels that carry no trait), on the residual scale."""
    if n_shuffles == 0:
        return []
    pooled = torch.cat([trait[layer], neutral[layer]]).float()
    labels = [True] * len(trait[layer]) + [False] * len(neutral[layer])
    out = []
    for k, shuffled in enumerate(shuffled_labels(labels, n_shuffles, seed)):
        mask = torch.tensor(shuffled)
        direction = mean_difference({layer: pooled[mask]}, {layer: pooled[~mask]})[layer]
        out.append(on_residual_scale(direction, norm, layer, {"method": "label_shuffled", "shuffle": k}))
    return out


def random_vectors(like: SteeringVector, n_random: int, seed: int = 0) -> list[SteeringVector]:
    """Random directions with `like`'s norm (seeds seed+1, ...)."""
    return [random_like(like, seed=seed + 1 + k) for k in range(n_random)]


def null_family(family: str) -> bool:
    return family.startswith(NULL_PREFIXES)


# ----------------------------------------------------------------------------- reading the table


def matched_table(table: pd.DataFrame, kl_budgets: Sequence[float]) -> pd.DataFrame:
    """Each family's effect at each KL budget (positive side) with its interval, beside the nulls at that KL: the
    largest |effect| of any random or label-shuffled family there, and a verdict by a rule of ours (not a seed's):
    "holds" when the interval's low end is above that null, "fails" when its high end is below it, else
    "inconclusive"; NaN-budget rows (the curve never reaches the KL) say "not reached"."""
    matched = at_matched_kl(table, kl_budgets)
    matched = matched[matched.side == "+"].drop(columns="side").reset_index(drop=True)
    nulls = matched[matched.family.map(null_family)]
    null_at = nulls.assign(size=nulls.effect.abs()).groupby("kl")["size"].max()
    rows = []
    for _, row in matched[~matched.family.map(null_family)].iterrows():
        null = float(null_at.get(row.kl, np.nan))
        if np.isnan(row.effect):
            verdict = "not reached"
        elif np.isnan(null):
            verdict = "no null at this KL"
        elif row.effect_low > null:
            verdict = "holds"
        elif row.effect_high < null:
            verdict = "fails"
        else:
            verdict = "inconclusive"
        rows.append({**row.to_dict(), "null_max_abs": null, "beats_nulls (ours)": verdict})
    return pd.DataFrame(rows)


def paired_effect(treated: Sequence[float], control: Sequence[float], n_boot: int, seed: int = 0) -> Estimate:
    """mean(treated - control) over the rows both have (NaN dropped) with a paired bootstrap interval; one row (or
    none) gives the value with a NaN interval: an interval needs two rows."""
    a, b = np.asarray(treated, dtype=np.float64), np.asarray(control, dtype=np.float64)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) < 2:
        value = float(np.mean(a - b)) if len(a) else float("nan")
        return Estimate(value, float("nan"), float("nan"), len(a))
    return bootstrap(lambda x, y: float(np.mean(x - y)), a, b, n_boot=n_boot, seed=seed)


def suppression_table(table: pd.DataFrame, metric: str, prompted: str, ablations: Sequence[str],
                      n_boot: int, seed: int = 0) -> pd.DataFrame:
    """Each ablation under the trait prompt against the prompt alone: the paired change of `metric` (negative:
    suppressed) with its interval, and its KL from the plain model."""
    scores = table.attrs["scores"]
    kls = table[table.metric == metric].set_index("condition").kl
    rows = []
    for name in ablations:
        estimate = paired_effect(scores[name][metric], scores[prompted][metric], n_boot, seed)
        rows.append({"condition": name, "change_vs_prompt": estimate.value, "low": estimate.low,
                     "high": estimate.high, "kl": float(kls[name])})
    return pd.DataFrame(rows)


def gate_table(table: pd.DataFrame, metric: str, baseline: str, gated: str, ungated: str, food: np.ndarray,
               n_boot: int, seed: int = 0) -> pd.DataFrame:
    """The gated vector's and the same vector's ungated effect on `metric`, on the food rows (where the gate should
    open) and on the others (where it should not), each against the baseline with its interval."""
    scores = table.attrs["scores"]
    rows = []
    for name in (gated, ungated):
        for label, mask in (("food", food), ("other", ~food)):
            estimate = paired_effect(np.asarray(scores[name][metric])[mask],
                                     np.asarray(scores[baseline][metric])[mask], n_boot, seed)
            rows.append({"condition": name, "rows": label, "n": int(mask.sum()), "effect": estimate.value,
                         "low": estimate.low, "high": estimate.high})
    return pd.DataFrame(rows)


def reply_monitor(projections: Mapping[str, Sequence[float]], positive: Sequence[bool]) -> pd.DataFrame:
    """Per direction, the AUROC of its per-reply projection at telling the prompted replies (True) from the plain
    ones, over replies with a score (an empty reply has none). Chance is 0.5; the null directions give its spread."""
    labels = np.asarray(positive, dtype=bool)
    rows = []
    for name, values in projections.items():
        scores = np.asarray(values, dtype=np.float64)
        keep = ~np.isnan(scores)
        usable = labels[keep].any() and not labels[keep].all()
        rows.append({"direction": name, "auroc": auroc(scores[keep], labels[keep]) if usable else float("nan"),
                     "n": int(keep.sum()), "null": null_family(name), "chance": 0.5})
    return pd.DataFrame(rows)


def frontier_curves_figure(table: pd.DataFrame, points: Sequence[str] = (), metric: str | None = None,
                           path: Any = None) -> Any:
    """Effect against KL: one curve per family (nulls grey, dashed), each point with its interval, and the single
    conditions in `points` (a prompt, an ablation, a gate) as stars."""
    import matplotlib.pyplot as plt

    from lib.kits.plots import finish_figure

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for family, curve in curves(table, metric).groupby("family", sort=False):
        curve = curve[curve.coefficient >= 0]
        style = {"color": "grey", "linestyle": "--", "alpha": 0.6} if null_family(family) else {"marker": "o"}
        line = axis.plot(curve.kl, curve.effect, label=family, **style)[0]
        axis.fill_between(curve.kl, curve.effect_low, curve.effect_high, color=line.get_color(), alpha=0.12)
    metric = metric or table.attrs.get("main")
    for name in points:
        row = table[(table.condition == name) & (table.metric == metric)].iloc[0]
        axis.errorbar([row.kl], [row.effect], yerr=[[row.effect - row.effect_low], [row.effect_high - row.effect]],
                      marker="*", markersize=10, capsize=3, linestyle="none", label=name)
    axis.axhline(0, color="grey", linewidth=0.5)
    axis.set(xlabel="KL on neutral text (nats per token)", ylabel=f"{metric}: effect vs unsteered")
    axis.legend(fontsize=7, loc="best")
    return finish_figure(figure, (axis,), f"{metric} against side effect, every method (grey: nulls)", path)


def summary(table: pd.DataFrame, matched: pd.DataFrame, kl_budget: float) -> dict[str, Any]:
    """The mean-difference vector's judge score at its strongest coefficient beside the unsteered baseline and the
    prompt, its KL, and the method with the largest effect at the first KL budget."""
    judge = table[table.metric == table.attrs["main"]].set_index("condition")
    strongest = curves(table).query("family == 'mean_difference'").sort_values("coefficient").condition.iloc[-1]
    at_budget = matched[matched.kl == kl_budget].dropna(subset=["effect"])
    best = at_budget.loc[at_budget.effect.idxmax()] if len(at_budget) else None
    return {"main": float(judge.loc[strongest, "value"]), "baseline": float(judge.loc["unsteered", "value"]),
            "prompt": float(judge.loc["system prompt", "value"]), "side_effect": float(judge.loc[strongest, "kl"]),
            "best_at_kl": None if best is None else str(best.family),
            "best_effect_at_kl": None if best is None else float(best.effect), "kl_budget": float(kl_budget)}


def conditions_with_system(condition: Any, system: str, name: str) -> Any:
    """`condition` (e.g. an ablation) applied while the trait's system prompt is in place."""
    return replace(condition, name=name, system=system)


def persona_replies(model: nn.Module, tokenizer: Any, questions: Sequence[str], system: str, max_new_tokens: int,
                    batch_size: int) -> list[str]:
    """The model's own greedy replies under `system` (the training data of weight steering's two adapters)."""
    return generate(model, tokenizer, [[{"role": "system", "content": system}, {"role": "user", "content": q}]
                                       for q in questions], max_new_tokens=max_new_tokens, batch_size=batch_size,
                    progress=False)


def persona_delta(model: nn.Module, tokenizer: Any, questions: Sequence[str], trait_system: str,
                  neutral_system: str, cfg: MethodsComparedConfig) -> tuple[Any, dict[str, Any]]:
    """Weight steering (Fierro & Roger 2025): a LoRA on the model's replies under the trait's system prompt and one
    on its replies under the neutral one, both trained without a system prompt; the delta is their difference.
    Returns (delta, a record of the training: losses before and after, the replies' first words)."""
    from lib.kits.adapters import SFTPair, train_adapter

    record: dict[str, Any] = {}
    deltas = []
    for side, system in (("trait", trait_system), ("neutral", neutral_system)):
        replies = persona_replies(model, tokenizer, questions, system, cfg.max_new_tokens, cfg.batch_size)
        pairs = [SFTPair(q, r) for q, r in zip(questions, replies, strict=True) if r.strip()]
        delta, losses = train_adapter(model, tokenizer, pairs, "lora", seed=cfg.seed, steps=cfg.weight_steps,
                                      batch_size=min(8, len(pairs)), learning_rate=cfg.weight_learning_rate,
                                      rank=cfg.weight_rank)
        deltas.append(delta)
        record[side] = {"pairs": len(pairs), "loss_before": delta.meta["train_loss_before"],
                        "loss_after": delta.meta["train_loss_after"], "reply_example": replies[0][:120]}
    difference = deltas[0] - deltas[1]
    difference.meta.update({"method": "weight_steering_lora_difference", "steps": cfg.weight_steps,
                            "rank": cfg.weight_rank})
    return difference, record
