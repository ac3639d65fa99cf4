"""Many steering configurations in one batch: per-row vectors (another vector, or another layer set, per row) and
the float32 delta contract, checked against our own hooks, separate runs and hand computations."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import ByteTokenizer, padded_batch

from lib.generation import generate
from lib.hooks import Steering, steer
from lib.models import find_layers, hidden_size, tiny_model

ARCHS = ("llama", "gpt2", "qwen2")


def _random(model, seed: int) -> torch.Tensor:
    return torch.randn(hidden_size(model), generator=torch.Generator().manual_seed(seed)) * 3


@contextlib.contextmanager
def _own_row_hooks(model, row_vectors: dict[int, torch.Tensor], coefficients: list[float], mask: torch.Tensor):
    """Independent of lib.hooks, the documented formula: at real tokens add (mask x coefficient)[row] x
    row_vectors[layer][row], all float32, cast to the model's dtype once."""
    handles = []
    factor = mask.float() * torch.tensor(coefficients).unsqueeze(1)

    def make(layer):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            delta = factor.unsqueeze(-1) * row_vectors[layer].unsqueeze(1)
            hidden = hidden + delta.to(hidden.dtype)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
        return hook

    blocks = find_layers(model)[1]
    try:
        for layer in row_vectors:
            handles.append(blocks[layer].register_forward_hook(make(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("lengths", [[5, 3, 6], [4, 4, 4]], ids=["padded", "equal-lengths"])
def test_per_row_vectors_equal_our_own_per_row_hooks(arch, lengths):
    model = tiny_model(arch, n_layers=3, seed=1)
    batch = padded_batch(lengths, "left")
    a, b, c = _random(model, 0), _random(model, 1), _random(model, 2)
    rows = [{1: a}, {1: b, 2: c}, None]  # a different vector, a different layer set, an unsteered row
    coefficients = [0.5, -1.5, 2.0]
    zero = torch.zeros(hidden_size(model))
    row_vectors = {1: torch.stack([a * 0.75, b * 0.75, zero]), 2: torch.stack([zero, c * 0.75, zero])}
    with torch.no_grad():
        with _own_row_hooks(model, row_vectors, coefficients, batch["attention_mask"]):
            expected = model(**batch).logits
        with steer(model, rows, 0.75, coefficients=coefficients):
            got = model(**batch).logits
        plain = model(**batch).logits
    assert torch.equal(got, expected)
    assert torch.equal(got[2], plain[2]) and not torch.allclose(got[0], plain[0])


@pytest.mark.parametrize("arch", ARCHS)
def test_per_row_vectors_equal_separate_runs(arch):
    model = tiny_model(arch, n_layers=3, seed=1)
    batch = padded_batch([5, 3, 6], "left", seed=3)
    rows = [{1: _random(model, 0)}, {0: _random(model, 1), 2: _random(model, 2)}, {2: _random(model, 3)}]
    with torch.no_grad(), steer(model, rows, positions=slice(1, 4)):
        together = model(**batch).logits
    for row, vector in enumerate(rows):
        real = batch["attention_mask"][row].bool()
        ids = batch["input_ids"][row][real][None]
        with torch.no_grad(), steer(model, vector, positions=slice(1, 4)):
            alone = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
        torch.testing.assert_close(together[row][real], alone, rtol=1e-4, atol=1e-5)


def test_per_row_vectors_in_batched_generation_equal_separate_generations():
    """A layer sweep as one job: three prompts x two layers, batches of 4 (rows cross batch boundaries)."""
    model, tokenizer = tiny_model("llama", n_layers=3, seed=1), ByteTokenizer()
    prompts = ["abc", "hello there", "x"] * 2
    vector = _random(model, 5) / 600  # small: this tiny model's residual norms are ~0.2; larger saturates
    per_row = [{1: vector}] * 3 + [{2: vector}] * 3
    settings = {"max_new_tokens": 6, "chat": False, "progress": False}
    together = generate(model, tokenizer, prompts, steering=Steering(per_row, positions="generated"), batch_size=4,
                        **settings)
    for prompt, row, text in zip(prompts, per_row, together, strict=True):
        alone = generate(model, tokenizer, [prompt], steering=Steering(row, positions="generated"), **settings)[0]
        assert text == alone
    assert together[:3] != together[3:]  # the two layers did something different
    with pytest.raises(ValueError, match="5 per-row vectors for 6 rows"):
        generate(model, tokenizer, prompts, steering=Steering(per_row[:5]), **settings)


def test_a_batch_of_only_unsteered_rows_inside_a_steering_job_runs_unsteered():
    """Per-row vectors [None, None, v, v] in batches of 2: the first batch steers no row. It ran as an error
    ("steer no layer in any row") once a comparison put an unsteered condition before a steered one; now it runs
    plain and the steered batch still steers (catches: the batch skipped, or steered)."""
    model, tokenizer = tiny_model("llama", n_layers=3, seed=1), ByteTokenizer()
    vector = _random(model, 5) / 600
    prompts = ["abc", "hello there"] * 2
    settings = {"max_new_tokens": 6, "chat": False, "progress": False}
    rows = [None, None, {1: vector}, {1: vector}]
    together = generate(model, tokenizer, prompts, steering=Steering(rows, positions="generated"), batch_size=2,
                        **settings)
    plain = generate(model, tokenizer, prompts[:2], **settings)
    steered = generate(model, tokenizer, prompts[:2], steering=Steering({1: vector}, positions="generated"),
                       **settings)
    assert together == plain + steered and plain != steered
    with pytest.raises(ValueError, match="steer no layer in any row"):
        generate(model, tokenizer, prompts[:2], steering=Steering([None, None]), batch_size=1, **settings)


def test_bf16_delta_is_computed_in_float32_and_cast_once():
    model = tiny_model("llama", n_layers=3, seed=1).to(torch.bfloat16)
    batch = padded_batch([5, 4], "left", seed=2)
    vector = torch.randn(hidden_size(model), generator=torch.Generator().manual_seed(0)) * 0.37
    coefficients, weight = [0.3, 1.7], 1.3
    captured = {}
    block = find_layers(model)[1][1]

    def capture(name):
        def hook(module, args, output):
            captured[name] = (output[0] if isinstance(output, tuple) else output).detach().clone()
        return hook

    with torch.no_grad(), steer(model, {1: vector}, weight, coefficients=coefficients):
        # steer's hook goes first on the block when entered; prepended later, "before" runs ahead of it
        before = block.register_forward_hook(capture("before"), prepend=True)
        after = block.register_forward_hook(capture("after"))
        try:
            model(**batch)
        finally:
            after.remove()
            before.remove()
    mask = batch["attention_mask"].float()
    exact = (mask * torch.tensor(coefficients).unsqueeze(1)).unsqueeze(-1) * (vector * weight)  # float32
    assert torch.equal(captured["after"], captured["before"] + exact.to(torch.bfloat16))
    rounded = (mask.to(torch.bfloat16) * torch.tensor(coefficients).to(torch.bfloat16).unsqueeze(1)).unsqueeze(-1) \
        * (vector * weight).to(torch.bfloat16)
    assert not torch.equal(rounded, exact.to(torch.bfloat16))  # the contract is not vacuous on these numbers


def test_per_row_vector_errors_name_the_row():
    model = tiny_model("llama", n_layers=3, seed=1)
    batch = padded_batch([3, 3], "left")
    size = hidden_size(model)
    with pytest.raises(ValueError, match="vectors has 3 rows but the batch has 2"), torch.no_grad(), \
            steer(model, [{1: torch.ones(size)}] * 3):
        model(**batch)
    with pytest.raises(ValueError, match=r"vectors\[1\]: vector for layer 1 has shape"), \
            steer(model, [{1: torch.ones(size)}, {1: torch.ones(size + 1)}]):
        pass
    with pytest.raises(ValueError, match="no rows"), steer(model, []):
        pass
    with pytest.raises(ValueError, match="steer no layer in any row"), steer(model, [None, None]):
        pass
