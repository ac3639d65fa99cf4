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
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from lib.ablation import ablate
from lib.choice_evals import AnswerFormat
from lib.evals import NEUTRAL_INSTRUCTION, Rendering, continuation_logprobs, kl_sum, text_logprobs
from lib.gates import Gate
from lib.generation import generate
from lib.hooks import Steering, steer
from lib.kits.choice_data import Item
from lib.kits.controls import KLUnreachable, kl_matched_random_deltas, kl_matched_randoms
from lib.kits.data import NEUTRAL_TEXTS
from lib.kits.dose_response import effect_at_kl, per_row_slopes
from lib.kits.text_scorers import degeneracy
from lib.kits.two_choice import score_both_orders
from lib.kits.uncertainty import bootstrap, controls_for_floor, rank_p_value
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
    family: str = ""  # the condition a grid point belongs to (`on_grid`); empty: the condition's own name
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


def ablated(name: str, direction: Any, **options: Any) -> Condition:
    """The model with `direction` removed from every residual write (`lib.ablation.ablate(model, direction,
    **options)`: layers, embeddings, positions, value), as a condition with its own pass."""
    return Condition(name, context=lambda model: ablate(model, direction, **options))


def gated(name: str, vector: SteeringVector, coefficient: float, gate: Gate, **options: Any) -> Condition:
    """Conditional steering (`lib.gates.Gate`, Lee et al. 2025): `vector` at `coefficient` on the rows whose prompt
    opens `gate`, as a condition with its own pass (the gate's decisions for the last batch stay on `gate`)."""
    return Condition(name, context=lambda model: steer(model, vector, float(coefficient), gate=gate, **options))


def _groups(conditions: Sequence[Condition]) -> list[list[int]]:
    """Indices of conditions that share one pass (same weight context), in order of first appearance."""
    groups: dict[Any, list[int]] = {}
    for i, condition in enumerate(conditions):
        groups.setdefault(condition.weight_key, []).append(i)
    return list(groups.values())


def _passes(conditions: Sequence[Condition], stage: str, progress: bool) -> Iterator[list[int]]:
    """`_groups(conditions)`, one weight context (one pass) each, ticking a bar "compare: <stage>" when asked."""
    groups = _groups(conditions)
    yield from tqdm(groups, desc=f"compare: {stage}", unit="pass", disable=not progress or len(groups) <= 1,
                    leave=False)


def _steering(conditions: Sequence[Condition], units: int) -> tuple[Steering | None, list[float] | None]:
    """Per-row vectors and coefficients for `units` rows per condition, unit-major like every job here: unit 0 under
    each condition, then unit 1, ... (`_unit_major`). None when no condition steers."""
    if all(c.vector is None for c in conditions):
        return None, None
    layers = {c.layers for c in conditions if c.vector is not None}
    positions = {c.positions for c in conditions if c.vector is not None}
    if len(layers) > 1 or len(positions) > 1:
        raise ValueError("conditions in one pass must share layers and positions; give them in separate compares")
    vectors = [c.vector for _ in range(units) for c in conditions]
    coefficients = [c.coefficient if c.vector is not None else 0.0 for _ in range(units) for c in conditions]
    return Steering(vectors, layers=next(iter(layers)), positions=next(iter(positions))), coefficients


def _unit_major(values: Any, conditions: int) -> np.ndarray:
    """[units * conditions] values in job order (unit-major) as [conditions, units]. Jobs put one unit's rows under
    every condition next to each other, so rows with the same tokens (a prompt unsteered and under K vectors at one
    layer) meet in a batch and share the blocks below the steered layer (`run_batches(share_trunk=True)`)."""
    return np.asarray(values).reshape(-1, conditions).T


def _twice(steering: Steering | None) -> Steering | None:
    """The per-row vectors repeated for a job that runs every row twice, one block after the other (both answer
    orders; target then baseline continuations)."""
    return None if steering is None else replace(steering, vector=list(steering.vector) * 2)


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
        items = [replace(item, question=c.prompt(item.question)) for item in self.items for c in conditions]
        steering, coefficients = _steering(conditions, n)
        # score_both_orders puts all target-first rows before all target-second rows (and doubles coefficients)
        scored = score_both_orders(model, tokenizer, items, self.fmt, system=[c.system for _ in range(n)
                                                                              for c in conditions],
                                   steering=_twice(steering), coefficients=coefficients, batch_size=batch_size,
                                   progress=False)
        return {name: _unit_major(getattr(scored, name).double().numpy(), len(conditions))
                for name in ("content", "position_bias", "pmass")}


@dataclass
class ContinuationPair:
    """Per unit: mean log p per token of the target continuation minus the baseline continuation. Both follow
    `prompts[i]`, or the baseline follows `baseline_prompts[i]` where given (two held-out sets, each reply after its
    own prompt: the mean of the unit differences is then the difference of the two sets' means)."""

    prompts: list[str]
    target: list[str]
    baseline: list[str]
    main: str = "logprob_difference"
    baseline_prompts: list[str] | None = None

    def __post_init__(self) -> None:
        sizes = {"prompts": len(self.prompts), "target": len(self.target), "baseline": len(self.baseline)}
        if self.baseline_prompts is not None:
            sizes["baseline_prompts"] = len(self.baseline_prompts)
        if len(set(sizes.values())) != 1 or not self.prompts:
            raise ValueError(f"ContinuationPair needs one target and one baseline per unit, at least one: {sizes}")

    @property
    def units(self) -> int:
        return len(self.prompts)

    def __call__(self, model: nn.Module, tokenizer: Any, conditions: Sequence[Condition],
                 batch_size: int) -> dict[str, np.ndarray]:
        n = len(self.prompts)
        second = self.prompts if self.baseline_prompts is None else self.baseline_prompts
        prompts = [_messages(c, p) for p in self.prompts for c in conditions]
        prompts += [_messages(c, p) for p in second for c in conditions]
        steering, coefficients = _steering(conditions, n)
        both = continuation_logprobs(model, tokenizer, prompts, [t for t in self.target for _ in conditions]
                                     + [b for b in self.baseline for _ in conditions],
                                     steering=_twice(steering),
                                     coefficients=None if coefficients is None else coefficients * 2,
                                     batch_size=batch_size, progress=False)
        half = len(prompts) // 2
        target, baseline = (_unit_major(part.double().numpy(), len(conditions)) for part in (both[:half], both[half:]))
        return {self.main: target - baseline, "target_logprob": target, "baseline_logprob": baseline}


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

    def write(self, model: nn.Module, tokenizer: Any, conditions: Sequence[Condition],
              batch_size: int) -> list[str]:
        """Each condition's replies (unit-major; kept in `texts` by condition): run inside the condition's weights
        and context, since the replies are what the condition changes."""
        n = len(self.prompts)
        steering, coefficients = _steering(conditions, n)
        texts = generate(model, tokenizer, [_messages(c, p) for p in self.prompts for c in conditions],
                         max_new_tokens=self.max_new_tokens, steering=steering, coefficients=coefficients,
                         batch_size=batch_size, progress=False)
        k = len(conditions)
        for i, condition in enumerate(conditions):
            self.texts[condition.name] = texts[i::k]
        return texts

    def read(self, conditions: Sequence[Condition], texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The scores of `write`'s texts. `compare` calls it outside every condition's weights and context: a judge
        that reads the texts with the model must read them with the plain model, not the steered one."""
        prompts = [p for p in self.prompts for _ in conditions]
        out = {"degenerate": np.array([degeneracy(t).degenerate for t in texts], dtype=np.float64)}
        for name, score in self.scores.items():
            out[name] = np.asarray(torch.as_tensor(score(prompts, list(texts))).double())
        return {name: _unit_major(values, len(conditions)) for name, values in out.items()}

    def __call__(self, model: nn.Module, tokenizer: Any, conditions: Sequence[Condition],
                 batch_size: int) -> dict[str, np.ndarray]:
        return self.read(conditions, self.write(model, tokenizer, conditions, batch_size))


def _messages(condition: Condition, prompt: str) -> str | list[dict[str, str]]:
    text = condition.prompt(prompt)
    if condition.system is None:
        return text
    return [{"role": "system", "content": condition.system}, {"role": "user", "content": text}]


def side_effect_kl(model: nn.Module, tokenizer: Any, conditions: Sequence[Condition],
                   texts: Sequence[str] = NEUTRAL_TEXTS, batch_size: int = 16,
                   rendering: Rendering = "chat_reply", progress: bool = False) -> dict[str, float]:
    """Per condition, KL(unsteered || condition) per token on `texts`, by default read as the assistant's reply to
    the neutral instruction (`text_logprobs(rendering="chat_reply")`): the same continuations under a system prompt,
    a vector or a delta, so prompts and steering are compared on one footing. `rendering="raw"` (the text alone)
    is for vectors and deltas only: a prompt has no place in raw text."""
    if rendering == "raw" and any(c.system is not None or c.prefix for c in conditions):
        raise ValueError("rendering='raw' reads the neutral texts alone, so a system prompt or prefix condition "
                         "cannot change them; use rendering='chat_reply' to compare prompts")
    out: dict[str, float] = {}
    for condition in filter(is_plain, conditions):  # a zero coefficient adds nothing: 0 exactly, not rounding noise
        out[condition.name] = 0.0
    conditions = [c for c in conditions if c.name not in out]
    if not conditions:
        return out
    reference = text_logprobs(model, tokenizer, texts, rendering=rendering, batch_size=batch_size, progress=False)
    tokens = sum(len(r) for r in reference)
    n = len(texts)
    for group in _passes(conditions, "KL", progress):
        members = [conditions[i] for i in group]
        contexts: dict[tuple[Any, ...], list[Condition]] = {}
        for condition in members:  # one batched call per rendering (system prompt, prefix) and steering placement
            place = (condition.layers, condition.positions) if condition.vector is not None else None
            contexts.setdefault((condition.system, condition.prefix, place), []).append(condition)
        with members[0].weights(model):
            for (system, prefix, _), same in contexts.items():
                steering, coefficients = _steering(same, n)
                rendered = {} if rendering == "raw" else {"system": system,
                                                          "instruction": prefix + NEUTRAL_INSTRUCTION}
                k = len(same)
                kls = text_logprobs(model, tokenizer, [text for text in texts for _ in same],
                                    rendering=rendering, steering=steering, coefficients=coefficients,
                                    batch_size=batch_size, progress=False,
                                    reduce=lambda row, logprobs, k=k: float(kl_sum(reference[row // k], logprobs)),
                                    **rendered)
                for i, condition in enumerate(same):
                    out[condition.name] = sum(kls[i::k]) / tokens
    return out


def fluency_nll(model: nn.Module, tokenizer: Any, prompts: Sequence[str], texts: Sequence[str],
                batch_size: int = 16, chat: bool = True) -> np.ndarray:
    """[N] the plain model's mean negative log-probability per token of each text as the reply to its prompt (no
    condition applied): how natural the text is to the model it came from. NaN for an empty text."""
    out = np.full(len(texts), np.nan)
    keep = [i for i, text in enumerate(texts) if tokenizer(text, add_special_tokens=False)["input_ids"]]
    if keep:
        logprobs = continuation_logprobs(model, tokenizer, [prompts[i] for i in keep], [texts[i] for i in keep],
                                         batch_size=batch_size, chat=chat, progress=False)
        out[keep] = -logprobs.double().numpy()
    return out


def is_plain(condition: Condition) -> bool:
    """Whether the condition is the unsteered model: no prompt, no other context, and no vector or delta, or one at
    coefficient 0 (a grid's 0 point adds exactly nothing)."""
    return (condition.system is None and not condition.prefix and condition.context is None
            and (condition.vector is None or condition.coefficient == 0.0)
            and (condition.delta is None or condition.delta_coefficient == 0.0))


def _score(model: nn.Module, tokenizer: Any, conditions: Sequence[Condition], scorer: Scorer,
           batch_size: int, progress: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """{condition: {metric: [units]}}, one pass per weight context; generated text also gets `fluency_nll`. Plain
    conditions (`is_plain`: unsteered, every family's coefficient-0 point) are the same model: scored once, as the
    first of them, and shared, so a grid with 0 in it costs no extra pass per family."""
    results: dict[str, dict[str, np.ndarray]] = {}
    plain = [c for c in conditions if is_plain(c)]
    run = [c for c in conditions if not is_plain(c) or c is plain[0]]
    for group in _passes(run, "score", progress):
        members = [run[i] for i in group]
        if isinstance(scorer, GeneratedText):  # written under the condition, read by the plain model
            with members[0].weights(model):
                texts = scorer.write(model, tokenizer, members, batch_size)
            scored = scorer.read(members, texts)
        else:  # the scores are the condition's own outputs (answer log-probs)
            with members[0].weights(model):
                scored = scorer(model, tokenizer, members, batch_size)
        for row, condition in enumerate(members):
            results[condition.name] = {metric: values[row] for metric, values in scored.items()}
    if isinstance(scorer, GeneratedText):  # under the plain model, outside every condition's context; one job
        n = len(scorer.prompts)
        values = fluency_nll(model, tokenizer, scorer.prompts * len(run),
                             [text for condition in run for text in scorer.texts[condition.name]], batch_size)
        for i, condition in enumerate(run):
            results[condition.name]["fluency_nll"] = values[i * n:(i + 1) * n]
    for condition in plain[1:]:
        results[condition.name] = {metric: values.copy() for metric, values in results[plain[0].name].items()}
        if isinstance(scorer, GeneratedText):
            scorer.texts[condition.name] = list(scorer.texts[plain[0].name])
    return results


def on_grid(conditions: Sequence[Condition], coefficients: Sequence[float]) -> list[Condition]:
    """Every condition with a vector or a delta once per coefficient (named `<name>@<coefficient>`, `family` = its
    name; the vector's coefficient, or the delta's); prompt-only and unsteered conditions once, as they are."""
    grid = [float(c) for c in coefficients]
    if not grid:
        raise ValueError("coefficients is empty: give the grid, e.g. dose_response.symmetric_grid(8)")
    if len(set(grid)) != len(grid):
        raise ValueError(f"coefficients={grid} repeats a value")
    out = []
    for condition in conditions:
        family = condition.family or condition.name
        if condition.vector is not None and condition.delta is not None:
            raise ValueError(f"condition {condition.name!r} has a vector and a delta: a grid would scale both; give "
                             "the grid's coefficient to one and fix the other in separate conditions")
        if condition.vector is not None:
            out += [replace(condition, name=f"{family}@{c:g}", family=family, coefficient=c) for c in grid]
        elif condition.delta is not None:
            out += [replace(condition, name=f"{family}@{c:g}", family=family, delta_coefficient=c) for c in grid]
        else:
            out.append(replace(condition, family=family))
    return out


def coefficient_of(condition: Condition) -> float:
    """The intervention's strength: the vector's coefficient, else the delta's, else NaN (a prompt, unsteered)."""
    if condition.vector is not None:
        return condition.coefficient
    if condition.delta is not None:
        return condition.delta_coefficient
    return float("nan")


def _random_controls(model: nn.Module, tokenizer: Any, conditions: Sequence[Condition], kls: dict[str, float],
                     n_random: int, seed: int, texts: Sequence[str], batch_size: int,
                     rendering: Rendering, progress: bool = False) -> tuple[dict[str, list[Condition]], dict[str, str]]:
    """`n_random` conditions per steered condition with its vector or delta replaced by a random one of the same
    per-layer (per-tensor) norms, rescaled to the condition's KL; seed k is the same at every coefficient of a grid,
    so each control is a curve of one random direction. The vectors' directions are searched together per condition
    (`kl_matched_randoms`); a delta's grid shares one curve per seed (`kl_matched_random_deltas`: a weight edit
    cannot ride in a batch as rows, so the probes are what costs). Returns the controls by condition name and, where
    no scale reached the KL, the reason."""
    controlled: dict[str, list[Condition]] = {}
    unmatched: dict[str, str] = {}
    on_deltas: dict[int, list[Condition]] = {}  # one group per delta object: on_grid's conditions share it
    for condition in conditions:
        strength = coefficient_of(condition)
        if np.isnan(strength) or strength == 0 or kls[condition.name] <= 0:
            continue
        if condition.delta is not None:
            on_deltas.setdefault(id(condition.delta), []).append(condition)
            continue
        assert condition.vector is not None
        try:  # searched together: the directions share the blocks below the layer
            matched = kl_matched_randoms(model, tokenizer, condition.vector * condition.coefficient,
                                         kls[condition.name], seeds=[seed + 1 + k for k in range(n_random)],
                                         texts=texts, layers=condition.layers, positions=condition.positions,
                                         rendering=rendering, batch_size=batch_size, progress=progress)
        except KLUnreachable as error:
            unmatched[condition.name] = f"no KL-matched random control: {error}"
            continue
        controlled[condition.name] = [replace(condition, name=f"{condition.name}~random{k}", vector=direction,
                                              coefficient=1.0) for k, (direction, _) in enumerate(matched)]
    for group in on_deltas.values():
        coefficients = {condition.delta_coefficient for condition in group}
        # one delta at one coefficient under two names: match each alone
        parts = [group] if len(coefficients) == len(group) else [[condition] for condition in group]
        for part in parts:
            delta = part[0].delta
            assert delta is not None
            targets = {condition.delta_coefficient: kls[condition.name] for condition in part}
            for k in range(n_random):
                found = kl_matched_random_deltas(model, tokenizer, delta, targets, seed=seed + 1 + k, texts=texts,
                                                 rendering=rendering, batch_size=batch_size, progress=progress)
                for condition in part:
                    matched = found[condition.delta_coefficient]
                    if isinstance(matched, KLUnreachable):
                        unmatched[condition.name] = f"no KL-matched random control: {matched}"
                        continue
                    controlled.setdefault(condition.name, []).append(
                        replace(condition, name=f"{condition.name}~random{k}", delta=matched[0],
                                delta_coefficient=1.0))
    for name in unmatched:  # a condition is controlled by all its seeds or reported unmatched, never by some
        controlled.pop(name, None)
    for name, reason in unmatched.items():  # reported in the table's control_note and warned: never a silent gap
        warnings.warn(f"{name}: {reason}", stacklevel=3)
    return controlled, unmatched


def compare(model: nn.Module, tokenizer: Any, conditions: Sequence[Condition], scorer: Scorer, *,
            coefficients: Sequence[float] | None = None, baseline: str | None = None, n_random: int = 0,
            control_floor: float | None = None, neutral_texts: Sequence[str] = NEUTRAL_TEXTS,
            kl_rendering: Rendering = "chat_reply", n_boot: int = 2000, level: float = 0.95, batch_size: int = 16,
            seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Score every condition on the same units, with side effects and controls, as one tidy table.

    coefficients: a grid (e.g. `symmetric_grid(8)`); every vector or delta condition runs at each (`on_grid`), and
        `curves`, `at_matched_kl` and `slopes` read the table as dose-response curves.
    kl_rendering: how the neutral texts are read for every KL (`side_effect_kl`), the controls' matching included.
    n_random / control_floor: KL-matched random controls per steered condition (vector or delta; none at coefficient
        0); `control_floor=0.05` asks for the 19 a rank p-value needs to reach 0.05 (`controls_for_floor`).

    Rows: condition x metric. Columns: `family` (the condition a grid point came from), `coefficient`, value (mean
    over units), low/high (paired bootstrap over units), and, when `baseline` names a condition, `effect` = the
    paired difference from it with its interval; `kl` (side effect on neutral text); with controls, `random_mean`
    (the controls' mean effect at the same KL), `random_kl`, the rank p-value of |effect| among the controls'
    |effects| (two-sided: a random direction may move the score either way) and its floor 1/(n_random + 1), or
    `control_note` where no random direction reaches the condition's KL (then no p-value, and a warning);
    `comparisons` = how many condition x metric effects the table holds. `table.attrs["scores"]` keeps the per-unit
    values ({condition: {metric: [units]}}) for per-row slopes.

    progress: a bar per stage (score, KL, each control's search) on stderr, one tick per pass; a grid of weight
    deltas runs for minutes on a CPU.
    """
    if control_floor is not None:
        needed = controls_for_floor(control_floor)
        if n_random and n_random != needed:
            raise ValueError(f"n_random={n_random} and control_floor={control_floor} (which needs {needed}) disagree; "
                             "give one of them")
        n_random = needed
    if n_random < 0:
        raise ValueError(f"n_random={n_random} must be >= 0")
    if coefficients is not None:
        conditions = on_grid(conditions, coefficients)
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"condition names must be unique: {names}")
    if baseline is not None and baseline not in names:
        raise ValueError(f"baseline={baseline!r} is not one of the conditions {names}")
    if n_random and baseline is None:
        raise ValueError("n_random needs baseline=: a control's effect is its difference from the baseline")
    scores = _score(model, tokenizer, conditions, scorer, batch_size, progress)
    kls = side_effect_kl(model, tokenizer, conditions, neutral_texts, batch_size, kl_rendering, progress)
    controlled: dict[str, list[Condition]] = {}
    unmatched: dict[str, str] = {}
    if n_random:
        controlled, unmatched = _random_controls(model, tokenizer, conditions, kls, n_random, seed, neutral_texts,
                                                 batch_size, kl_rendering, progress)
        randoms = [r for group in controlled.values() for r in group]
        random_scores = _score(model, tokenizer, randoms, scorer, batch_size, progress) if randoms else {}
        random_kls = side_effect_kl(model, tokenizer, randoms, neutral_texts, batch_size,
                                    kl_rendering, progress) if randoms else {}
    rows = []
    for condition in conditions:
        for metric, values in scores[condition.name].items():
            # nanmean: a metric undefined on a unit (the fluency of an empty reply) is read over the other units
            estimate = bootstrap(np.nanmean, values, n_boot=n_boot, level=level, seed=seed)
            row: dict[str, Any] = {"condition": condition.name, "family": condition.family or condition.name,
                                   "coefficient": coefficient_of(condition), "metric": metric,
                                   "value": estimate.value, "low": estimate.low, "high": estimate.high,
                                   "n": estimate.n, "kl": kls[condition.name]}
            if baseline is not None:
                effect = bootstrap(lambda a, b: float(np.nanmean(a - b)), values, scores[baseline][metric],
                                   n_boot=n_boot, level=level, seed=seed)
                row |= {"effect": effect.value, "effect_low": effect.low, "effect_high": effect.high}
                if condition.name in controlled:
                    effects = [float(np.nanmean(random_scores[r.name][metric] - scores[baseline][metric]))
                               for r in controlled[condition.name]]
                    rank = rank_p_value(abs(effect.value), np.abs(effects))
                    row |= {"random_mean": float(np.mean(effects)),
                            "random_kl": float(np.mean([random_kls[r.name] for r in controlled[condition.name]])),
                            "control_p": rank.p, "control_floor": rank.floor, "n_random": rank.n_controls}
                elif condition.name in unmatched:
                    row["control_note"] = unmatched[condition.name]
            rows.append(row)
    table = pd.DataFrame(rows)
    table["comparisons"] = len(table) - (len(scores[baseline]) if baseline is not None else 0)
    table.attrs["main"] = scorer.main
    table.attrs["baseline"] = baseline
    table.attrs["kl_rendering"] = kl_rendering
    table.attrs["scores"] = {name: {metric: values.tolist() for metric, values in by_metric.items()}
                             for name, by_metric in scores.items()}
    return table


def scorer_metrics(table: pd.DataFrame) -> list[str]:
    """The metrics a table holds, in the order the scorer gave them."""
    return list(dict.fromkeys(table.metric))


def curves(table: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """The grid rows of one metric (default: the scorer's main) as curves: family x coefficient, sorted."""
    metric = metric or table.attrs.get("main")
    rows = table[(table.metric == metric) & table.coefficient.notna()]
    if rows.empty:
        raise ValueError(f"the table has no steered rows for metric {metric!r}: run compare(..., coefficients=...)")
    return rows.sort_values(["family", "coefficient"]).reset_index(drop=True)


def at_matched_kl(table: pd.DataFrame, kls: Sequence[float], metric: str | None = None) -> pd.DataFrame:
    """Each family's effect (and its interval ends) where its curve reaches each KL in `kls`, interpolated along
    the curve on each side of coefficient 0 (`dose_response.effect_at_kl`); NaN where a curve never gets there.
    Two interventions are compared where they change the model equally, not at equal coefficients."""
    if "effect" not in table:
        raise ValueError("the table has no effects: run compare(..., baseline='<condition>', coefficients=...)")
    rows = []
    for family, curve in curves(table, metric).groupby("family", sort=False):
        grid = curve.coefficient.tolist()
        if 0.0 not in grid:
            raise ValueError(f"family {family!r} has no coefficient 0: put 0 in the grid (effect_at_kl starts there)")
        for sign in (1, -1):
            if not any(sign * c > 0 for c in grid):
                continue
            for kl in kls:
                row = {"family": family, "side": "+" if sign > 0 else "-", "kl": float(kl)}
                for column in ("effect", "effect_low", "effect_high", "random_mean"):
                    if column in curve:
                        values = curve[column].fillna(0.0) if column == "random_mean" else curve[column]
                        row[column] = effect_at_kl(grid, curve.kl.tolist(), values.tolist(), float(kl), sign)
                rows.append(row)
    return pd.DataFrame(rows)


def slopes(table: pd.DataFrame, metric: str | None = None, linear_up_to: float | None = None) -> pd.DataFrame:
    """Per family: steerability (the mean per-unit slope of score on coefficient, fitted on |c| <=
    `linear_up_to`, the linear regime) and the fraction of anti-steerable units (Tan et al. 2024), from the
    per-unit scores `compare` keeps."""
    scores = table.attrs.get("scores")
    if not scores:
        raise ValueError("the table has no per-unit scores (attrs['scores']): use a table straight from compare")
    rows = []
    for family, curve in curves(table, metric).groupby("family", sort=False):
        grid = curve.coefficient.tolist()
        values = np.array([scores[name][curve.metric.iloc[0]] for name in curve.condition]).T
        fitted = per_row_slopes(grid, values, linear_up_to)
        rows.append({"family": family, "steerability": fitted.steerability,
                     "fraction_anti_steerable": fitted.fraction_anti_steerable, "linear_up_to": fitted.linear_up_to,
                     "units": values.shape[0]})
    return pd.DataFrame(rows)


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
