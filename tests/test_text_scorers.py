"""Generated-text scores (lib.kits.text_scorers) against hand routes: one unpadded row at a time, plain forwards."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import ByteTokenizer

from lib.generation import render_chat
from lib.hooks import record
from lib.kits.text_scorers import degeneracy, likelihood_judge, projection_score
from lib.models import tiny_model
from lib.vectors import SteeringVector


@pytest.mark.parametrize(("text", "repetition", "nonwords", "degenerate"), [
    ("The cat sat on the mat.", 0.0, 0.0, False),
    ("go go go go go go", 0.75, 0.0, True),  # 4 three-grams, all (go, go, go): 3 of 4 repeat
    ("#### 1234 %%% ok", 0.0, 0.75, True),
    ("", 0.0, 0.0, True),
    ("I saw a dog, then a cat.", 0.0, 0.0, False),
])
def test_degeneracy_by_hand(text, repetition, nonwords, degenerate):
    flags = degeneracy(text)
    assert (flags.repetition, flags.nonwords, flags.degenerate) == (pytest.approx(repetition),
                                                                     pytest.approx(nonwords), degenerate)
    assert flags.empty == (text == "")


def _mean_logprob(model, tokenizer, prompt: str, text: str) -> float:
    """Plain forward of one unpadded row: the mean log-prob of the text's tokens after the rendered prompt."""
    prompt_ids = tokenizer(render_chat(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + text_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    positions = range(len(prompt_ids) - 1, len(prompt_ids) + len(text_ids) - 1)
    return float(sum(logprobs[p, ids[0, p + 1]] for p in positions) / len(text_ids))


def test_likelihood_judge_equals_a_hand_difference_of_log_likelihoods():
    model, tokenizer = tiny_model("llama", seed=5), ByteTokenizer(chat=True)
    texts = ["arr matey", "hello there, friend", "yo"]
    judged = likelihood_judge(model, tokenizer, texts, "Talk like a pirate.", ["Talk.", "Be plain.", "Hi"],
                              batch_size=4)
    for i, text in enumerate(texts):
        expected = (_mean_logprob(model, tokenizer, "Talk like a pirate.", text)
                    - _mean_logprob(model, tokenizer, ["Talk.", "Be plain.", "Hi"][i], text))
        assert float(judged[i]) == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        likelihood_judge(model, tokenizer, ["a", " "], "A", "B")
    with pytest.raises(ValueError, match="prompt_b has 2 prompts for 3 texts"):
        likelihood_judge(model, tokenizer, texts, "A", ["B", "C"])


def test_projection_score_is_the_mean_projection_over_the_texts_tokens(isolated_cache):
    model, tokenizer = tiny_model("qwen2", seed=3), ByteTokenizer(chat=True)
    direction = SteeringVector({1: torch.randn(64, generator=torch.Generator().manual_seed(0))})
    prompts, texts = ["Say something.", "Another one"], ["first reply", ""]
    scores = projection_score(model, tokenizer, prompts, texts, direction, 1)
    unit = direction[1] / direction[1].norm()
    prompt_ids = tokenizer(render_chat(tokenizer, prompts[0]), add_special_tokens=False)["input_ids"]
    text_ids = tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad(), record(model, [1]) as acts:
        model(input_ids=torch.tensor([prompt_ids + text_ids]))
    expected = float((acts[1][0, len(prompt_ids):] @ unit).mean())
    assert float(scores[0]) == pytest.approx(expected, abs=1e-5)
    assert math.isnan(float(scores[1]))  # an empty text has nothing to read
