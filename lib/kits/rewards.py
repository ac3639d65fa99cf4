"""Rewards for math RL (GRPO): answer extraction, equivalence checking and TRL-compatible reward functions.

The completion format is `<think>...</think>` followed by `<answer>...</answer>` (see
`lib.kits.mathdata.SYSTEM_PROMPT`). The reward shape is the one that learned on SmolLM2-135M-Instruct with one-digit
arithmetic (journal, 2026-11-24, GRPO):
1.0 for a right answer inside the tags, 0.5 for a right last number when the tags are missing, plus 0.2 for the format.
The partial credit matters for a small model: without it most GRPO groups have zero reward variance and nothing learns.

Equivalence uses Hugging Face's `math_verify` (1/2 == 0.5 == \\frac{1}{2}, 3 == 3.0, 2,280 == 2280). Its timeouts use
SIGALRM, which only works in the main thread; elsewhere (an async reward loop, a thread pool) we disable them and rely
on a length cap and a guard against expressions whose evaluation explodes (power towers, huge factorials) instead.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

CORRECT_REWARD = 1.0
LAST_NUMBER_REWARD = 0.5
FORMAT_REWARD = 0.2

# Inside the tags an answer is a number or a short expression; longer text is not a clean answer and costs parse time.
MAX_ANSWER_CHARS = 200
# Seconds per math_verify parse / comparison when we are in the main thread (SIGALRM has 1 s granularity).
TIMEOUT_SECONDS = 1
# Refuse to compare numbers with more digits than this (10^100000 or 99999! make sympy crawl or hang).
MAX_DIGITS = 5000

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_FORMAT = re.compile(r"\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL)
# A number: an optional minus sign (only when it is not a binary minus, i.e. no word character or closing bracket just
# before it), then comma-grouped thousands or plain digits, then optional decimals. In "5-3" the numbers are 5 and 3.
_NUMBER = re.compile(r"(?:(?<![\w.)\]}])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")

# math_verify logs a warning whenever timeouts are disabled; we disable them on purpose outside the main thread.
logging.getLogger("math_verify").setLevel(logging.ERROR)


def extract_answer(completion: str) -> str | None:
    """Content of the last `<answer>...</answer>`, stripped; None when missing, empty or malformed.

    Malformed: no closing tag after the last opening one, a closing tag without an opening one, or content that itself
    contains a tag (nested or interleaved tags) - rewarding those would teach the model sloppy output.
    """
    if not isinstance(completion, str):
        return None
    close = completion.rfind("</answer>")
    if close < 0:
        return None
    opening = completion.rfind("<answer>", 0, close)
    if opening < 0:
        return None
    content = completion[opening + len("<answer>"):close].strip()
    if not content or any(tag in content for tag in _TAGS):
        return None
    return content


def last_number(text: str) -> str | None:
    """The last number in `text` with thousands separators removed ("2,280" -> "2280"), or None.

    Used for partial credit when the model forgets the tags, so a right result still gives a learning signal.
    """
    if not isinstance(text, str):
        return None
    matches = _NUMBER.findall(text)
    return matches[-1].replace(",", "") if matches else None


def _timeout() -> int | None:
    """SIGALRM-based timeouts only work in the main thread; elsewhere math_verify would raise, so disable them."""
    return TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


def _as_latex(text: str) -> str:
    """Wrap a bare answer in $...$ so math_verify parses the whole expression, not its last number.

    Plain parsing reads "- 7" as 7 and "2^(n-1)" as 2; inside $...$ both come out whole. Text that already carries
    math delimiters or a \\boxed{} is left as it is.
    """
    if "$" in text or "\\boxed" in text or "\\(" in text or "\\[" in text:
        return text
    return f"${text}$"


def _parse(text: str) -> list:
    from math_verify import parse

    try:
        return parse(_as_latex(text), parsing_timeout=_timeout())
    except Exception:  # garbage must not stop a training run; math_verify raises on some inputs despite its flags
        return []


def _sympy_parts(parsed: list) -> list:
    from sympy import Basic
    from sympy.matrices import MatrixBase

    return [item for item in parsed if isinstance(item, Basic | MatrixBase)]


def _explosive(expression: Any) -> bool:
    """True when evaluating `expression` could take unbounded time or memory (power towers, huge factorials).

    Needed because outside the main thread math_verify has no timeout, and even in the main thread a 1 s timeout per
    completion is too slow for a reward. Any failure while checking counts as explosive.
    """
    from sympy import Pow, factorial, preorder_traversal

    try:
        for node in preorder_traversal(expression):
            if isinstance(node, Pow) and node.exp.is_number:
                exponent = abs(complex(node.exp.evalf(15)))
                base = node.base
                size = abs(complex(base.evalf(15))) if base.is_number else 10.0
                if exponent * math.log10(max(size, 10.0)) > MAX_DIGITS:
                    return True
            elif (
                isinstance(node, factorial)
                and node.args[0].is_number
                and abs(complex(node.args[0].evalf(15))) > MAX_DIGITS / 4
            ):
                return True
    except Exception:
        return True
    return False


@lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> tuple:
    return tuple(_parse(gold))


def answers_match(predicted: str, gold: str) -> bool:
    """Whether `predicted` is mathematically equivalent to `gold` (math_verify); never raises, False on garbage.

    Cached: in GRPO many completions of a group give the same answer. Predicted answers longer than
    MAX_ANSWER_CHARS or whose evaluation would explode count as wrong.
    """
    if not isinstance(predicted, str) or not isinstance(gold, str):
        return False
    return _answers_match(predicted.strip(), gold.strip())


@lru_cache(maxsize=65536)
def _answers_match(predicted: str, gold: str) -> bool:
    if not predicted or not gold or len(predicted) > MAX_ANSWER_CHARS:
        return False
    if predicted == gold:
        return True
    gold_parsed = list(_parse_gold(gold))
    target = _parse(predicted)
    if not _sympy_parts(gold_parsed) or not _sympy_parts(target):
        return False
    if any(_explosive(item) for item in _sympy_parts(target)):
        return False
    from math_verify import verify

    try:
        return bool(verify(gold_parsed, target, timeout_seconds=_timeout()))
    except Exception:
        return False


def parses(answer: str) -> bool:
    """Whether math_verify turns `answer` into a sympy object (used to keep only gradable gold answers)."""
    return isinstance(answer, str) and bool(answer.strip()) and bool(_sympy_parts(list(_parse_gold(answer.strip()))))


def is_correct(completion: str, answer: str) -> bool:
    """Strict correctness for pass@k: the right answer inside `<answer>` tags."""
    predicted = extract_answer(completion)
    return predicted is not None and answers_match(predicted, answer)


def correctness_reward(completion: str, answer: str) -> float:
    """1.0 for a right answer in the tags; 0.5 if there are no valid tags but the last number is right; else 0.

    A wrong answer inside valid tags gets 0 (no fallback to the last number), so the tags are never a liability.
    """
    predicted = extract_answer(completion)
    if predicted is not None:
        return CORRECT_REWARD if answers_match(predicted, answer) else 0.0
    number = last_number(completion)
    return LAST_NUMBER_REWARD if number is not None and answers_match(number, answer) else 0.0


def format_reward(completion: str) -> float:
    """0.2 when the whole completion is `<think>...</think>` then `<answer>...</answer>`, else 0.

    Precisely: optional whitespace, `<think>`, any text without tags, `</think>`, optional whitespace, `<answer>`,
    non-empty text without tags, `</answer>`, optional whitespace, and nothing else. Text before or after, repeated
    blocks or a missing tag score 0: the reward teaches the exact format the answer extraction relies on.
    """
    if not isinstance(completion, str):
        return 0.0
    match = _FORMAT.fullmatch(completion)
    if match is None:
        return 0.0
    think, answer = match.group("think"), match.group("answer")
    if any(tag in think or tag in answer for tag in _TAGS) or not answer.strip():
        return 0.0
    return FORMAT_REWARD


def completion_text(completion: str | Sequence[dict] | dict) -> str:
    """The text of a TRL completion: a string, or (conversational datasets) a list of message dicts.

    For a message list the assistant messages are joined; message content may be a string or a list of
    content parts ({"type": "text", "text": ...}).
    """
    if isinstance(completion, str):
        return completion
    messages = [completion] if isinstance(completion, dict) else list(completion)
    texts = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role", "assistant") != "assistant":
            continue
        content = message.get("content", "")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(part.get("text", "") for part in content if isinstance(part, dict))
    return "".join(texts)


def trl_correctness_reward(prompts: list, completions: list, answer: list[str], **kwargs: Any) -> list[float]:
    """TRL GRPOTrainer reward function: `correctness_reward` per completion (the dataset needs an `answer` column).

    TRL (1.16) calls reward functions with keyword arguments `prompts`, `completions`, `completion_ids` and every extra
    dataset column repeated per generation, plus trainer state hooks; extras are ignored here.
    """
    if len(completions) != len(answer):
        raise ValueError(f"completions ({len(completions)}) and answer ({len(answer)}) differ in length")
    return [correctness_reward(completion_text(c), str(a)) for c, a in zip(completions, answer, strict=True)]


def trl_format_reward(completions: list, **kwargs: Any) -> list[float]:
    """TRL GRPOTrainer reward function: `format_reward` per completion."""
    return [format_reward(completion_text(c)) for c in completions]
