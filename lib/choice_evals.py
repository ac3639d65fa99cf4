"""Two-choice evaluations by the next-token log-ratio of the answer tokens (Yes/No, (A)/(B)).

Per row: `logratio = log p(first answer) - log p(second answer)`, each side summed over the tokenizer's variants of
its answer (e.g. "Yes", " Yes", "yes"), then multiplied by the row's sign (+1 when the first answer is the target
behaviour, -1 otherwise), so a positive score always means "more of the target behaviour" whichever way a row is
phrased (the convention of CAA, Rimsky et al. 2024, and of weight steering, Fierro & Roger 2025).

`pmass`, the probability mass on all answer tokens, is reported beside every score: a steered model that stops
answering moves the log-ratio without having changed its mind. On the embedded default the prompt format decides
pmass (0.94 for (A)/(B) with the assistant turn prefilled with "(", 0.57 for Yes/No; journal, 2026-11-24,
weight steering), so the format is chosen on validation items (`lib.kits.two_choice.choose_answer_format`: pmass,
then headroom, in both answer orders).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lib.evals import last_logits
from lib.generation import encode, render_chat, run_batches
from lib.hooks import Steering

LOW_PMASS = 0.5


@dataclass(frozen=True)
class ChoiceRow:
    """One question. `sign` is +1 when the first answer (Yes, (A)) is the target behaviour, -1 when the second is."""

    id: str
    prompt: str
    sign: int

    def __post_init__(self) -> None:
        if self.sign not in (1, -1):
            raise ValueError(f"row {self.id}: sign={self.sign!r} must be +1 or -1")


@dataclass(frozen=True)
class AnswerFormat:
    """How a row is asked: text appended to the user message, text prefilled in the assistant turn, and the two
    answer words whose next-token probabilities are compared."""

    name: str
    first: str = "Yes"
    second: str = "No"
    suffix: str = "\nAnswer Yes or No."
    prefill: str = ""


def answer_token_ids(tokenizer: Any, word: str) -> list[int]:
    """Single-token spellings of `word` (as is, lower, upper, capitalised; with and without a leading space).
    Single letters keep their case ("a" is another word than "A")."""
    spellings = {word} if len(word) == 1 else {word, word.lower(), word.upper(), word.capitalize()}
    ids = set()
    for spelling in spellings:
        for text in (spelling, " " + spelling):
            encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(encoded) == 1:
                ids.add(int(encoded[0]))
    if not ids:
        raise ValueError(f"answer word {word!r} is not a single token in any spelling for this tokenizer; "
                         "choose another answer word")
    return sorted(ids)


def answer_ids(tokenizer: Any, fmt: AnswerFormat) -> tuple[list[int], list[int]]:
    first, second = answer_token_ids(tokenizer, fmt.first), answer_token_ids(tokenizer, fmt.second)
    shared = set(first) & set(second)
    if shared:
        raise ValueError(f"format {fmt.name!r}: answers {fmt.first!r} and {fmt.second!r} share token ids {shared}")
    return first, second


def choice_logratio(logprobs: torch.Tensor, first_ids: Sequence[int],
                    second_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """From next-token log-probs [B, V]: (log p(first) - log p(second), pmass = p(first) + p(second)), each [B]."""
    first = torch.logsumexp(logprobs[:, list(first_ids)], dim=-1)
    second = torch.logsumexp(logprobs[:, list(second_ids)], dim=-1)
    return first - second, torch.logaddexp(first, second).exp()


def signed_scores(logratio: torch.Tensor, rows: Sequence[ChoiceRow]) -> torch.Tensor:
    """Flip each row's log-ratio by its label so that positive means more of the target behaviour."""
    signs = torch.tensor([row.sign for row in rows], dtype=logratio.dtype, device=logratio.device)
    if signs.shape != logratio.shape:
        raise ValueError(f"{len(rows)} rows for {logratio.shape[0]} log-ratios")
    return logratio * signs


def render_rows(tokenizer: Any, rows: Sequence[ChoiceRow], fmt: AnswerFormat,
                system: str | Sequence[str | None] | None = None, chat: bool = True) -> list[str]:
    """The text each row's next token is read after: chat prompt (with `system`, if any: one for all rows, or one
    per row, so conditions with different system prompts share a batch) plus the prefill."""
    systems = list(system) if system is not None and not isinstance(system, str) else [system] * len(rows)
    if len(systems) != len(rows):
        raise ValueError(f"system has {len(systems)} prompts for {len(rows)} rows; give one, or one per row")
    if not chat and any(systems):
        raise ValueError("a system prompt needs chat=True")
    return [render_chat(tokenizer, row.prompt + fmt.suffix, system=one, chat=chat) + fmt.prefill
            for row, one in zip(rows, systems, strict=True)]


@torch.no_grad()
def score_rows(
    model: nn.Module,
    tokenizer: Any,
    rows: Sequence[ChoiceRow],
    fmt: AnswerFormat,
    *,
    system: str | Sequence[str | None] | None = None,
    steering: Steering | None = None,
    coefficients: Sequence[float] | None = None,
    batch_size: int = 16,
    chat: bool = True,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Per row: `score` (signed log-ratio), `logratio` (first minus second answer) and `pmass`, each [N].

    With `steering` and per-row `coefficients`, a sweep over K coefficients is one batched job of N*K rows
    (repeat the rows K times); a weight delta is applied around this call instead (`lib.weights.apply_delta`).
    """
    if not rows:
        raise ValueError("rows is empty: nothing to score")
    first_ids, second_ids = answer_ids(tokenizer, fmt)
    encoded = encode(tokenizer, render_rows(tokenizer, rows, fmt, system, chat), chat)

    def forward(part: slice, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = last_logits(model, batch, 1)[:, -1]
        logratio, pmass = choice_logratio(torch.log_softmax(logits, dim=-1), first_ids, second_ids)
        return logratio.cpu(), pmass.cpu()

    scored = run_batches(model, encoded, batch_size, tokenizer.pad_token_id, forward, steering=steering,
                         coefficients=coefficients, desc=f"score {fmt.name}", progress=progress, share_trunk=True)
    logratio = torch.cat([logratio for logratio, _ in scored])
    return {"score": signed_scores(logratio, rows), "logratio": logratio, "pmass": torch.cat([p for _, p in scored])}


def summarize(scored: dict[str, torch.Tensor], low_pmass: float = LOW_PMASS) -> dict[str, float]:
    """Mean score with its standard error, mean pmass, the fraction of rows whose pmass is under `low_pmass`, and
    `first_bias`, the mean unsigned log-ratio: a preference for the first answer ("Yes", "(A)") whatever the row,
    which an intervention can move without moving the signed score."""
    score, pmass = scored["score"].double(), scored["pmass"].double()
    n = len(score)
    summary = {"score": float(score.mean()), "score_se": float(score.std() / n**0.5) if n > 1 else float("nan"),
               "pmass": float(pmass.mean()), "frac_low_pmass": float((pmass < low_pmass).double().mean()), "n": n}
    if "logratio" in scored:
        summary["first_bias"] = float(scored["logratio"].double().mean())
    return summary
