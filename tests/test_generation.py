"""Inputs that ran silently wrong, or failed deep inside transformers, are refused by name before any forward pass:
empty texts, prompts past the model's maximum positions, coefficients given as strings (issue "Trust, second
pass"). Every check counts the forward calls, so "before any work" is tested, not assumed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ByteTokenizer

from lib.extract import extract
from lib.generation import generate
from lib.hooks import Steering
from lib.interventions import read_only
from lib.models import hidden_size, tiny_model


def _counting(model):
    calls = {"n": 0}

    def hook(module, args, kwargs):
        calls["n"] += 1

    return calls, model.register_forward_pre_hook(read_only(hook), with_kwargs=True)


def _refused(model, call, match: str) -> None:
    calls, handle = _counting(model)
    try:
        with pytest.raises(ValueError, match=match):
            call()
    finally:
        handle.remove()
    assert calls["n"] == 0, "a forward pass ran before the refusal"


@pytest.mark.parametrize("texts", [["", "hello"], [""], ["hello", "", ""]])
def test_empty_texts_are_refused_naming_the_first(isolated_cache, texts):
    """extract(["", "hello"], reduction="mean") returned an all-zero vector for ""; [""] alone failed inside
    transformers after a forward had started."""
    model, tokenizer = tiny_model("llama", seed=1), ByteTokenizer()
    first = texts.index("")
    for reduction in ("mean", "last"):
        _refused(model, lambda r=reduction: extract(model, tokenizer, texts, reduction=r, chat=False, progress=False),
                 rf"texts\[{first}\] has no tokens")
    assert not (isolated_cache / "activations").exists() or not any((isolated_cache / "activations").iterdir())


def test_a_start_token_past_the_text_is_refused():
    """start_tokens at or past a text's length left nothing to reduce over: a zero vector, silently."""
    model, tokenizer = tiny_model("llama", seed=1), ByteTokenizer()
    _refused(model, lambda: extract(model, tokenizer, ["abc", "hello"], reduction="mean", start_tokens=[1, 5],
                                    chat=False, use_cache=False, progress=False), r"start_tokens\[1\]=5")


def test_empty_prompt_in_generation_is_refused():
    """generate(["", "hi"]) (raw prompts) generated from an all-padding row."""
    model, tokenizer = tiny_model("llama", seed=1), ByteTokenizer()
    _refused(model, lambda: generate(model, tokenizer, ["", "hi"], chat=False, max_new_tokens=2, progress=False),
             r"prompts\[0\] has no tokens")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_prompts_past_the_maximum_positions_are_refused_naming_the_limit(isolated_cache, arch):
    """Tiny models with 128 positions. GPT-2 failed mid-forward with an IndexError; RoPE models ran past their
    length silently. With max_new_tokens, the prompt plus the new tokens must fit."""
    model, tokenizer = tiny_model(arch, seed=1, max_positions=128), ByteTokenizer()
    texts = ["short", "x" * 129]
    _refused(model, lambda: extract(model, tokenizer, texts, chat=False, progress=False),
             r"texts\[1\] has 129 tokens, past the model's maximum of 128 positions")
    _refused(model, lambda: generate(model, tokenizer, ["y" * 100, "z"], chat=False, max_new_tokens=40,
                                     progress=False), r"prompts\[0\] has 100 tokens \+ 40 new tokens.*128")
    out = generate(model, tokenizer, ["y" * 100], chat=False, max_new_tokens=28, progress=False)  # 128 fits
    assert len(out) == 1
    full = extract(model, tokenizer, ["x" * 128], chat=False, use_cache=False, progress=False)
    assert full[0].shape == (1, hidden_size(model))


@pytest.mark.parametrize(("coefficients", "named"), [
    ("12", "coefficients='12' is a str"),  # two characters for two prompts passed the length check
    ("2", "coefficients='2' is a str"),
    (["1", "2"], r"coefficients\[0\]='1' is a str"),
    (np.array(["1", "2"]), "an array of <U1"),
    ([1.0], "coefficients has 1 values for 2 rows"),
])
def test_generation_coefficients_are_checked_by_name(coefficients, named):
    model, tokenizer = tiny_model("llama", seed=1), ByteTokenizer()
    steering = Steering({1: torch.ones(hidden_size(model))})
    _refused(model, lambda: generate(model, tokenizer, ["ab", "cd"], chat=False, max_new_tokens=2, progress=False,
                                     steering=steering, coefficients=coefficients), named)


def test_numpy_and_tuple_coefficients_equal_a_list():
    model, tokenizer = tiny_model("llama", seed=1), ByteTokenizer()
    steering = Steering({1: torch.ones(hidden_size(model)) * 3})
    run = [generate(model, tokenizer, ["ab", "cd"], chat=False, max_new_tokens=3, progress=False, steering=steering,
                    coefficients=c) for c in ([0.5, -2.0], (0.5, -2.0), np.array([0.5, -2.0]))]
    assert run[0] == run[1] == run[2]
