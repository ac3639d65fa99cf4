"""Scoring of math completions into pass@k, intervals and the answer-format rate."""

from __future__ import annotations

import pytest

from lib.kits.mathdata import MathProblem
from lib.kits.matheval import ks_for, score


def test_score_counts_strict_correctness_and_format():
    problems = [MathProblem("Calculate 1 + 1.", "2", "t"), MathProblem("Calculate 2 * 3.", "6", "t")]
    completions = [
        ["<think>1 + 1 = 2</think>\n<answer>2</answer>", "<think>x</think><answer>3</answer>", "2",
         "<answer>2.0</answer>"],
        ["<think>2 * 3 = 6</think>", "<answer>6</answer>", "<answer>7</answer>", "<answer>6/1</answer>"],
    ]
    result = score(problems, completions)
    assert result.correct_counts == [2, 2]  # "2" without tags is not correct; 2.0 and 6/1 are equivalent
    assert result.pass_at[1] == pytest.approx(0.5)
    assert result.pass_at[4] == pytest.approx(1.0)
    assert result.answer_rate == pytest.approx(6 / 8)
    assert set(result.summary()["pass_at"]) == {"1", "2", "4"}
    assert ks_for(5) == [1, 2, 4]
