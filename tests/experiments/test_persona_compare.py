"""persona_compare's steps (the evaluation kit's worked example) on a tiny model, by hand routes."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import ByteTokenizer

from lib.experiments.persona_compare import PersonaCompareConfig, summary
from lib.generation import render_chat
from lib.hooks import record
from lib.kits.persona import persona_vector, trait_judge
from lib.models import tiny_model


def test_persona_vector_is_the_mean_difference_at_the_reply_start(isolated_cache):
    model, tokenizer = tiny_model("llama", seed=2), ByteTokenizer(chat=True)
    questions = ["How are you?", "What is rain?", "Name a fruit."]
    vector = persona_vector(model, tokenizer, questions, "You are a pirate.", layers=[1])

    def last(system: str) -> torch.Tensor:  # one unpadded row at a time, the last prompt token's block output
        rows = []
        for question in questions:
            ids = tokenizer(render_chat(tokenizer, question, system=system), add_special_tokens=False)["input_ids"]
            with torch.no_grad(), record(model, [1]) as acts:
                model(input_ids=torch.tensor([ids]))
            rows.append(acts[1][0, -1])
        return torch.stack(rows).mean(0)

    expected = last("You are a pirate.") - last("You are a helpful assistant.")
    torch.testing.assert_close(vector[1], expected, rtol=1e-5, atol=1e-5)
    assert vector.meta["method"] == "persona_system_prompts"


def test_trait_judge_scores_empty_replies_zero_and_others_by_the_likelihood_judge():
    from lib.kits.text_scorers import likelihood_judge

    model, tokenizer = tiny_model("llama", seed=3), ByteTokenizer(chat=True)
    scores = trait_judge(model, tokenizer, "pirate", ["Q1?", "Q2?"], ["arr", " "])
    expected = likelihood_judge(model, tokenizer, ["arr"], "Answer in the voice of an old sea pirate.\n\nQ1?", "Q1?")
    assert float(scores[0]) == pytest.approx(float(expected[0]), abs=1e-6) and float(scores[1]) == 0.0


def test_summary_reads_the_strongest_vector_beside_the_baseline_and_the_prompt():
    rows = [{"condition": c, "metric": m, "value": v, "kl": k} for c, m, v, k in [
        ("unsteered", "trait", 0.1, 0.0), ("vector x0.25", "trait", 0.3, 0.05), ("vector x0.5", "trait", 0.6, 0.2),
        ("system prompt", "trait", 0.9, 0.4), ("vector x0.5", "fluency_nll", 3.2, 0.2)]]
    assert summary(pd.DataFrame(rows)) == {"main": 0.6, "baseline": 0.1, "prompt": 0.9, "side_effect": 0.2,
                                           "fluency_nll": 3.2}


@pytest.mark.parametrize(("overrides", "match"), [
    ({"trait": "angry"}, "trait='angry'"), ({"relative_coefficients": [0.5, -1]}, "relative_coefficients"),
    ({"n_train": 24, "n_eval": 20}, "exceeds the 40 questions"), ({"n_random": -1}, "n_random"),
])
def test_config_refuses_by_name(overrides, match):
    with pytest.raises(ValueError, match=match):
        PersonaCompareConfig(**overrides)
