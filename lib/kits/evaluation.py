"""One call for the common question: what did each condition do to a behaviour, beside what it did to the model?

`compare(model, tokenizer, conditions, scorer, ...)` runs every condition on identical rows, as few batched passes
as the conditions allow (vectors and prompts share one: per-row vectors, coefficients and system prompts; a weight
delta needs its own pass), scores them with one scorer, measures the side effect of each condition the same way
(KL on neutral text, prompts included), ranks vector conditions among KL-matched random directions, and returns a
tidy table: condition x coefficient x metric with a bootstrap interval, KL, and the control rank with its floor.

Why (issue "One evaluation kit"): each experiment wrote its own curves, controls and scoring; a new user writing an
experiment spent about 80 of ~370 lines on them. Conditions are data (`Condition`), so interventions still to come
(ablation, conditional steering) plug in through `Condition.context`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from lib.choice_evals import AnswerFormat
from lib.evals import continuation_logprobs, kl_sum, text_logprobs
from lib.generation import generate
from lib.hooks import Steering
from lib.kits.choice_data import Item
from lib.kits.controls import kl_matched_random
from lib.kits.data import NEUTRAL_TEXTS
from lib.kits.text_scorers import degeneracy
from lib.kits.two_choice import score_both_orders
from lib.kits.uncertainty import bootstrap, rank_p_value
from lib.positions import PositionScope
from lib.vectors import SteeringVector
from lib.weights import WeightDelta, apply_delta


@dataclass(frozen=True)
class Condition:
    """One way to run the model. Parts combine: a steering vector at a coefficient, a weight delta at a coefficient,
    a system prompt, a prefix to every user message, and `context`, any other intervention as a context manager
    factory (it gets the model). No part at all is the unsteered model."""

    name: str
    vector: SteeringVector | None = None
    coefficient: float = 1.0
    layers: tuple[int, ...] | None = None
    positions: PositionScope = "all"
    delta: WeightDelta | None = None
    delta_coefficient: float = 1.0
    system: str | None = None
    prefix: str = ""
    context: Callable[[nn.Module], contextlib.AbstractContextManager[Any]] | None = field(default=None, compare=False)

    def prompt(self, text: str) -> str:
        return self.prefix + text

    @property
    def weight_key(self) -> tuple[int, float, int] | None:
        """Conditions with the same key run in one pass (the same weights and the same other context)."""
        if self.delta is None and self.context is None:
            return None
        return (id(self.delta), self.delta_coefficient, id(self.context))

    @contextlib.contextmanager
    def weights(self, model: nn.Module) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            if self.delta is not None:
                stack.enter_context(apply_delta(model, self.delta, self.delta_coefficient))
            if self.context is not None:
                stack.enter_context(self.context(model))
            yield


def unsteered(name: str = "unsteered") -> Condition:
    return Condition(name)


def steered(name: str, vector: SteeringVector, coefficient: float, **parts: Any) -> Condition:
    return Condition(name, vector=vector, coefficient=float(coefficient), **parts)


def prompted(name: str, system: str | None = None, prefix: str = "") -> Condition:
    if not system and not prefix:
        raise ValueError(f"prompted({name!r}) needs a system prompt or a prefix")
    return Condition(name, system=system, prefix=prefix)


def with_delta(name: str, delta: WeightDelta, coefficient: float) -> Condition:
    return Condition(name, delta=delta, delta_coefficient=float(coefficient))


def _groups(conditions: Sequence[Condition]) -> list[list[int]]:
    """Indices of conditions that share one pass (same weight context), in order of first appearance."""
    groups: dict[Any, list[int]] = {}
    for i, condition in enumerate(conditions):
        groups.setdefault(condition.weight_key, []).append(i)
    return list(groups.values())


def _steering(conditions: Sequence[Condition], units: int) -> tuple[Steering | None, list[float] | None]:
    """Per-row vectors and coefficients for `units` rows per condition (None when no condition steers)."""
    if all(c.vector is None for c in conditions):
        return None, None
    layers = {c.layers for c in conditions if c.vector is not None}
    positions = {c.positions for c in conditions if c.vector is not None}
    if len(layers) > 1 or len(positions) > 1:
        raise ValueError("conditions in one pass must share layers and positions; give them in separate compares")
    vectors = [c.vector for c in conditions for _ in range(units)]
    coefficients = [c.coefficient if c.vector is not None else 0.0 for c in conditions for _ in range(units)]
    return Steering(vectors, layers=next(iter(layers)), positions=next(iter(positions))), coefficients


class Scorer(Protocol):
    """Scores `units` rows per condition for conditions that share one pass; returns {metric: [conditions, units]}.
    `main` names the metric a summary leads with."""

    main: str
    units: int

    def __call__(self, model: nn.Module, tokenizer: Any, conditions: Sequence[Condition],
                 batch_size: int) -> dict[str, np.ndarray]: ...


@dataclass
class TwoChoice:
    """Two-choice items scored in both answer orders (`lib.kits.two_choice`): content, position_bias, pmass."""

    items: list[Item]
    fmt: AnswerFormat
    main: str = "content"

    @property
    def units(self) -> int:
        return len(self.items)

    def __call__(self, model: nn.Module, tokenizer: Any, conditions: Sequence[Condition],
                 batch_size: int) -> dict[str, np.ndarray]:
        n = len(self.items)
        items = [replace(item, question=c.prompt(item.question)) for c in conditions for item in self.items]
        steering, coefficients = _steering(conditions, n)
        if steering is not None:  # score_both_orders puts all target-first rows before all target-second rows
            steering = replace(steering, vector=list(steering.vector) * 2)
        scored = score_both_orders(model, tokenizer, items, self.fmt, system=[c.system for c in conditions
                                                                              for _ in range(n)],
                                   steering=steering, coefficients=coefficients, batch_size=batch_size,
                                   progress=False)
        shape = (len(conditions), n)
        return {name: getattr(scored, name).double().numpy().reshape(shape)
                for name in ("content", "position_bias", "pmass")}


@dataclass
class ContinuationPair:
    """Per prompt: mean log p per token of the target continuation minus the baseline continuation (paired)."""

    prompts: list[str]
    target: list[str]
    baseline: list[str]
    main: str = "logprob_difference"

    @property
    def units(self) -> int:
        return len(self.prompts)

    def __call__(self, model: nn.Module, tokenizer: Any, conditions: Sequence[Condition],
                 batch_size: int) -> dict[str, np.ndarray]:
        n = len(self.prompts)
        prompts = [_messages(c, p) for c in conditions for p in self.prompts]
        steering, coefficients = _steering(conditions, n)
        both = continuation_logprobs(model, tokenizer, prompts * 2, [*self.target * len(conditions),
                                                                     *self.baseline * len(conditions)],
                                     steering=None if steering is None else replace(steering,
                                                                                    vector=list(steering.vector) * 2),
                                     coefficients=None if coefficients is None else coefficients * 2,
                                     batch_size=batch_size, progress=False)
        half = len(prompts)
        return {self.main: (both[:half] - both[half:]).double().numpy().reshape(len(conditions), n)}


@dataclass
class GeneratedText:
    """Generate a reply per prompt under each condition, then score the texts: `degenerate` always, and each of
    `scores` ({name: texts -> [N] values}, e.g. a likelihood judge or a projection monitor bound with
    functools.partial). `compare` adds `fluency_nll`, the plain model's per-token NLL of each text (`fluency_nll`)."""

    prompts: list[str]
    scores: dict[str, Callable[[list[str], list[str]], Any]]
    main: str
    max_new_tokens: int = 48
    texts: dict[str, list[str]] = field(default_factory=dict)  # filled: condition name -> its replies

    @property
    def units(self) -> int:
        return len(self.prompts)

    def __call__(self, model: nn.Module, tokenizer: Any, conditions: Sequence[Condition],
                 batch_size: int) -> dict[str, np.ndarray]:
        n = len(self.prompts)
        steering, coefficients = _steering(conditions, n)
        texts = generate(model, tokenizer, [_messages(c, p) for c in conditions for p in self.prompts],
                         max_new_tokens=self.max_new_tokens, steering=steering, coefficients=coefficients,
                         batch_size=batch_size, progress=False)
        for i, condition in enumerate(conditions):
            self.texts[condition.name] = texts[i * n:(i + 1) * n]
        prompts = [p for _ in conditions for p in self.prompts]
        out = {"degenerate": np.array([degeneracy(t).degenerate for t in texts], dtype=np.float64)}
        for name, score in self.scores.items():
            out[name] = np.asarray(torch.as_tensor(score(prompts, texts)).double())
        return {name: values.reshape(len(conditions), n) for name, values in out.items()}


def _messages(condition: Condition, prompt: str) -> str | list[dict[str, str]]:
    text = condition.prompt(prompt)
    if condition.system is None:
        return text
    return [{"role": "system", "content": condition.system}, {"role": "user", "content": text}]


def side_effect_kl(model: nn.Module, tokenizer: Any, conditions: Sequence[Condition],
                   texts: Sequence[str] = NEUTRAL_TEXTS, batch_size: int = 16) -> dict[str, float]:
    """Per condition, KL(unsteered || condition) per token on `texts` read as the assistant's reply to the neutral
    instruction (`text_logprobs(rendering="chat_reply")`): the same continuations under a system prompt, a vector
    or a delta, so prompts and steering are compared on one footing."""
    reference = text_logprobs(model, tokenizer, texts, rendering="chat_reply", batch_size=batch_size, progress=False)
    tokens = sum(len(r) for r in reference)
    out = {}
    for group in _groups(conditions):
        members = [conditions[i] for i in group]
        with members[0].weights(model):
            for condition in members:  # a system prompt changes the rendering: one call per condition
                steering, coefficients = _steering([condition], len(texts))
                logprobs = text_logprobs(model, tokenizer, texts, rendering="chat_reply", system=condition.system,
                                         steering=steering, coefficients=coefficients, batch_size=batch_size,
                                         progress=False)
                out[condition.name] = float(sum(kl_sum(a, b) for a, b in zip(reference, logprobs, strict=True))
                                            / tokens)
    return out


def fluency_nll(model: nn.Module, tokenizer: Any, prompts: Sequence[str], texts: Sequence[str],
                batch_size: int = 16) -> np.ndarray:
    """[N] the plain model's mean negative log-probability per token of each text as the reply to its prompt (no
    condition applied): how natural the text is to the model it came from. NaN for an empty text."""
    out = np.full(len(texts), np.nan)
    keep = [i for i, text in enumerate(texts) if tokenizer(text, add_special_tokens=False)["input_ids"]]
    if keep:
        logprobs = continuation_logprobs(model, tokenizer, [prompts[i] for i in keep], [texts[i] for i in keep],
                                         batch_size=batch_size, progress=False)
        out[keep] = -logprobs.double().numpy()
    return out


def _score(model: nn.Module, tokenizer: Any, conditions: Sequence[Condition], scorer: Scorer,
           batch_size: int) -> dict[str, dict[str, np.ndarray]]:
    """{condition: {metric: [units]}}, one pass per weight context; generated text also gets `fluency_nll`."""
    results: dict[str, dict[str, np.ndarray]] = {}
    for group in _groups(conditions):
        members = [conditions[i] for i in group]
        with members[0].weights(model):
            scored = scorer(model, tokenizer, members, batch_size)
        for row, condition in enumerate(members):
            results[condition.name] = {metric: values[row] for metric, values in scored.items()}
    if isinstance(scorer, GeneratedText):  # under the plain model, outside every condition's context
        for condition in conditions:
            results[condition.name]["fluency_nll"] = fluency_nll(model, tokenizer, scorer.prompts,
                                                                 scorer.texts[condition.name], batch_size)
    return results


def compare(model: nn.Module, tokenizer: Any, conditions: Sequence[Condition], scorer: Scorer, *,
            baseline: str | None = None, n_random: int = 0, neutral_texts: Sequence[str] = NEUTRAL_TEXTS,
            n_boot: int = 2000, level: float = 0.95, batch_size: int = 16, seed: int = 0) -> pd.DataFrame:
    """Score every condition on the same units, with side effects and controls, as one tidy table.

    Rows: condition x metric. Columns: value (mean over units), low/high (paired bootstrap over units), and, when
    `baseline` names a condition, `effect` = the paired difference from it with its interval; `kl` (side effect on
    neutral text); for vector conditions with `n_random` > 0, the effect of `n_random` random directions matched to
    the condition's KL (`random_mean`), the rank p-value among them and its floor 1/(n_random + 1);
    `comparisons` = how many condition x metric effects the table holds.
    """
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"condition names must be unique: {names}")
    if baseline is not None and baseline not in names:
        raise ValueError(f"baseline={baseline!r} is not one of the conditions {names}")
    scores = _score(model, tokenizer, conditions, scorer, batch_size)
    kls = side_effect_kl(model, tokenizer, conditions, neutral_texts, batch_size)
    controls: dict[str, dict[str, list[float]]] = {}
    if n_random:
        if baseline is None:
            raise ValueError("n_random needs baseline=: a control's effect is its difference from the baseline")
        for condition in conditions:
            if condition.vector is None or condition.coefficient == 0 or kls[condition.name] <= 0:
                continue
            randoms = []
            for k in range(n_random):
                direction, _ = kl_matched_random(model, tokenizer, condition.vector * condition.coefficient,
                                                 kls[condition.name], seed=seed + 1 + k, texts=neutral_texts,
                                                 layers=condition.layers, positions=condition.positions,
                                                 rendering="chat_reply", batch_size=batch_size)
                randoms.append(replace(condition, name=f"{condition.name}~random{k}", vector=direction,
                                       coefficient=1.0))
            scored = _score(model, tokenizer, randoms, scorer, batch_size)
            controls[condition.name] = {metric: [float(np.nanmean(scored[r.name][metric] - scores[baseline][metric]))
                                                 for r in randoms] for metric in scores[condition.name]}
    rows = []
    for condition in conditions:
        for metric, values in scores[condition.name].items():
            # nanmean: a metric undefined on a unit (the fluency of an empty reply) is read over the other units
            estimate = bootstrap(np.nanmean, values, n_boot=n_boot, level=level, seed=seed)
            row: dict[str, Any] = {"condition": condition.name, "coefficient": condition.coefficient
                                   if condition.vector is not None else np.nan, "metric": metric,
                                   "value": estimate.value, "low": estimate.low, "high": estimate.high,
                                   "n": estimate.n, "kl": kls[condition.name]}
            if baseline is not None:
                effect = bootstrap(lambda a, b: float(np.nanmean(a - b)), values, scores[baseline][metric],
                                   n_boot=n_boot, level=level, seed=seed)
                row |= {"effect": effect.value, "effect_low": effect.low, "effect_high": effect.high}
                if condition.name in controls:
                    rank = rank_p_value(effect.value, controls[condition.name][metric])
                    row |= {"random_mean": float(np.mean(controls[condition.name][metric])), "control_p": rank.p,
                            "control_floor": rank.floor, "n_random": rank.n_controls}
            rows.append(row)
    table = pd.DataFrame(rows)
    table["comparisons"] = len(table) - (len(scores[baseline]) if baseline is not None else 0)
    table.attrs["main"] = scorer.main
    return table


def frontier_figure(table: pd.DataFrame, metric: str | None = None, path: Any = None) -> Any:
    """Effect against side effect, one point per condition: the effect on `metric` (default: the scorer's main)
    versus the unsteered baseline with its interval, at the condition's KL on neutral text; grey crosses mark the
    KL-matched random directions' mean effect. Needs a table from `compare(..., baseline=...)`."""
    import matplotlib.pyplot as plt

    from lib.kits.plots import finish_figure

    metric = metric or table.attrs.get("main")
    if "effect" not in table:
        raise ValueError("the table has no effects: run compare(..., baseline='<condition>')")
    rows = table[(table.metric == metric) & table.effect.notna()]
    figure, axis = plt.subplots(figsize=(6, 4))
    for _, row in rows.iterrows():
        axis.errorbar([row["kl"]], [row["effect"]], yerr=[[row["effect"] - row["effect_low"]],
                                                          [row["effect_high"] - row["effect"]]], marker="o", capsize=3)
        axis.annotate(row["condition"], (row["kl"], row["effect"]), textcoords="offset points", xytext=(4, 4),
                      fontsize=8)
        if pd.notna(row.get("random_mean", np.nan)):
            axis.scatter([row["kl"]], [row["random_mean"]], marker="x", color="grey")
    axis.axhline(0, color="grey", linewidth=0.5)
    axis.set(xlabel="KL on neutral text (nats per token)", ylabel=f"{metric}: effect vs baseline")
    return finish_figure(figure, (axis,), f"{metric} against side effect (x: KL-matched random directions)", path)
