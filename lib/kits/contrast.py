"""Is there a contrast to learn, and can the eval show a change? Two checks to run before training on pairs.

`measure_contrast`: given aligned positive / negative replies to the same prompts (the pairs that train steering
adapters or build a steering vector), the model's block outputs over each reply (mean over the reply's tokens, or
its last token), per layer. On one half of the pairs the positive-minus-negative mean difference gives a
direction; the other half's replies are projected on it and the AUC of positive vs negative projections is read
(two folds, each half trains once; the AUC is their mean). Beside it, the cosine between the two halves'
directions: a contrast that exists points the same way in both halves. When even the best layer's held-out AUC is
under `EMPTY_CONTRAST_AUC`, the pairs carry no behaviour the model represents ("empty contrast"), and a null
result of whatever trains on them is attributed to the data up front (journal, 2026-11-24, weight steering: the
135M model's replies under an honest and a dishonest persona prompt were nearly the same).

The best layer is picked on the same held-out AUCs it reports, so with few pairs it is optimistic: an "empty"
verdict is conservative (even the luckiest layer stays under the threshold), a "present" verdict from a handful of
pairs is weak evidence.

`prompt_headroom`: how far a positive vs a negative (persona) system prompt moves a signed choice score on the
same eval rows, with a paired bootstrap interval; `has_headroom` when the interval lies above zero. An eval that
even an explicit prompt cannot move cannot show what a steering method does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lib.extract import extract
from lib.generation import encode, render_chat
from lib.kits.stats import auc

# Below this best held-out AUC (0.5 is chance, 1.0 perfect separation) a contrast counts as empty.
EMPTY_CONTRAST_AUC = 0.6
SIDES = ("positive", "negative")


def check_aligned(pairs: Mapping[str, Sequence[Any]]) -> int:
    """The number of pairs; raises unless both sides hold replies (`.prompt`, `.response`) to the same prompts in the
    same order."""
    if set(pairs) != set(SIDES):
        raise ValueError(f"pairs must have the sides {SIDES}, got {sorted(pairs)}")
    positive, negative = pairs["positive"], pairs["negative"]
    if len(positive) != len(negative):
        raise ValueError(f"{len(positive)} positive and {len(negative)} negative replies: pairs must be aligned")
    bad = next((i for i, (p, n) in enumerate(zip(positive, negative, strict=True)) if p.prompt != n.prompt), None)
    if bad is not None:
        raise ValueError(f"pair {bad}: the positive and negative replies answer different prompts")
    return len(positive)


def reply_activations(model: nn.Module, tokenizer: Any, pairs: Mapping[str, Sequence[Any]], *,
                      reduction: str = "mean", layers: Sequence[int] | None = None, batch_size: int = 16,
                      progress: bool = False) -> dict[str, dict[int, torch.Tensor]]:
    """Per side, block outputs [pairs, hidden] per layer over each reply after its chat-rendered prompt (no system
    prompt beyond the template's): `reduction="mean"` averages the reply's tokens, "last" takes its last token."""
    acts = {}
    for side in SIDES:
        prompts = [render_chat(tokenizer, pair.prompt) for pair in pairs[side]]
        starts = [len(ids) for ids in encode(tokenizer, prompts, chat=True)]
        texts = [prompt + pair.response for prompt, pair in zip(prompts, pairs[side], strict=True)]
        acts[side] = extract(model, tokenizer, texts, layers=layers, reduction=reduction, start_tokens=starts,
                             batch_size=batch_size, progress=progress)
    return acts


def split_halves(n: int, seed: int = 0, groups: Sequence[Any] | None = None) -> tuple[list[int], list[int]]:
    """Two disjoint halves of pair indices 0..n-1 from a seeded shuffle (both replies of a pair stay together).

    `groups` (one key per pair, e.g. its prompt) keeps every pair of a group in one half: persona pairs answer each
    prompt under several system-prompt paraphrases, and a prompt seen on both sides of the split lets the held-out
    half score its own prompt's idiosyncrasies, not the behaviour (an optimistic AUC). Groups go, in shuffled order,
    to whichever half holds fewer pairs so far."""
    if n < 4:
        raise ValueError(f"{n} pairs: a held-out contrast needs at least 4 (2 per half)")
    generator = torch.Generator().manual_seed(seed)
    if groups is None:
        order = torch.randperm(n, generator=generator).tolist()
        return sorted(order[: n // 2]), sorted(order[n // 2:])
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} keys for {n} pairs: give one key (e.g. the prompt) per pair")
    members: dict[Any, list[int]] = {}
    for i, key in enumerate(groups):
        members.setdefault(key, []).append(i)
    keys = list(members)
    halves: tuple[list[int], list[int]] = ([], [])
    for k in torch.randperm(len(keys), generator=generator).tolist():
        halves[0 if len(halves[0]) <= len(halves[1]) else 1].extend(members[keys[k]])
    if min(len(h) for h in halves) < 2:
        raise ValueError(f"{len(keys)} distinct groups over {n} pairs leave a half with fewer than 2 pairs: a "
                         "held-out contrast needs pairs from more prompts")
    return sorted(halves[0]), sorted(halves[1])


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float | None:
    norms = float(a.norm() * b.norm())
    return float(a @ b) / norms if norms > 0 else None  # a zero direction has no angle


def heldout_auc(positive: Mapping[int, torch.Tensor], negative: Mapping[int, torch.Tensor], *, seed: int = 0,
                threshold: float = EMPTY_CONTRAST_AUC, groups: Sequence[Any] | None = None) -> dict[str, Any]:
    """From aligned activations ({layer: [pairs, hidden]} per side), per layer: the held-out AUC of projections on
    the mean-difference direction of the other half (mean of the two folds) and the cosine of the halves'
    directions; the best layer, its AUC and cosine, the median AUC over layers and the empty-contrast verdict.
    `groups`: see `split_halves` (pairs sharing a prompt stay in one half)."""
    layers = sorted(positive)
    if not layers or set(layers) != set(negative):
        raise ValueError(f"positive and negative activations must cover the same layers: {layers} vs "
                         f"{sorted(negative)}")
    n = len(positive[layers[0]])
    for layer in layers:
        if positive[layer].shape != negative[layer].shape or len(positive[layer]) != n:
            raise ValueError(f"layer {layer}: activations must be aligned [pairs, hidden] on both sides, got "
                             f"{tuple(positive[layer].shape)} and {tuple(negative[layer].shape)}")
    halves = split_halves(n, seed, groups)
    aucs, cosines = {}, {}
    for layer in layers:
        pos, neg = positive[layer].double(), negative[layer].double()
        directions = [pos[half].mean(0) - neg[half].mean(0) for half in halves]
        folds = [auc((pos[held] @ direction).tolist(), (neg[held] @ direction).tolist())
                 for direction, held in zip(directions, reversed(halves), strict=True)]
        aucs[layer] = sum(folds) / len(folds)
        cosines[layer] = _cosine(*directions)
    best = max(layers, key=aucs.__getitem__)
    empty = aucs[best] < threshold
    verdict = (f"empty contrast: best held-out AUC {aucs[best]:.3f} (layer {best}) < {threshold}; the pairs carry no "
               "behaviour this model separates, so a null result trained on them says nothing about the method"
               if empty else f"contrast present: held-out AUC {aucs[best]:.3f} at layer {best} (>= {threshold})")
    ordered = sorted(aucs.values())
    median = (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) / 2
    return {"n_pairs": n, "halves": [len(h) for h in halves], "grouped": groups is not None, "layers": layers,
            "auc": {str(layer): aucs[layer] for layer in layers},
            "cosine_halves": {str(layer): cosines[layer] for layer in layers},
            "best_layer": best, "best_auc": aucs[best], "best_cosine": cosines[best], "median_auc": median,
            "threshold": threshold, "empty": empty, "verdict": verdict}


def measure_contrast(model: nn.Module, tokenizer: Any, pairs: Mapping[str, Sequence[Any]], *,
                     reduction: str = "mean", layers: Sequence[int] | None = None, batch_size: int = 16,
                     seed: int = 0, threshold: float = EMPTY_CONTRAST_AUC, progress: bool = False) -> dict[str, Any]:
    """How well `model` separates the positive from the negative replies of aligned `pairs` (`heldout_auc` on
    `reply_activations`, halves split by prompt so no prompt is on both sides), plus what may explain a weak
    contrast: the fraction of pairs whose two replies are the same text and the mean reply length in tokens per
    side."""
    n = check_aligned(pairs)
    acts = reply_activations(model, tokenizer, pairs, reduction=reduction, layers=layers, batch_size=batch_size,
                             progress=progress)
    report = heldout_auc(acts["positive"], acts["negative"], seed=seed, threshold=threshold,
                         groups=[pair.prompt for pair in pairs["positive"]])
    identical = sum(p.response.strip() == q.response.strip() for p, q in zip(*(pairs[s] for s in SIDES), strict=True))
    lengths = {side: sum(len(tokenizer(p.response, add_special_tokens=False)["input_ids"]) for p in pairs[side]) / n
               for side in SIDES}
    return {"reduction": reduction, **report, "frac_identical": identical / n, "reply_tokens": lengths}


def prompt_headroom(positive_scores: Sequence[float], negative_scores: Sequence[float], *, level: float = 0.95,
                    n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """How far a positive vs a negative prompt moves a signed score on the same rows (row i scored under both):
    the mean per-row difference, its standard error and a paired percentile-bootstrap interval (rows resampled);
    `has_headroom` when the interval's lower end is above zero."""
    pos = torch.as_tensor(list(positive_scores), dtype=torch.float64)
    neg = torch.as_tensor(list(negative_scores), dtype=torch.float64)
    if pos.shape != neg.shape:
        raise ValueError(f"{len(pos)} positive and {len(neg)} negative scores: the rows must be paired")
    if len(pos) < 2:
        raise ValueError(f"{len(pos)} rows: an interval needs at least 2")
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be between 0 and 1")
    diff = pos - neg
    n = len(diff)
    picks = torch.randint(n, (n_boot, n), generator=torch.Generator().manual_seed(seed))
    means = diff[picks].mean(1)
    tail = (1 - level) / 2
    low, high = (float(torch.quantile(means, q)) for q in (tail, 1 - tail))
    sd = float(diff.std())
    return {"mean_shift": float(diff.mean()), "se": sd / math.sqrt(n), "sd": sd, "ci_low": low, "ci_high": high,
            "level": level, "n": n, "frac_rows_up": float((diff > 0).double().mean()), "has_headroom": low > 0,
            "interval": "paired percentile bootstrap over rows"}
