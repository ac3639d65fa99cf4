"""`shared_trunk`: rows with the same tokens run once below the steered layer and give the logits of the plain batch.

The reference is the same batch run without it (steering itself is pinned to own hooks in test_hooks.py), per-row
vectors at the first steered layer, duplicates not adjacent, left padding, on every tiny architecture (TINY_ARCHS:
the hook tests' five plus mistral and phi3) and bf16. A block-0 call counter (an instance attribute, not a hook)
shows the sharing happened, so a test passes only with the feature present.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from lib.generation import pad_batch, run_batches
from lib.hooks import Steering, record, steer
from lib.models import TINY_ARCHS, find_layers, hidden_size, tiny_model
from lib.trunk import distinct_rows, shared_trunk

# rows 0, 2 and 4 are the same prompt; 1 and 3 another; 5 alone. Lengths differ, so the batch is padded.
PROMPTS = [[5, 6, 7, 8, 9], [11, 12, 13], [5, 6, 7, 8, 9], [11, 12, 13], [5, 6, 7, 8, 9], [20, 21, 22, 23]]
COEFFICIENTS = [0.0, 1.5, 2.0, -3.0, 4.0, 1.0]


@contextmanager
def block_rows(model: torch.nn.Module, block: int) -> Iterator[list[int]]:
    """The batch sizes block `block` is called with (a wrapper of its forward, which hooks_below does not see)."""
    module = find_layers(model)[1][block]
    seen: list[int] = []
    forward = module.forward

    def counting(*args, **kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.append(hidden.shape[0])
        return forward(*args, **kwargs)

    module.forward = counting
    try:
        yield seen
    finally:
        del module.forward


def _vectors(model: torch.nn.Module, layer: int, seed: int = 0) -> list[dict[int, torch.Tensor] | None]:
    generator = torch.Generator().manual_seed(seed)
    vectors: list[dict[int, torch.Tensor] | None] = [
        {layer: torch.randn(hidden_size(model), generator=generator)} for _ in PROMPTS]
    vectors[0] = None  # an unsteered row shares the trunk with its steered copies
    return vectors


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_shared_trunk_gives_the_plain_batch_logits_on_every_architecture(arch):
    model = tiny_model(arch, n_layers=3, seed=1)
    batch = pad_batch(PROMPTS, 0)
    vectors = _vectors(model, 1)
    with torch.no_grad():
        with steer(model, vectors, coefficients=COEFFICIENTS):
            expected = model(**batch).logits
        with block_rows(model, 0) as seen, shared_trunk(model, PROMPTS, below=1) as shared, \
                steer(model, vectors, coefficients=COEFFICIENTS):
            got = model(**batch).logits
    assert shared and seen == [3]  # three distinct prompts went through block 0
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not (expected[1] - expected[3]).abs().max() < 1e-3  # the copies were steered apart above the trunk


def test_shared_trunk_in_bf16_and_at_the_last_block():
    model = tiny_model("llama", n_layers=3, seed=2).to(torch.bfloat16)
    batch = pad_batch(PROMPTS, 0)
    vectors = _vectors(model, 2)
    with torch.no_grad():
        with steer(model, vectors, coefficients=COEFFICIENTS):
            expected = model(**batch).logits
        with block_rows(model, 1) as seen, shared_trunk(model, PROMPTS, below=2), \
                steer(model, vectors, coefficients=COEFFICIENTS):
            got = model(**batch).logits
    assert seen == [3]
    torch.testing.assert_close(got.float(), expected.float(), atol=2e-2, rtol=2e-2)


def test_nothing_is_shared_when_every_row_differs_or_nothing_is_below():
    model = tiny_model("llama", n_layers=3, seed=1)
    with shared_trunk(model, [[1, 2], [3, 4]], below=1) as shared:
        assert not shared
    with shared_trunk(model, [[1, 2], [1, 2]], below=0) as shared:
        assert not shared
    assert distinct_rows([[1], [2], [1], [3], [2]]) == ([0, 1, 3], [0, 1, 0, 2, 1])


def test_shared_trunk_refuses_a_reader_below_a_wrong_batch_and_a_filled_cache():
    model = tiny_model("llama", n_layers=3, seed=1)
    with pytest.raises(ValueError, match="below=3 is out of range"), shared_trunk(model, PROMPTS, below=3):
        pass
    with record(model, [0]), pytest.raises(ValueError, match="distinct rows only"), \
            shared_trunk(model, PROMPTS, below=1):
        pass
    batch = pad_batch(PROMPTS[:2], 0)
    with torch.no_grad(), shared_trunk(model, PROMPTS, below=1), pytest.raises(ValueError, match="set up for 6 rows"):
        model(**batch)
    prompt = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        cache = model(input_ids=prompt, use_cache=True).past_key_values
        with shared_trunk(model, [[8], [8]], below=1), pytest.raises(ValueError, match="KV cache holding tokens"):
            model(input_ids=torch.tensor([[8], [8]]), past_key_values=cache, use_cache=True,
                  attention_mask=torch.ones(2, 4, dtype=torch.long))


def test_run_batches_shares_the_trunk_and_steps_aside_for_a_reader():
    """The opt-in path the scorers take: same results, fewer block-0 rows; with `record` on a trunk block the batch
    runs whole (record sees every row) and the results are the same."""
    model = tiny_model("qwen2", n_layers=3, seed=1)
    steering = Steering(_vectors(model, 2))

    def run(share: bool) -> torch.Tensor:
        def forward(part: slice, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return model(**batch).logits[:, -1]
        with torch.no_grad():
            out = run_batches(model, PROMPTS, 4, 0, forward, steering=steering, coefficients=COEFFICIENTS,
                              progress=False, share_trunk=share)
        return torch.cat(out)

    expected = run(False)
    with block_rows(model, 0) as seen:
        got = run(True)
    assert seen == [2, 2]  # batch [a, b, a, b] -> 2 rows; batch [a, c] -> 2 rows
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with record(model, [0], reduction="last") as acts, block_rows(model, 0) as seen:
        recorded = run(True)
    assert seen == [4, 2] and acts[0].shape[0] == len(PROMPTS)
    torch.testing.assert_close(recorded, expected, atol=1e-5, rtol=1e-5)
