"""Scores for generated text: degenerate-text flags, a likelihood judge and a projection monitor.

Why (issue "One evaluation kit"): a user's hand-written word-list score misled (one degenerate reply scored 35.7
while the medians stayed 0 to 1.4), and steering at a strong coefficient loops or writes non-words that any score
can read as "more of the trait". So every text score comes with `degenerate` beside it, and two scores that need no
word list:
- `likelihood_judge`: log p(text | prompt A) - log p(text | prompt B) per token, under any model (A describes the
  trait, B does not): how much better the trait's description explains the text;
- `projection_score`: how much of a direction the model's own activations carry while reading the text (a monitor,
  as persona vectors use it: Chen et al. 2025).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from lib.evals import continuation_logprobs
from lib.extract import extract, prompt_and_completion
from lib.vectors import SteeringVector

_WORD = re.compile(r"[^\W\d_]{2,}|[aAI]$")  # a word: letters only (2 or more), or "a"/"I"


@dataclass(frozen=True)
class Degeneracy:
    """repetition: the share of word 3-grams that repeat an earlier one; nonwords: the share of whitespace-split
    tokens that are not words (after stripping punctuation); degenerate when the text is empty or either share is
    over `limit`."""

    repetition: float
    nonwords: float
    empty: bool
    degenerate: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def degeneracy(text: str, limit: float = 0.5) -> Degeneracy:
    tokens = text.split()
    if not tokens:
        return Degeneracy(0.0, 0.0, True, True)
    stripped = [token.strip(".,;:!?\"'()[]{}-") for token in tokens]
    nonwords = sum(not _WORD.fullmatch(token) for token in stripped) / len(tokens)
    words = [token.lower() for token in stripped if token]
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    repetition = 1 - len(set(grams)) / len(grams) if grams else 0.0
    return Degeneracy(repetition, nonwords, False, repetition > limit or nonwords > limit)


def likelihood_judge(model: nn.Module, tokenizer: Any, texts: Sequence[str], prompt_a: str | Sequence[str],
                     prompt_b: str | Sequence[str], *, batch_size: int = 16, chat: bool = True,
                     max_tokens: int = 128, progress: bool = False) -> torch.Tensor:
    """[N] mean log p per token of each text after prompt A minus after prompt B (one prompt for all texts, or one
    per text), as a reply in the chat template. Both sides run in one batched pass. Empty texts are refused."""
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: nothing to judge")
    empty = [i for i, text in enumerate(texts) if not text.strip()]
    if empty:
        raise ValueError(f"texts[{empty[0]}] is empty: a likelihood needs tokens (flag it with `degeneracy`)")
    sides = []
    for name, prompt in (("prompt_a", prompt_a), ("prompt_b", prompt_b)):
        prompts = [prompt] * len(texts) if isinstance(prompt, str) else list(prompt)
        if len(prompts) != len(texts):
            raise ValueError(f"{name} has {len(prompts)} prompts for {len(texts)} texts; give one, or one per text")
        sides.append(prompts)
    scores = continuation_logprobs(model, tokenizer, sides[0] + sides[1], texts + texts, batch_size=batch_size,
                                   chat=chat, max_continuation_tokens=max_tokens, progress=progress)
    return scores[:len(texts)] - scores[len(texts):]


def projection_score(model: nn.Module, tokenizer: Any, prompts: Sequence[Any], texts: Sequence[str],
                     direction: SteeringVector, layer: int, *, batch_size: int = 16) -> torch.Tensor:
    """[N] the mean over each text's tokens (read as the reply to its prompt) of the block-`layer` output projected
    on the unit direction `direction[layer]`: how much of the direction the model carries while reading the text.
    NaN for an empty text."""
    if len(prompts) != len(texts):
        raise ValueError(f"{len(prompts)} prompts for {len(texts)} texts")
    unit = direction[layer].float() / direction[layer].float().norm()
    keep = [i for i, text in enumerate(texts) if text.strip()]
    out = torch.full((len(texts),), float("nan"))
    if keep:
        joined, starts = prompt_and_completion(tokenizer, [prompts[i] for i in keep], [texts[i] for i in keep])
        acts = extract(model, tokenizer, joined, layers=[layer], reduction="mean", start_tokens=starts,
                       batch_size=batch_size, progress=False)[layer]
        out[keep] = acts.float() @ unit
    return out
