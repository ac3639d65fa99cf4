"""Answer extraction, equivalence and the GRPO rewards on hand-written completions."""

from __future__ import annotations

import threading
import time

import pytest

from lib.kits.mathdata import ONE_SHOT
from lib.kits.rewards import (
    answers_match,
    completion_text,
    correctness_reward,
    extract_answer,
    format_reward,
    is_correct,
    last_number,
    trl_correctness_reward,
    trl_format_reward,
)

GOOD = "<think>7 times 8 is 56.</think>\n<answer>56</answer>"


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (GOOD, "56"),
        ("<answer>  -3 </answer>", "-3"),
        ("<answer>1</answer> then <answer>2</answer>", "2"),  # the last block counts
        ("<think>x</think><answer>56", None),  # missing close tag
        ("The answer is 56.", None),  # answer outside tags
        ("56</answer>", None),  # close without open
        ("<answer><answer>5</answer></answer>", None),  # nested
        ("<answer>5<think></answer>", None),  # another tag inside
        ("<answer>   </answer>", None),  # empty
        ("<answer></answer>", None),
        ("", None),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [
        ("1/2", "0.5"),
        ("0.5", "1/2"),
        ("\\frac{1}{2}", "0.5"),
        ("0.5", "\\frac{1}{2}"),
        ("\\dfrac{3}{4}", "0.75"),
        ("3", "3.0"),
        ("3.0", "3"),
        ("$2,280$", "2280"),
        ("2,280", "2280"),
        ("-7", "-7"),
        ("- 7", "-7"),
        ("-1/2", "-0.5"),
        ("x = 5", "5"),
        ("\\boxed{4}", "4"),
        ("2^{n-1}", "2^(n-1)"),
        ("\\sqrt{3}", "sqrt(3)"),
    ],
)
def test_equivalent_forms_match(predicted, gold):
    assert answers_match(predicted, gold)


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [
        ("7", "-7"),
        ("-7", "7"),
        ("56", "57"),
        ("0.5", "0.25"),
        ("12 and 13", "13"),  # hedging with two answers is wrong
        ("garbage", "5"),
        ("", "5"),
        ("}{", "5"),
        ("\\frac{", "5"),
        ("$$", "5"),
        ("9^{9^{9}}", "3"),  # would hang sympy without the guard
        ("(10^{15})!", "3"),
        ("1" * 500, "1"),  # too long to be an answer
    ],
)
def test_wrong_or_garbage_answers_do_not_match(predicted, gold):
    assert not answers_match(predicted, gold)


def test_answers_match_never_raises_on_odd_types():
    assert not answers_match(None, "5")  # type: ignore[arg-type]
    assert not answers_match("5", None)  # type: ignore[arg-type]
    assert not answers_match(["5"], "5")  # type: ignore[arg-type]


def test_answers_match_works_outside_the_main_thread_and_fast():
    """math_verify's SIGALRM timeouts fail in threads; we turn them off there and guard explosive input instead."""
    results = {}

    def run():
        start = time.perf_counter()
        results["ok"] = [answers_match("0.125", "1/8"), answers_match("2^{2^{40}}", "1"), answers_match("4", "-4")]
        results["seconds"] = time.perf_counter() - start

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=20)
    assert results["ok"] == [True, False, False]
    assert results["seconds"] < 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("So the total is 2,280 dollars.", "2280"),
        ("5 - 3 = 2", "2"),
        ("5-3", "3"),  # a binary minus is not a sign
        ("it drops to -4.", "-4"),
        ("(-3)", "-3"),
        ("pi is 3.14.", "3.14"),
        ("1,2,3", "3"),
        ("no digits here", None),
    ],
)
def test_last_number(text, expected):
    assert last_number(text) == expected


def test_correctness_reward_levels():
    assert correctness_reward(GOOD, "56") == 1.0
    assert correctness_reward("<think>hm</think><answer>56.0</answer>", "56") == 1.0
    assert correctness_reward("<think>7 * 8 = 54</think><answer>54</answer>", "56") == 0.0
    # no valid tags: half credit when the last number is right
    assert correctness_reward("7 times 8 is 56", "56") == 0.5
    assert correctness_reward("<think>7 * 8</think><answer>56", "56") == 0.5  # missing close tag
    assert correctness_reward("7 times 8 is 56, or maybe 54", "56") == 0.0
    # wrong answer in valid tags gets nothing even if the right number appears earlier
    assert correctness_reward("<think>56?</think><answer>54</answer>", "56") == 0.0
    assert correctness_reward("", "56") == 0.0
    assert correctness_reward("<answer>1/2</answer>", "0.5") == 1.0


def test_is_correct_is_strict():
    assert is_correct(GOOD, "56")
    assert not is_correct("7 times 8 is 56", "56")
    assert not is_correct("<answer>55</answer>", "56")


@pytest.mark.parametrize(
    ("completion", "reward"),
    [
        (GOOD, 0.2),
        ("<think>a</think><answer>b</answer>", 0.2),
        ("  \n<think>\nlong\nthought\n</think>  \n\n<answer> 4 </answer>\n ", 0.2),  # whitespace tolerated
        ("<think></think><answer>4</answer>", 0.2),  # an empty thought is still the format
        ("<answer>4</answer>", 0.0),  # no think block
        ("<think>a</think>", 0.0),  # no answer block
        ("<answer>4</answer><think>a</think>", 0.0),  # wrong order
        ("<think>a</think><answer>4", 0.0),  # missing close tag
        ("<think>a</think><answer> </answer>", 0.0),  # empty answer
        ("Sure! <think>a</think><answer>4</answer>", 0.0),  # text before
        ("<think>a</think><answer>4</answer> Hope that helps", 0.0),  # text after
        ("<think>a</think><answer>4</answer><answer>5</answer>", 0.0),  # repeated block
        ("<think><think>a</think></think><answer>4</answer>", 0.0),  # nested
        ("", 0.0),
    ],
)
def test_format_reward(completion, reward):
    assert format_reward(completion) == reward


def test_one_shot_demo_earns_full_reward():
    demo = ONE_SHOT[1]["content"]
    assert format_reward(demo) == 0.2 and correctness_reward(demo, "13") == 1.0  # 7 + 6


def test_trl_reward_functions_with_string_completions():
    completions = [GOOD, "7 times 8 is 56", "<think>x</think><answer>1</answer>", "nothing"]
    answers = ["56"] * 4
    kwargs = {"completion_ids": [[1]] * 4, "trainer_state": None, "log_extra": None, "log_metric": None}
    correctness = trl_correctness_reward(prompts=["p"] * 4, completions=completions, answer=answers, **kwargs)
    assert correctness == [1.0, 0.5, 0.0, 0.0]
    assert trl_format_reward(prompts=["p"] * 4, completions=completions, answer=answers, **kwargs) == [0.2, 0, 0.2, 0]


def test_trl_reward_functions_with_conversational_completions():
    completions = [
        [{"role": "assistant", "content": GOOD}],
        [{"role": "assistant", "content": "It is 56"}],
        [{"role": "assistant", "content": [{"type": "text", "text": GOOD}]}],  # content parts
    ]
    prompts = [[{"role": "user", "content": "What is 7 * 8?"}]] * 3
    assert trl_correctness_reward(prompts=prompts, completions=completions, answer=["56"] * 3) == [1.0, 0.5, 1.0]
    assert trl_format_reward(prompts=prompts, completions=completions) == [0.2, 0.0, 0.2]
    assert completion_text([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]) == "y"


def test_trl_correctness_reward_checks_lengths():
    with pytest.raises(ValueError, match="completions \\(2\\) and answer \\(1\\)"):
        trl_correctness_reward(prompts=["p", "p"], completions=[GOOD, GOOD], answer=["56"])
