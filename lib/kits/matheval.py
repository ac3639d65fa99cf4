"""pass@k evaluation of math reasoning, for one model or a grid of steering weights in one batch.

Scoring is the strict one used in training: the right answer inside `<answer>` tags
(`lib.kits.rewards.is_correct`, answer equivalence by math-verify). pass@k is the unbiased estimator
of Chen et al. 2021 from n completions per problem. A grid of W steering weights runs as
problems x n x W rows with one coefficient per row, so it costs about one generation pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from lib.generation import generate
from lib.hooks import Steering
from lib.kits.mathdata import MathProblem, build_messages
from lib.kits.passk import mean_pass_at_k, pass_at_k, pass_at_k_ci, wilson_interval
from lib.kits.rewards import extract_answer, is_correct


@dataclass
class MathEval:
    n_problems: int
    n_completions: int
    pass_at: dict[int, float]  # k -> pass@k
    pass1_ci: tuple[float, float]  # 95% bootstrap interval over problems
    correct_counts: list[int]  # per problem, out of n_completions
    answer_rate: float  # share of completions with a well-formed <answer>: tells "steering helped" from "fixed format"
    completions: list[list[str]]  # per problem

    def summary(self) -> dict[str, Any]:
        """JSON-ready, without completions; pass@k keys are strings ("1", "2", ...) as they load back."""
        data = asdict(self)
        data.pop("completions")
        data["pass_at"] = {str(k): v for k, v in self.pass_at.items()}
        return data


def ks_for(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to n."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks


def score(problems: Sequence[MathProblem], completions: list[list[str]]) -> MathEval:
    n = len(completions[0])
    counts = [sum(is_correct(c, p.answer) for c in per) for p, per in zip(problems, completions, strict=True)]
    per_problem_pass1 = [pass_at_k(n, c, 1) for c in counts]
    return MathEval(
        n_problems=len(problems),
        n_completions=n,
        pass_at={k: mean_pass_at_k(counts, n, k) for k in ks_for(n)},
        pass1_ci=pass_at_k_ci(per_problem_pass1) if n > 1 else wilson_interval(sum(counts), len(counts)),
        correct_counts=counts,
        answer_rate=sum(extract_answer(c) is not None for per in completions for c in per) / (len(problems) * n),
        completions=completions,
    )


def evaluate_math(
    model: nn.Module,
    tokenizer: Any,
    problems: Sequence[MathProblem],
    *,
    n_completions: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    seed: int = 0,
    one_shot: bool = True,
    steering: Steering | None = None,
    coefficients: Sequence[float] | None = None,
    progress: bool = True,
) -> dict[float | None, MathEval]:
    """Evaluate unsteered (key None), or at every coefficient in `coefficients` with `steering` (keys: the
    coefficients; a notebook may call them weights).

    n_completions > 1 needs temperature > 0 (greedy completions would all be equal).
    """
    if n_completions < 1:
        raise ValueError(f"num_completions_eval={n_completions} must be >= 1")
    if n_completions > 1 and temperature == 0:
        raise ValueError(f"num_completions_eval={n_completions} needs eval_temperature > 0 (greedy repeats itself)")
    if (steering is None) != (coefficients is None):
        raise ValueError("pass steering and coefficients together (the strengths of the steering vector)")
    grid: list[float | None] = list(coefficients) if coefficients is not None else [None]
    messages = [build_messages(p.question, one_shot=one_shot) for p in problems]
    rows = [m for _ in grid for m in messages for _ in range(n_completions)]
    row_coefficients = None if coefficients is None else \
        [float(c) for c in grid for _ in messages for _ in range(n_completions)]
    outputs = generate(model, tokenizer, rows, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                       batch_size=batch_size, steering=steering, coefficients=row_coefficients, progress=progress)
    results: dict[float | None, MathEval] = {}
    per_coefficient = len(problems) * n_completions
    for g, coefficient in enumerate(grid):
        block = outputs[g * per_coefficient:(g + 1) * per_coefficient]
        per_problem = [block[i * n_completions:(i + 1) * n_completions] for i in range(len(problems))]
        results[coefficient] = score(problems, per_problem)
    return results
