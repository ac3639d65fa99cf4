"""lib.kits.contrast: the held-out AUC of a pair contrast against sklearn on the same halves, ~1 on a planted
contrast and 0.5 on identical pairs (activations and a tiny model's replies), reply-only reduction against a hand
reduction, and the prompt-headroom interval against scipy's paired t interval."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ByteTokenizer

from lib.hooks import record
from lib.kits.adapters import SFTPair
from lib.kits.contrast import (
    EMPTY_CONTRAST_AUC,
    check_aligned,
    heldout_auc,
    measure_contrast,
    prompt_headroom,
    reply_activations,
    split_halves,
)
from lib.models import tiny_model

TOKENIZER = ByteTokenizer(chat=True)


def _acts(n: int, shift: float, layers=(0, 1, 2), hidden: int = 16, seed: int = 0):
    """Independent Gaussian activations per side; the positive side moved by `shift` along one fixed direction."""
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(hidden, generator=generator)
    direction /= direction.norm()
    pos = {layer: torch.randn(n, hidden, generator=generator) + shift * direction for layer in layers}
    neg = {layer: torch.randn(n, hidden, generator=generator) for layer in layers}
    return pos, neg


def test_planted_contrast_scores_near_one_and_noise_near_one_half():
    """Catches `directions = [neg[half].mean(0) - pos[half].mean(0) ...]` (sign flip: the planted AUC drops to ~0)
    and a threshold test written `>` instead of `<` (the verdicts swap)."""
    planted = heldout_auc(*_acts(60, shift=6.0))
    assert planted["best_auc"] > 0.99 and not planted["empty"] and planted["best_cosine"] > 0.9
    assert "contrast present" in planted["verdict"]
    noise = heldout_auc(*_acts(400, shift=0.0))
    assert all(abs(value - 0.5) < 0.08 for value in noise["auc"].values()), noise["auc"]
    assert noise["empty"] and noise["threshold"] == EMPTY_CONTRAST_AUC and "empty contrast" in noise["verdict"]


def test_identical_pairs_give_exactly_one_half_and_no_direction():
    """Catches a tie rule that counts equal projections as wins (`>=`): identical pairs would score 1.0."""
    pos, _ = _acts(12, shift=0.0)
    report = heldout_auc(pos, {layer: acts.clone() for layer, acts in pos.items()})
    assert set(report["auc"].values()) == {0.5} and report["empty"]
    assert all(value is None for value in report["cosine_halves"].values())  # zero directions have no angle


def test_heldout_auc_matches_sklearn_on_the_same_halves():
    """Independent route (numpy directions, sklearn's roc_auc_score). Catches projecting the half the direction was
    built on (`zip(directions, halves)` instead of the reversed halves), which inflates the AUC."""
    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score
    pos, neg = _acts(30, shift=1.5, seed=3)  # partly separable: AUC well inside (0.5, 1)
    report = heldout_auc(pos, neg, seed=5)
    halves = split_halves(30, seed=5)
    for layer in pos:
        p, n = pos[layer].double().numpy(), neg[layer].double().numpy()
        folds = []
        for train, held in ((halves[0], halves[1]), (halves[1], halves[0])):
            direction = p[train].mean(0) - n[train].mean(0)
            scores = np.concatenate([p[held] @ direction, n[held] @ direction])
            folds.append(roc_auc_score([1] * len(held) + [0] * len(held), scores))
        assert report["auc"][str(layer)] == pytest.approx(np.mean(folds), abs=1e-12)
        assert 0.55 < report["auc"][str(layer)] < 0.95
    best = max(report["auc"], key=report["auc"].get)
    assert report["best_layer"] == int(best) and report["best_auc"] == report["auc"][best]


def test_halves_are_disjoint_seeded_and_need_four_pairs():
    """Catches `order[n // 2 - 1:]` (an off-by-one that puts one pair in both halves)."""
    first, second = split_halves(9, seed=1)
    assert sorted(first + second) == list(range(9)) and len(first) == 4 and len(second) == 5
    assert split_halves(9, seed=1) == (first, second) and split_halves(9, seed=2) != (first, second)
    with pytest.raises(ValueError, match="at least 4"):
        split_halves(3)


def test_grouped_halves_keep_each_prompt_on_one_side():
    """Every group in one half, halves balanced, seeded; too few groups raise. Catches assigning by pair index
    instead of by group (a prompt on both sides)."""
    groups = [f"prompt {i % 7}" for i in range(14)]  # 7 prompts x 2 paraphrases, interleaved as persona pairs are
    first, second = split_halves(14, seed=3, groups=groups)
    assert sorted(first + second) == list(range(14)) and sorted([len(first), len(second)]) == [6, 8]
    assert not {groups[i] for i in first} & {groups[i] for i in second}
    assert split_halves(14, seed=3, groups=groups) == (first, second)
    with pytest.raises(ValueError, match="distinct groups"):
        split_halves(6, groups=["a"] * 5 + ["b"])
    with pytest.raises(ValueError, match="one key"):
        split_halves(6, groups=["a", "b"])


def test_grouping_removes_the_leak_of_a_prompt_seen_on_both_sides():
    """Pairs whose two replies differ only by a prompt-specific direction (no behaviour shared across prompts), each
    prompt four times (persona pairs repeat a prompt once per system-prompt paraphrase): split by pair, the held-out
    half sees its own prompts' directions in the training half and the AUC is inflated; split by prompt it is near
    chance. Catches `heldout_auc` ignoring `groups` (and, below, `measure_contrast` not passing the prompts)."""
    generator = torch.Generator().manual_seed(0)
    n_prompts, hidden, n = 8, 64, 32
    own = torch.randn(n_prompts, hidden, generator=generator)
    index = torch.arange(n) % n_prompts
    pos = {0: own[index] / 2 + 0.3 * torch.randn(n, hidden, generator=generator)}
    neg = {0: -own[index] / 2 + 0.3 * torch.randn(n, hidden, generator=generator)}
    leaky = [heldout_auc(pos, neg, seed=s)["best_auc"] for s in range(8)]
    grouped = [heldout_auc(pos, neg, seed=s, groups=index.tolist())["best_auc"] for s in range(8)]
    assert min(leaky) > 0.9 and max(grouped) < 0.7 and abs(sum(grouped) / 8 - 0.5) < 0.1, (leaky, grouped)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", n_layers=3, seed=4)


PROMPTS = [f"Question number {i}: what would you do about item {chr(97 + i)}?" for i in range(12)]


def _pairs(positive, negative):
    return {"positive": [SFTPair(p, positive(i)) for i, p in enumerate(PROMPTS)],
            "negative": [SFTPair(p, negative(i)) for i, p in enumerate(PROMPTS)]}


def test_model_contrast_is_one_on_distinct_replies_and_one_half_on_identical_ones(tiny, isolated_cache):
    """Replies that differ in tokens the tiny model embeds differently separate perfectly; the same reply on both
    sides cannot. Catches extracting the positive texts for both sides in `reply_activations` (AUC 0.5 everywhere)."""
    planted = measure_contrast(tiny, TOKENIZER, _pairs(lambda i: f"yes yes {i}", lambda i: f"no no {i}"),
                               batch_size=5)
    assert planted["best_auc"] > 0.95 and not planted["empty"] and planted["frac_identical"] == 0
    assert planted["n_pairs"] == 12 and planted["halves"] == [6, 6] and planted["layers"] == [0, 1, 2]
    lengths = {side: sum(len(p.response) for p in pairs) / 12 for side, pairs in  # one byte, one token
               _pairs(lambda i: f"yes yes {i}", lambda i: f"no no {i}").items()}
    assert planted["reply_tokens"] == pytest.approx(lengths)
    same = measure_contrast(tiny, TOKENIZER, _pairs(lambda i: f"maybe {i}", lambda i: f"maybe {i}"), batch_size=5)
    assert set(same["auc"].values()) == {0.5} and same["empty"] and same["frac_identical"] == 1


def test_reply_activations_average_the_reply_tokens_only(tiny, isolated_cache):
    """Against a hand reduction of one unpadded row. Catches dropping `start_tokens=starts` (the mean would
    include the prompt's tokens) and a last-token reduction taken before the reply ends."""
    pairs = _pairs(lambda i: f"a reply {i}", lambda i: f"other {i}")
    acts = reply_activations(tiny, TOKENIZER, pairs, batch_size=4)
    last = reply_activations(tiny, TOKENIZER, pairs, reduction="last", batch_size=4)
    for side in ("positive", "negative"):
        pair = pairs[side][7]
        prompt = TOKENIZER.apply_chat_template([{"role": "user", "content": pair.prompt}])
        ids = torch.tensor([TOKENIZER(prompt + pair.response)["input_ids"]])
        start = len(TOKENIZER(prompt)["input_ids"])
        with record(tiny, [1], "all") as hand, torch.no_grad():
            tiny(input_ids=ids)
        assert torch.allclose(acts[side][1][7], hand[1][0, start:].mean(0), atol=1e-5)
        assert torch.allclose(last[side][1][7], hand[1][0, -1], atol=1e-5)


def test_pairs_must_be_aligned():
    """Catches a `check_aligned` that compares only lengths (replies to other prompts would be contrasted)."""
    pairs = _pairs(lambda i: "x", lambda i: "y")
    assert check_aligned(pairs) == 12
    shuffled = {"positive": pairs["positive"], "negative": pairs["negative"][::-1]}
    with pytest.raises(ValueError, match="different prompts"):
        check_aligned(shuffled)
    with pytest.raises(ValueError, match="aligned"):
        check_aligned({"positive": pairs["positive"], "negative": pairs["negative"][:-1]})


def test_headroom_interval_matches_a_paired_t_interval_and_decides_headroom():
    """Independent route: scipy's paired t interval. Catches `diff = neg - pos` (the shift's sign flips and a real
    headroom reads as none) and `has_headroom = high > 0` (noise would count as headroom)."""
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(0)
    negative = torch.randn(200, generator=generator)
    positive = negative + 0.3 + 0.5 * torch.randn(200, generator=generator)
    report = prompt_headroom(positive.tolist(), negative.tolist(), n_boot=4000)
    t_low, t_high = stats.ttest_rel(positive.numpy(), negative.numpy()).confidence_interval(0.95)
    assert report["mean_shift"] == pytest.approx(float((positive - negative).mean()))
    assert report["ci_low"] == pytest.approx(t_low, abs=0.02) and report["ci_high"] == pytest.approx(t_high, abs=0.02)
    assert report["has_headroom"] and report["n"] == 200
    noise = torch.randn(200, generator=generator)
    flat = prompt_headroom((negative + 0.5 * noise - 0.5 * noise.mean()).tolist(), negative.tolist())
    assert flat["ci_low"] < 0 < flat["ci_high"] and not flat["has_headroom"]
    assert not prompt_headroom((negative - 0.3).tolist(), negative.tolist())["has_headroom"]
    with pytest.raises(ValueError, match="paired"):
        prompt_headroom([1.0, 2.0], [1.0])


def test_measure_contrast_splits_halves_by_prompt(tiny, isolated_cache, monkeypatch):
    """Persona pairs repeat each prompt: the model-level measurement passes the prompts as groups. Catches dropping
    `groups=` in `measure_contrast` (a prompt would land on both sides of the split)."""
    import lib.kits.contrast as contrast

    seen = {}
    real = contrast.split_halves

    def spy(n, seed=0, groups=None):
        seen["halves"] = real(n, seed, groups)
        seen["groups"] = groups
        return seen["halves"]

    pairs = _pairs(lambda i: f"yes {i}", lambda i: f"no {i}")
    pairs = {side: [SFTPair(PROMPTS[i % 6], p.response) for i, p in enumerate(pairs[side])] for side in pairs}
    monkeypatch.setattr(contrast, "split_halves", spy)
    report = measure_contrast(tiny, TOKENIZER, pairs, batch_size=6)
    first, second = seen["halves"]
    assert report["grouped"] and seen["groups"] == [PROMPTS[i % 6] for i in range(12)]
    assert not {PROMPTS[i % 6] for i in first} & {PROMPTS[i % 6] for i in second}
