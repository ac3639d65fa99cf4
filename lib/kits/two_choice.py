"""Two-choice questions scored in both answer orders: content, position bias and pmass, each with its interval.

Why (issue "One evaluation kit"; re-computed from the committed weight-steering artifacts): rows were not balanced
by answer position (20 of 36 sycophancy test rows had the sycophantic answer as (A)), and over 72 sycophancy entries
the score tracked the (A)-vs-(B) bias with r = 0.958, so most reported effects were position shifts. Every item is
asked twice here, the target answer once first and once second, in one batch:

- with the target first the signed score is `content + bias`, with it second `content - bias` (a model that prefers
  the first answer by `bias` nats whatever it says), so
- `content` = the mean of the two orders' signed scores, `position_bias` = half their difference,
- `pmass` = the mean probability mass on the answer tokens over both orders.

For (A)/(B) the options swap places; for Yes/No the question asks about the other action (its sign flips), and
the bias is a preference for "Yes".
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from lib.choice_evals import AnswerFormat, score_rows
from lib.hooks import Steering
from lib.kits.choice_data import Item, to_rows
from lib.kits.uncertainty import Estimate, bootstrap

ORDERS = ("target_first", "target_second")


def with_target(item: Item, first: bool) -> Item:
    """The item with its target answer in the first position (`first=True`) or the second."""
    return item if item.first_is_target == first else replace(item, first=item.second, second=item.first,
                                                               first_is_target=first)


@dataclass
class BothOrders:
    """Per item: the signed score with the target first and second, and pmass in each order ([N] tensors)."""

    items: list[Item]
    target_first: torch.Tensor
    target_second: torch.Tensor
    pmass_first: torch.Tensor
    pmass_second: torch.Tensor

    @property
    def content(self) -> torch.Tensor:
        return (self.target_first + self.target_second) / 2

    @property
    def position_bias(self) -> torch.Tensor:
        return (self.target_first - self.target_second) / 2

    @property
    def pmass(self) -> torch.Tensor:
        return (self.pmass_first + self.pmass_second) / 2

    def per_item(self) -> dict[str, torch.Tensor]:
        """{"score": content, "position_bias", "pmass"} per item: what a single-order scorer's "score" and "pmass"
        were, now free of answer position."""
        return {"score": self.content, "position_bias": self.position_bias, "pmass": self.pmass}

    def split(self, parts: int) -> list[BothOrders]:
        """The items cut into `parts` equal consecutive blocks (one per coefficient of a batched sweep)."""
        n = len(self.items)
        if parts < 1 or n % parts:
            raise ValueError(f"{n} items do not split into {parts} equal parts")
        size = n // parts
        return [BothOrders(self.items[k * size:(k + 1) * size],
                           *(getattr(self, name)[k * size:(k + 1) * size]
                             for name in ("target_first", "target_second", "pmass_first", "pmass_second")))
                for k in range(parts)]

    def summary(self, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, Estimate]:
        """Mean content, position bias and pmass over items, each with a bootstrap interval over items."""
        return {name: bootstrap(_mean, getattr(self, name).double().numpy(), n_boot=n_boot, level=level, seed=seed)
                for name in ("content", "position_bias", "pmass")}


def _mean(values: Any) -> float:
    return float(values.mean())


@torch.no_grad()
def score_both_orders(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[Item],
    fmt: AnswerFormat,
    *,
    system: str | Sequence[str | None] | None = None,
    steering: Steering | None = None,
    coefficients: Sequence[float] | None = None,
    batch_size: int = 16,
    chat: bool = True,
    progress: bool = True,
) -> BothOrders:
    """Score every item with its target answer first and second, as one job of 2N rows: rows 0..N-1 are the items
    with the target first, rows N..2N-1 with it second. Per-item `coefficients` (N values) apply to both orders of
    their item, and so do per-item `system` prompts; a per-row steering vector list must have 2N entries in that row
    order."""
    items = list(items)
    if not items:
        raise ValueError("items is empty: nothing to score")
    if coefficients is not None and len(coefficients) != len(items):
        raise ValueError(f"coefficients has {len(coefficients)} values for {len(items)} items; give one per item "
                         "(each applies to both orders)")
    ordered = [with_target(item, True) for item in items] + [with_target(item, False) for item in items]
    if system is not None and not isinstance(system, str):
        system = list(system)
        if len(system) != len(items):
            raise ValueError(f"system has {len(system)} prompts for {len(items)} items; give one, or one per item")
        system = system + system
    scored = score_rows(model, tokenizer, to_rows(ordered, fmt), fmt, system=system, steering=steering,
                        coefficients=None if coefficients is None else [*coefficients, *coefficients],
                        batch_size=batch_size, chat=chat, progress=progress)
    n = len(items)
    return BothOrders(items, scored["score"][:n], scored["score"][n:], scored["pmass"][:n], scored["pmass"][n:])


def balanced_split(items: Sequence[Item], n_train: int, n_val: int, n_test: int, seed: int,
                   group: str = "question") -> dict[str, list[Item]]:
    """Disjoint train / val / test parts in which the target answer is first in exactly half of each part's items
    (one more or fewer when a part's size is odd), and items sharing a `group` field (the same question asked
    twice) stay in one part. The seeded shuffle of `lib.kits.choice_data.split_items` did neither."""
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    if any(size < 0 for size in sizes.values()):
        raise ValueError(f"sizes {sizes} must be >= 0")
    groups: dict[Any, list[Item]] = {}
    for item in items:
        groups.setdefault(getattr(item, group), []).append(item)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    parts: dict[str, list[Item]] = {name: [] for name in sizes}
    for key in keys:  # fill parts in order with whole groups
        for name, size in sizes.items():
            if len(parts[name]) + len(groups[key]) <= size:
                parts[name] += groups[key]
                break
    short = {name: f"{len(parts[name])}/{size}" for name, size in sizes.items() if len(parts[name]) < size}
    if short:
        raise ValueError(f"not enough items (in whole groups of one {group}) for the parts: {short}; lower the sizes")
    balanced = {}
    for name, part in parts.items():  # the target first in half of each part: set each item's order
        flips = [i % 2 == 0 for i in range(len(part))]
        random.Random(f"{seed}-{name}").shuffle(flips)
        balanced[name] = [with_target(item, first) for item, first in zip(part, flips, strict=True)]
    return balanced


@dataclass(frozen=True)
class FormatChoice:
    """The answer format chosen on validation items, and every candidate's reading (both orders each)."""

    chosen: str
    formats: dict[str, dict[str, float]]
    min_pmass: float
    eligible: bool = True  # False: no format reached min_pmass and the one with the most pmass was taken

    @property
    def criterion(self) -> str:
        if not self.eligible:
            return f"no format reached pmass >= {self.min_pmass}: the one with the most pmass (the scores are weak)"
        return f"pmass >= {self.min_pmass}, then the most headroom"

    def as_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "criterion": self.criterion, "eligible": self.eligible,
                "formats": self.formats}


def headroom(scored: BothOrders) -> torch.Tensor:
    """[N] room the score has to move either way: 1 - |2 p - 1| with p = the probability of the target answer
    between the two answers (sigmoid of the signed log-ratio), averaged over both orders. 1 when the model is
    undecided, 0 when it is certain: a saturated item cannot show a change of mind."""
    def room(score: torch.Tensor) -> torch.Tensor:
        return 1 - (2 * torch.sigmoid(score.double()) - 1).abs()

    return (room(scored.target_first) + room(scored.target_second)) / 2


def choose_answer_format(model: nn.Module, tokenizer: Any, items: Sequence[Item], formats: dict[str, AnswerFormat],
                         *, min_pmass: float = 0.5, system: str | None = None, batch_size: int = 16,
                         fallback: bool = False, progress: bool = False) -> FormatChoice:
    """Among the formats whose mean pmass (probability on the two answer tokens, both orders) is at least
    `min_pmass`, the one with the most headroom (`headroom`) on validation `items`. pmass alone picked the format
    before (weight steering), and the largest validation score is the wrong aim too: an effect needs room to move
    and an answer the model gives. Every format is scored and reported (content, position bias, pmass, headroom),
    so a result can be read in both. When no format reaches `min_pmass`: an error, or with `fallback=True` the
    format with the most pmass, marked `eligible=False` (a run that must go on says so in its results)."""
    if not formats:
        raise ValueError("formats is empty: give at least one candidate AnswerFormat")
    if not 0 <= min_pmass < 1:
        raise ValueError(f"min_pmass={min_pmass} must be in [0, 1)")
    readings = {}
    for name, fmt in formats.items():
        scored = score_both_orders(model, tokenizer, items, fmt, system=system, batch_size=batch_size,
                                   progress=progress)
        readings[name] = {"content": float(scored.content.double().mean()),
                          "position_bias": float(scored.position_bias.double().mean()),
                          "pmass": float(scored.pmass.double().mean()),
                          "headroom": float(headroom(scored).mean()), "n": len(scored.items)}
    eligible = [name for name, reading in readings.items() if reading["pmass"] >= min_pmass]
    if not eligible:
        best = max(readings, key=lambda name: readings[name]["pmass"])
        if fallback:
            return FormatChoice(best, readings, min_pmass, eligible=False)
        raise ValueError(f"no format reaches min_pmass={min_pmass} (best: {best} at {readings[best]['pmass']:.3f}): "
                         "the model does not answer in these formats; lower min_pmass or write another format")
    chosen = max(eligible, key=lambda name: readings[name]["headroom"])
    return FormatChoice(chosen, readings, min_pmass)
