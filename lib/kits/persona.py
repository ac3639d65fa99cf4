"""Persona vectors from contrasting system prompts (Chen et al. 2025, "Persona vectors"): the mean difference of
the residual stream at the reply's first position between a system prompt that describes a trait and one that
does not, on the same questions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from lib.extract import extract
from lib.generation import render_chat
from lib.vectors import SteeringVector, mean_difference


def persona_vector(model: nn.Module, tokenizer: Any, questions: Sequence[str], trait_system: str,
                   neutral_system: str = "You are a helpful assistant.", *, layers: Sequence[int],
                   batch_size: int = 16) -> SteeringVector:
    """mean(act | trait system prompt) - mean(act | neutral system prompt) at the last prompt token (where the
    reply starts), per layer, over `questions`."""
    if not questions:
        raise ValueError("questions is empty: the vector is a mean over at least one question")
    sides = []
    for system in (trait_system, neutral_system):
        texts = [render_chat(tokenizer, question, system=system) for question in questions]
        sides.append(extract(model, tokenizer, texts, layers=list(layers), reduction="last", batch_size=batch_size,
                             progress=False))
    vector = mean_difference(sides[0], sides[1])
    vector.meta.update({"method": "persona_system_prompts", "trait_system": trait_system,
                        "neutral_system": neutral_system, "n_questions": len(questions)})
    return vector
