"""Scalar evaluations of a steered model: the main metric and the side effect.

- `continuation_logprobs`: mean per-token log-probability of a continuation after a chat prompt.
  Steering toward a data set should raise the likelihood of that set's held-out replies
  relative to another set's (a cheap, generation-free effect measure, as in CAA's
  behaviour-probability curves, Rimsky et al. 2024).
- `next_token_kl`: KL(unsteered || steered) of the next-token distribution on neutral text,
  averaged over real tokens: how much steering disturbs everything else.

Both take per-row `coefficients`, so a curve over K coefficients is one batched pass. Which next-token distributions
of a text the KL compares is one function, `text_logprobs`, with its `rendering` named: "raw" (the text alone) or
"chat_reply" (the text as the assistant's reply to a neutral instruction, where weight steering also compares
system prompts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Literal

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
                         coefficients=coefficients, desc="logprob", progress=progress, share_trunk=True)
    return torch.stack([score for batch_scores in scores for score in batch_scores])


def last_logits(model: nn.Module, batch: dict, keep: int) -> torch.Tensor:
    """Logits of the last `keep` positions; models without `logits_to_keep` compute all and are cut."""
    try:
        logits = model(**batch, logits_to_keep=keep).logits
    except TypeError:
        logits = model(**batch).logits
    return logits[:, -keep:].float()


Rendering = Literal["raw", "chat_reply"]
RENDERINGS: tuple[Rendering, ...] = ("raw", "chat_reply")
# "chat_reply" reads a text as the reply to this instruction: one context for every method weight steering compares,
# persona system prompts included (lib.kits.weight_runs).
NEUTRAL_INSTRUCTION = "Write a sentence about everyday life."


@torch.no_grad()
def text_logprobs(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    rendering: Rendering = "raw",
    system: str | None = None,
    instruction: str = NEUTRAL_INSTRUCTION,
    steering: Steering | None = None,
    coefficients: Sequence[float] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "logprobs",
    reduce: Callable[[int, torch.Tensor], Any] | None = None,
) -> list[Any]:
    """Per text, the [positions, vocab] next-token log-probs the side-effect KL compares: the one definition that
    `next_token_kl`, `model_kl` and weight steering share (two had grown apart; issue "The weight wing and one way
    in", item 6).

    - "raw": the text alone, tokenized with the tokenizer's special tokens; every real position.
    - "chat_reply": the text as the assistant's reply to `instruction` (default `NEUTRAL_INSTRUCTION`; `system`
      replaces the default system prompt); the positions that predict the text's tokens.

    `coefficients` (one per text) go with `steering`. `reduce(i, logprobs)`, where given, is applied to text i's
    log-probs as its batch runs and its result is kept instead (a KL sum keeps one batch of log-probs in memory)."""
    if rendering == "raw":
        if system is not None or instruction != NEUTRAL_INSTRUCTION:
            raise ValueError("system= and instruction= are part of the chat_reply rendering; rendering='raw' reads "
                             "the text alone")
        rows = encode(tokenizer, texts, chat=False)

        def positions(index: int, logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return logprobs[mask.bool()]
    elif rendering == "chat_reply":
        context = encode(tokenizer, [render_chat(tokenizer, instruction, system=system)], chat=True)[0]
        text_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
        rows = [context + ids for ids in text_ids]

        def positions(index: int, logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            width = logprobs.shape[0]  # left padding: the text is at the end
            return logprobs[width - len(text_ids[index]) - 1: width - 1]
    else:
        raise ValueError(f"rendering={rendering!r} must be one of {RENDERINGS}")
    keep = reduce or (lambda index, logprobs: logprobs)

    def forward(part: slice, batch: dict[str, torch.Tensor]) -> list[Any]:
        logprobs = F.log_softmax(model(**batch).logits.float(), dim=-1)
        rows_here = zip(range(part.start, part.stop), logprobs, batch["attention_mask"], strict=True)
        return [keep(index, positions(index, row, mask).cpu()) for index, row, mask in rows_here]

    out = run_batches(model, rows, batch_size, tokenizer.pad_token_id, forward, steering=steering,
                      coefficients=coefficients, desc=desc, progress=progress, share_trunk=True)
    return [value for batch_values in out for value in batch_values]


@torch.no_grad()
def next_token_kl(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    steering: Steering,
    coefficients: Sequence[float],
    rendering: Rendering = "raw",
    batch_size: int = 16,
    progress: bool = True,
) -> torch.Tensor:
    """[len(coefficients)] mean KL(unsteered || steered) over the positions `rendering` reads of `texts`
    (`text_logprobs`), one value per coefficient; the texts are repeated once per coefficient so all of them run
    batched. `steering` holds one vector for every coefficient, or one per coefficient (a list: K random
    directions, each at its own scale, in one pass)."""
    if not texts:
        raise ValueError("texts is empty: the KL is averaged over the tokens of at least one neutral text")
    if len(coefficients) == 0:
        raise ValueError("coefficients is empty: give the coefficients to measure the KL at, e.g. [1.0]")
    k, n = len(coefficients), len(texts)
    if steering.rows is not None and steering.rows != k:
        raise ValueError(f"steering has {steering.rows} per-row vectors for {k} coefficients; give one vector per "
                         "coefficient, or one vector for all")
    values = [float(c) for c in coefficients]
    # a zero coefficient adds nothing: that is the plain model, KL 0 exactly (measured, batch composition would leave
    # rounding noise of either sign, e.g. -2e-9); only the others run
    run = [j for j, c in enumerate(values) if c != 0.0]
    out = torch.zeros(k)
    if not run:
        return out
    base = text_logprobs(model, tokenizer, texts, rendering=rendering, batch_size=batch_size, progress=progress)
    if steering.rows is not None:
        vectors = list(steering.vector)  # type: ignore[arg-type]
        steering = replace(steering, vector=[vectors[j] for j in run] * n)
    # text-major (text i under every coefficient, then text i + 1): a text's rows meet in a batch and share the
    # blocks below the steered layer (run_batches(share_trunk=True))
    m = len(run)
    row_coefficients = [values[j] for _ in range(n) for j in run]
    kls = text_logprobs(model, tokenizer, [text for text in texts for _ in range(m)], rendering=rendering,
                        steering=steering, coefficients=row_coefficients, batch_size=batch_size, progress=progress,
                        desc="kl", reduce=lambda row, steered: kl_sum(base[row // m], steered))
    totals, counts = torch.zeros(m), torch.zeros(m)
    for row, kl in enumerate(kls):
        totals[row % m] += kl
        counts[row % m] += len(base[row // m])
    out[run] = totals / counts
    return out


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
    return mean_kl(text_logprobs(reference, tokenizer, texts, batch_size=batch_size, progress=progress),
                   text_logprobs(other, tokenizer, texts, batch_size=batch_size, progress=progress))


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
