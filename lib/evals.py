"""Scalar evaluations of a steered model: the main metric and the side effect.

- `continuation_logprobs`: mean per-token log-probability of a continuation after a chat prompt.
  Steering toward a data set should raise the likelihood of that set's held-out replies
  relative to another set's (a cheap, generation-free effect measure, as in CAA's
  behaviour-probability curves, Rimsky et al. 2024).
- `next_token_kl`: KL(unsteered || steered) of the next-token distribution on neutral text,
  averaged over real tokens: how much steering disturbs everything else.

Both take per-row `coefficients`, so a curve over K coefficients is one batched pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lib.generation import encode, render_chat, run_batches
from lib.hooks import Steering


@torch.no_grad()
def continuation_logprobs(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    continuations: Sequence[str],
    *,
    steering: Steering | None = None,
    coefficients: Sequence[float] | None = None,
    batch_size: int = 16,
    chat: bool = True,
    max_continuation_tokens: int = 64,
    progress: bool = True,
) -> torch.Tensor:
    """[N] mean log-probability per continuation token (the continuation is cut to max_continuation_tokens)."""
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt with its continuation")
    prompt_ids = encode(tokenizer, [render_chat(tokenizer, p, chat=chat) for p in prompts], chat)
    cont_ids = [tokenizer(c, add_special_tokens=False)["input_ids"][:max_continuation_tokens] for c in continuations]
    if any(len(c) == 0 for c in cont_ids):
        raise ValueError("a continuation is empty: every row needs at least one continuation token")
    rows = [p + c for p, c in zip(prompt_ids, cont_ids, strict=True)]

    def forward(part: slice, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        # Left padding puts every continuation at the end: only the last `keep` logits are needed.
        keep = max(len(c) for c in cont_ids[part]) + 1
        logprobs = torch.log_softmax(last_logits(model, batch, keep)[:, :-1], dim=-1)
        targets = batch["input_ids"][:, -(keep - 1):]
        token_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return [token_lp[row, token_lp.shape[1] - len(cont):].mean().cpu() for row, cont in enumerate(cont_ids[part])]

    scores = run_batches(model, rows, batch_size, tokenizer.pad_token_id, forward, steering=steering,
                         coefficients=coefficients, desc="logprob", progress=progress)
    return torch.stack([score for batch_scores in scores for score in batch_scores])


def last_logits(model: nn.Module, batch: dict, keep: int) -> torch.Tensor:
    """Logits of the last `keep` positions; models without `logits_to_keep` compute all and are cut."""
    try:
        logits = model(**batch, logits_to_keep=keep).logits
    except TypeError:
        logits = model(**batch).logits
    return logits[:, -keep:].float()


@torch.no_grad()
def next_token_kl(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    steering: Steering,
    coefficients: Sequence[float],
    batch_size: int = 16,
    progress: bool = True,
) -> torch.Tensor:
    """[len(coefficients)] mean KL(unsteered || steered) over real tokens of `texts`, one value per
    coefficient; the texts are repeated once per coefficient so all of them run batched."""
    if not texts:
        raise ValueError("texts is empty: the KL is averaged over the tokens of at least one neutral text")
    if len(coefficients) == 0:
        raise ValueError("coefficients is empty: give the coefficients to measure the KL at, e.g. [1.0]")
    encoded = encode(tokenizer, texts, chat=False)
    base = real_token_logprobs(model, tokenizer, texts, batch_size, progress)
    k, n = len(coefficients), len(texts)
    row_coefficients = [float(c) for c in coefficients for _ in range(n)]
    totals, counts = torch.zeros(k), torch.zeros(k)

    def forward(part: slice, batch: dict[str, torch.Tensor]) -> None:
        steered = F.log_softmax(model(**batch).logits.float(), dim=-1)
        for i, row in enumerate(range(part.start, part.stop)):
            reference = base[row % n]
            totals[row // n] += kl_sum(reference, steered[i][batch["attention_mask"][i].bool()].cpu())
            counts[row // n] += len(reference)

    run_batches(model, [encoded[row % n] for row in range(k * n)], batch_size, tokenizer.pad_token_id, forward,
                steering=steering, coefficients=row_coefficients, desc="kl", progress=progress)
    return totals / counts


@torch.no_grad()
def real_token_logprobs(model: nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int = 16,
                        progress: bool = True) -> list[torch.Tensor]:
    """Per text, [real tokens, vocab] next-token log-probs of the (unsteered) model."""
    def forward(part: slice, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        logprobs = F.log_softmax(model(**batch).logits.float(), dim=-1)
        return [lp[m.bool()].cpu() for lp, m in zip(logprobs, batch["attention_mask"], strict=True)]

    out = run_batches(model, encode(tokenizer, texts, chat=False), batch_size, tokenizer.pad_token_id, forward,
                      desc="logprobs", progress=progress)
    return [logprobs for batch_logprobs in out for logprobs in batch_logprobs]


def kl_sum(reference: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """KL(reference || current) summed over the rows of two [tokens, vocab] log-prob tensors (nats): the one KL
    every side-effect measure here uses."""
    return (reference.exp() * (reference - current)).sum()


def mean_kl(reference: Sequence[torch.Tensor], current: Sequence[torch.Tensor]) -> float:
    """Mean KL(reference || current) per token over texts, each given as [tokens, vocab] log-probs (nats)."""
    total = sum(float(kl_sum(r, c)) for r, c in zip(reference, current, strict=True))
    return total / sum(len(r) for r in reference)


def model_kl(reference: nn.Module, other: nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int = 16,
             progress: bool = True) -> float:
    """Mean KL(reference || other) per real token of `texts`: e.g. how far finetuning moved the model."""
    if not texts:
        raise ValueError("texts is empty: the KL is averaged over the tokens of at least one text")
    return mean_kl(real_token_logprobs(reference, tokenizer, texts, batch_size, progress),
                   real_token_logprobs(other, tokenizer, texts, batch_size, progress))


def effect_curve(
    model: nn.Module,
    tokenizer: Any,
    target: Sequence[tuple[str, str]],
    baseline: Sequence[tuple[str, str]],
    steering: Steering,
    coefficients: Sequence[float],
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Per coefficient: mean log-prob of held-out target replies, of baseline replies, and their gap.

    All coefficients run as one batch of len(pairs) * len(coefficients) rows.
    """
    pairs = list(target) + list(baseline)
    k, n = len(coefficients), len(pairs)
    prompts = [p for p, _ in pairs] * k
    replies = [r for _, r in pairs] * k
    row_coefficients = [float(c) for c in coefficients for _ in range(n)]
    scores = continuation_logprobs(model, tokenizer, prompts, replies, steering=steering,
                                   coefficients=row_coefficients, batch_size=batch_size, progress=progress)
    scores = scores.reshape(k, n)
    target_lp = scores[:, : len(target)].mean(1)
    baseline_lp = scores[:, len(target):].mean(1)
    return {
        "coefficient": [float(c) for c in coefficients],
        "target_logprob": target_lp.tolist(),
        "baseline_logprob": baseline_lp.tolist(),
        "gap": (target_lp - baseline_lp).tolist(),
    }
