"""A weight-steering run folder, as the run that writes it (`lib/experiments/weight_steering.py`) and the runs that
read it (`lib/experiments/weight_ablation.py`) both need it: where its files are, the answer formats its rows were
scored in, the fingerprint of those rows, how its side effect is read, its saved entries and which adapter trainings
diverged. The ablation used to import the steering experiment for these (issue "The weight wing and one way in",
item 1); experiments share through kits, never through each other.

The files stay what they were: `SavedEntry` reads the JSON objects a run saved (old run folders under out/journal
included) without rewriting them.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lib.choice_evals import AnswerFormat, score_rows, summarize
from lib.evals import Rendering, text_logprobs
from lib.hooks import Steering
from lib.kits.choice_data import KIND, LOADERS, Item, dilemma_prompt, split_items, to_rows
from lib.kits.data import NEUTRAL_TEXTS
from lib.kits.two_choice import balanced_split, score_both_orders

# ----------------------------------------------------------------------------- the folder


def partial_file(folder: Path, behaviour: str) -> Path:
    """A behaviour's state, resumable: its entries, split ids, chosen format, row digest, headroom and contrast."""
    return folder / f"{behaviour}_partial.json"


def saved_behaviours(folder: Path) -> list[str]:
    """The behaviours a run folder holds results for."""
    return sorted(path.name.removesuffix("_partial.json") for path in folder.glob("*_partial.json"))


def delta_file(folder: Path, behaviour: str, family: str, seed: int) -> Path:
    """Where a run with `save_deltas=True` keeps a family's dW at one seed (`WeightDelta.save` adds the suffixes)."""
    return folder / "deltas" / f"{behaviour}_{family}_seed{seed}"


def saved_deltas(folder: Path, behaviour: str) -> dict[str, dict[int, Path]]:
    """{family: {seed: path without suffix}} of the deltas saved for `behaviour` (the inverse of `delta_file`)."""
    deltas: dict[str, dict[int, Path]] = {}
    for tensor_file in sorted((folder / "deltas").glob(f"{behaviour}_*_seed*.safetensors")):
        family, _, seed = tensor_file.stem.removeprefix(f"{behaviour}_").rpartition("_seed")
        deltas.setdefault(family, {})[int(seed)] = tensor_file.with_suffix("")
    return deltas


# ----------------------------------------------------------------------------- the rows

# How a run scored its two-choice items: "both" answer orders (runs since the evaluation kit: content score,
# position bias, items split with the target first in exactly half of each part), or "single" (runs saved before:
# one order, a plain seeded shuffle). A run records it in each behaviour's state; a state without it is "single".
ORDERS = ("both", "single")


def orders_of(state: Mapping[str, Any]) -> str:
    """The orders a behaviour's saved state was scored in ("single" for states saved before the field existed)."""
    orders = str(state.get("orders", "single"))
    if orders not in ORDERS:
        raise ValueError(f"a run state records orders={orders!r}; known: {ORDERS}")
    return orders


def run_split(behaviour: str, n_train: int, n_val: int, n_test: int, seed: int,
              orders: str) -> dict[str, list[Item]]:
    """The train / val / test items of a run: `balanced_split` for "both" orders (the target first in exactly half
    of each part, one question's items together), the plain seeded shuffle (`split_items`) for "single" runs, whose
    test rows were not balanced (20 of 36 sycophancy rows had the target as (A))."""
    items = LOADERS[behaviour]()
    if orders == "both":
        return balanced_split(items, n_train, n_val, n_test, seed)
    return split_items(items, n_train, n_val, n_test, seed)


def score_items(model: nn.Module, tokenizer: Any, items: Sequence[Item], fmt: AnswerFormat, orders: str, *,
                system: str | None = None, steering: Steering | None = None,
                coefficients: Sequence[float] | None = None, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Per item: "score" and "pmass", and, in both orders, "position_bias" (`lib.kits.two_choice`); in a single
    order, "logratio" (the unsigned first-minus-second log-ratio). `coefficients`: one per item."""
    if orders == "both":
        return score_both_orders(model, tokenizer, items, fmt, system=system, steering=steering,
                                 coefficients=coefficients, batch_size=batch_size, progress=False).per_item()
    return score_rows(model, tokenizer, to_rows(items, fmt), fmt, system=system, steering=steering,
                      coefficients=coefficients, batch_size=batch_size, progress=False)


FORMATS = {
    "yesno": AnswerFormat("yesno", "Yes", "No", "\nAnswer Yes or No.", ""),
    "yesno_oneword": AnswerFormat("yesno_oneword", "Yes", "No", "\nReply with one word, Yes or No.", ""),
    "ab_paren": AnswerFormat("ab_paren", "A", "B", "\nAnswer with (A) or (B).", "("),
    "ab_answer": AnswerFormat("ab_answer", "A", "B", "\nAnswer with (A) or (B).", "Answer: ("),
}


def open_prompt(item: Item, behaviour: str) -> str:
    """The free-form prompt a persona answers for training data (no answer options)."""
    return dilemma_prompt(item) if KIND[behaviour] == "honesty" else item.question


def rows_digest(behaviour: str, fmt: AnswerFormat, split: dict[str, list[Item]], source: str = "persona",
                orders: str = "single") -> str:
    """A fingerprint of every text a behaviour's results depend on (format, test and validation prompts, persona
    training prompts, the contrast source, the answer orders), so a resumed run never mixes results computed on
    other rows or pairs. The persona source and a single order add nothing, so digests written before those fields
    existed still match."""
    texts: dict[str, Any] = {"format": fmt.name, "test": [r.prompt for r in to_rows(split["test"], fmt)],
                             "val": [r.prompt for r in to_rows(split["val"], fmt)],
                             "train": [open_prompt(item, behaviour) for item in split["train"]]}
    if source != "persona":
        texts["contrast_source"] = source
    if orders != "single":
        texts["orders"] = orders
    return hashlib.sha1(json.dumps(texts).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the side effect

# Neutral text read as the assistant's reply to a neutral instruction: the same context for every method a run
# compares, so a persona system prompt is measured like a weight or activation edit (lib.evals.text_logprobs).
KL_RENDERING: Rendering = "chat_reply"


def neutral_logprobs(model: nn.Module, tokenizer: Any, texts: Sequence[str] = NEUTRAL_TEXTS, system: str | None = None,
                     steering: Steering | None = None, coefficient: float = 0.0,
                     batch_size: int = 16) -> list[torch.Tensor]:
    """Next-token log-probs [tokens, vocab] over each neutral text in the run's rendering (`KL_RENDERING`; `system`
    replaces the default system prompt, for the prompt baselines): what the run's KL and the ablation's compare."""
    return text_logprobs(model, tokenizer, texts, rendering=KL_RENDERING, system=system, steering=steering,
                         coefficients=None if steering is None else [coefficient] * len(texts),
                         batch_size=batch_size, progress=False, desc="neutral")


# ----------------------------------------------------------------------------- the entries

WEIGHT = "weight"  # the method of weight-steering entries; the others train nothing
NO_ADAPTER, NO_SEED = "-", -1  # the adapter and seed of an entry that trains nothing


def entry_record(behaviour: str, method: str, coeff: float, scored: dict[str, torch.Tensor], kl: float,
                 low_pmass: float, adapter: str = NO_ADAPTER, seed: int = NO_SEED, **extra: Any) -> dict[str, Any]:
    """One entry as the run saves it: the unit and coefficient, the score summary, the KL, per-row scores, extras.
    Scored in both orders (`score_items`), `first_bias` is the mean position bias and its rows are kept too."""
    record = {"behaviour": behaviour, "method": method, "adapter": adapter, "seed": seed, "coeff": float(coeff),
              **summarize(scored, low_pmass), "kl": kl, "row_scores": scored["score"].tolist()}
    if "position_bias" in scored:
        record["first_bias"] = float(scored["position_bias"].double().mean())
        record["row_position_bias"] = scored["position_bias"].tolist()
    return record | extra


@dataclass(frozen=True)
class SavedEntry:
    """One saved entry read back: a method (or, for weight steering, an adapter family and seed) at one coefficient.
    `saved` is the JSON object as written, every key (score, pmass, kl, row scores, the adapters' losses), so code
    matches on these fields and the files stay as they are."""

    method: str
    adapter: str
    seed: int
    coeff: float
    saved: Mapping[str, Any]

    @classmethod
    def read(cls, saved: Mapping[str, Any]) -> SavedEntry:
        return cls(str(saved["method"]), str(saved["adapter"]), int(saved["seed"]), float(saved["coeff"]), saved)

    @property
    def unit(self) -> tuple[str, str, int]:
        """(method, adapter, seed): what a resumed run does not score again."""
        return self.method, self.adapter, self.seed

    def is_weight(self, family: str, seed: int | None = None) -> bool:
        """A weight-steering entry of `family` (and of `seed`, when given)."""
        return self.method == WEIGHT and self.adapter == family and (seed is None or self.seed == seed)

    @property
    def score(self) -> float:
        return float(self.saved["score"])

    @property
    def row_scores(self) -> list[float]:
        return list(self.saved["row_scores"])

    @property
    def diverged(self) -> bool:
        """Flagged by the run, or, for a weight entry saved before the flag existed, read from its loss curves."""
        if "diverged" in self.saved:
            return bool(self.saved["diverged"])
        return self.method == WEIGHT and "loss_positive" in self.saved and entry_diverged(self.saved)


def saved_entries(state: Mapping[str, Any]) -> list[SavedEntry]:
    """The entries of a behaviour's state (`partial_file`), read."""
    return [SavedEntry.read(entry) for entry in state["entries"]]


# ----------------------------------------------------------------------------- diverged training


def training_diverged(losses: Sequence[float], before: float | None = None, after: float | None = None) -> bool:
    """A training run that left the model worse on its own training rows, or whose loss is not finite: its delta is
    not an adapter that learned the pairs, and ranking it with the others would report a broken model as a steering
    result (journal 2026-12-01: DeLoRA at lambda 15 went 2.56 -> 10.5 after one step and ended at 5.7).

    With `before` / `after` (the mean loss over every training row, untouched model vs trained adapter; recorded by
    `train_adapter` since the second pass) the check is that paired one. Without them (entries saved earlier) it
    falls back to the last quarter of the per-step losses against the first step's, which batch-to-batch noise can
    trip on short rows (the sycophancy labelled pairs: steps swing 0.1-3), so the paired check is preferred."""
    values = [*losses, *(x for x in (before, after) if x is not None)]
    if not all(math.isfinite(x) for x in values):
        return True
    if before is not None and after is not None:
        return after > before
    if not losses:
        return False
    quarter = max(1, len(losses) // 4)
    return sum(losses[-quarter:]) / quarter > losses[0]


def entry_diverged(entry: Mapping[str, Any]) -> bool:
    """Whether either side of a weight entry's adapter pair diverged, from its per-step losses and, where recorded,
    its loss on all training rows before and after (`train_set_loss`)."""
    full_set = entry.get("train_set_loss", {})
    return any(training_diverged(entry[f"loss_{side}"], *full_set.get(side, (None, None)))
               for side in ("positive", "negative"))


def mark_diverged(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill `diverged` into weight entries saved before it was recorded, from their loss curves."""
    for entry in entries:
        if entry.get("method") == WEIGHT and "diverged" not in entry and "loss_positive" in entry:
            entry["diverged"] = entry_diverged(entry)
    return entries
