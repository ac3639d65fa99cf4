"""Vectors from base vs finetuned on two tiny models whose weights differ by a known amount."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ByteTokenizer

from lib.model_diff import activation_difference
from lib.models import tiny_model


@pytest.fixture
def pair(isolated_cache):
    base = tiny_model("gpt2", n_layers=3, seed=11)
    tuned = copy.deepcopy(base)
    shift = torch.linspace(-1, 1, 64)
    with torch.no_grad():
        tuned.transformer.h[1].mlp.c_proj.bias += shift  # block 1's output moves by exactly `shift`
    return base, tuned, shift


@pytest.mark.parametrize("reduction", ["completion_mean", "prompt_last", "all_mean"])
def test_known_weight_difference_is_recovered(pair, reduction):
    base, tuned, shift = pair
    prompts = ["what is 2+2", "name a colour", "count to three"]
    vector, completions = activation_difference(base, tuned, ByteTokenizer(chat=True), prompts, reduction=reduction,
                                                completions=["four", "blue", "one two three"], batch_size=2)
    assert torch.equal(vector[0], torch.zeros(64))  # before the edited block: no difference at all
    torch.testing.assert_close(vector[1], shift, rtol=1e-5, atol=1e-5)  # the edit itself
    assert vector[2].norm() > 0  # propagated downstream
    assert vector.meta["method"] == "finetuned_minus_base" and vector.meta["reduction"] == reduction


def test_bad_reduction_is_rejected(pair):
    base, tuned, _ = pair
    with pytest.raises(ValueError, match="reduction='max'"):
        activation_difference(base, tuned, ByteTokenizer(chat=True), ["x"], reduction="max")
