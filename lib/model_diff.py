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
    when not given)."""
    if reduction not in MODEL_DIFF_REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} must be one of {MODEL_DIFF_REDUCTIONS}")
    rendered = [render_chat(tokenizer, p) for p in prompts]
    if reduction == "prompt_last":
        texts, starts, how, completions = rendered, None, "last", list(completions or [])
    else:
        if completions is None:
            completions = generate(finetuned, tokenizer, list(prompts), max_new_tokens=max_new_tokens,
                                   batch_size=batch_size)
        texts, starts = prompt_and_completion(tokenizer, prompts, completions)
        starts = starts if reduction == "completion_mean" else None
        how = "mean"
    acts_base = extract(base, tokenizer, texts, reduction=how, start_tokens=starts, batch_size=batch_size)
    acts_tuned = extract(finetuned, tokenizer, texts, reduction=how, start_tokens=starts, batch_size=batch_size)
    vector = mean_difference(acts_tuned, acts_base, {"method": "finetuned_minus_base", "reduction": reduction,
                                                     "n": len(prompts), **(meta or {})})
    return vector, list(completions)
