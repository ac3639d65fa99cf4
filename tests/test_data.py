"""Subset registry and splits."""

from __future__ import annotations

import pytest

from lib.kits.data import OFFLINE_SUBSETS, TULU_SUBSETS, load_subset, split_examples, subset_name


@pytest.mark.parametrize("key", sorted(OFFLINE_SUBSETS))
def test_offline_subsets_load_with_prompts_and_replies(key):
    examples = load_subset(key)
    assert len(examples) >= 100
    assert all(e.prompt and e.response for e in examples)
    assert load_subset(key, seed=0) == examples and load_subset(key, seed=1) != examples


def test_registry_keys_follow_the_seed():
    assert len(TULU_SUBSETS) == 19
    assert "numinamath" in TULU_SUBSETS["0"] and "flan" in TULU_SUBSETS["5"]
    assert "code" in TULU_SUBSETS["8"] and "coconot" in TULU_SUBSETS["12"]
    assert subset_name("5").startswith("tulu:")


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(KeyError, match="'math'.*0=numinamath"):
        load_subset("maths")


def test_split_is_disjoint_and_checked():
    examples = load_subset("math")
    train, held_out = split_examples(examples, 32, 16)
    assert len(train) == 32 and len(held_out) == 16 and not set(train) & set(held_out)
    with pytest.raises(ValueError, match="n_samples=90 \\+ n_eval=20"):
        split_examples(examples, 90, 20)


def test_reply_pairs_after_neutral_or_own_prompts():
    from lib.kits.data import DEFAULT_PROMPTS, reply_pairs

    examples = load_subset("math")[: len(DEFAULT_PROMPTS) + 1]
    neutral = reply_pairs(examples)
    assert [p for p, _ in neutral] == DEFAULT_PROMPTS + DEFAULT_PROMPTS[:1]  # cycled
    assert [r for _, r in neutral] == [e.response for e in examples]
    assert reply_pairs(examples, "own") == [(e.prompt, e.response) for e in examples]
    with pytest.raises(ValueError, match="curve_prompts='mine'"):
        reply_pairs(examples, "mine")
