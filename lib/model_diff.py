"""Steering vectors from the difference between a finetuned model and its base (the seed's "Day 4").

Both models read the same texts; `vector[layer] = mean(finetuned) - mean(base)` of block outputs.
The default reduction, "completion_mean", averages over the tokens of a completion written by the
finetuned model after each training prompt: the tokens where the finetuned behaviour lives, seen
by both models identically. "prompt_last" takes the last prompt token (the state before the
reply); "all_mean" averages prompt and completion tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from lib.extract import extract, prompt_and_completion
from lib.generation import Prompt, generate, render_chat
from lib.vectors import SteeringVector, mean_difference

MODEL_DIFF_REDUCTIONS = ("completion_mean", "prompt_last", "all_mean")


def finetuned_side(
    finetuned: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    reduction: str = "completion_mean",
    completions: Sequence[str] | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
) -> tuple[dict[int, Any], list[str]]:
    """The finetuned model's half: its activations on the texts and the completions they end with (generated
    greedily by `finetuned` when not given). `base_side` reads the same texts, so the two models need not be
    in memory together."""
    texts, starts, how, completions = _texts(finetuned, tokenizer, prompts, reduction, completions, max_new_tokens,
                                            batch_size)
    return extract(finetuned, tokenizer, texts, reduction=how, start_tokens=starts, batch_size=batch_size), completions


def base_side(base: nn.Module, tokenizer: Any, prompts: Sequence[Prompt], completions: Sequence[str], *,
              reduction: str = "completion_mean", batch_size: int = 16) -> dict[int, Any]:
    """The base model's activations on the texts `finetuned_side` read (the same prompts and completions)."""
    texts, starts, how, _ = _texts(None, tokenizer, prompts, reduction, completions, 0, batch_size)
    return extract(base, tokenizer, texts, reduction=how, start_tokens=starts, batch_size=batch_size)


def _texts(finetuned: nn.Module | None, tokenizer: Any, prompts: Sequence[Prompt], reduction: str,
           completions: Sequence[str] | None, max_new_tokens: int, batch_size: int
           ) -> tuple[list[str], list[int] | None, str, list[str]]:
    if reduction not in MODEL_DIFF_REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} must be one of {MODEL_DIFF_REDUCTIONS}")
    if reduction == "prompt_last":
        return [render_chat(tokenizer, p) for p in prompts], None, "last", list(completions or [])
    if completions is None:
        assert finetuned is not None
        completions = generate(finetuned, tokenizer, list(prompts), max_new_tokens=max_new_tokens,
                               batch_size=batch_size)
    texts, starts = prompt_and_completion(tokenizer, prompts, completions)
    return texts, starts if reduction == "completion_mean" else None, "mean", list(completions)


def difference_vector(acts_tuned: dict[int, Any], acts_base: dict[int, Any], reduction: str, n: int,
                      meta: dict[str, Any] | None = None) -> SteeringVector:
    return mean_difference(acts_tuned, acts_base, {"method": "finetuned_minus_base", "reduction": reduction, "n": n,
                                                   **(meta or {})})


def activation_difference(
    base: nn.Module,
    finetuned: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    reduction: str = "completion_mean",
    completions: Sequence[str] | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    meta: dict[str, Any] | None = None,
) -> tuple[SteeringVector, list[str]]:
    """Returns the vector and the completions it was measured on (generated greedily by `finetuned`
    when not given): `finetuned_side`, then `base_side`, then their difference."""
    acts_tuned, completions = finetuned_side(finetuned, tokenizer, prompts, reduction=reduction,
                                             completions=completions, max_new_tokens=max_new_tokens,
                                             batch_size=batch_size)
    acts_base = base_side(base, tokenizer, prompts, completions, reduction=reduction, batch_size=batch_size)
    return difference_vector(acts_tuned, acts_base, reduction, len(prompts), meta), completions
