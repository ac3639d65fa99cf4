"""Cached extraction: hits do no forward pass, corrupt files are rebuilt, values match an independent route."""

from __future__ import annotations

import pytest
import torch
from conftest import TEXTS, ByteTokenizer

from lib.extract import extract
from lib.interventions import read_only
from lib.models import tiny_model


def _counting(model):
    calls = {"n": 0}

    def hook(module, args, kwargs):
        calls["n"] += 1

    # marked read-only: an unmarked hook would count as an intervention and switch the cache off
    handle = model.register_forward_pre_hook(read_only(hook), with_kwargs=True)
    return calls, handle


def test_second_extraction_and_other_layers_do_no_forward_pass(isolated_cache):
    model = tiny_model("llama", seed=2)
    calls, handle = _counting(model)
    try:
        first = extract(model, ByteTokenizer(), TEXTS, layers=[1], batch_size=2, chat=False)
        assert calls["n"] == 3  # 5 texts in batches of 2
        again = extract(model, ByteTokenizer(), TEXTS, layers=[1], batch_size=2, chat=False)
        other = extract(model, ByteTokenizer(), TEXTS, layers=[0, 2], batch_size=2, chat=False)
        assert calls["n"] == 3
        assert torch.equal(first[1], again[1]) and set(other) == {0, 2}
        extract(model, ByteTokenizer(), TEXTS[:4], layers=[1], batch_size=2, chat=False)  # other data: a miss
        assert calls["n"] == 5
    finally:
        handle.remove()


def test_other_weights_never_reuse_the_cache(isolated_cache):
    base, tuned = tiny_model("llama", seed=2), tiny_model("llama", seed=3)
    a = extract(base, ByteTokenizer(), TEXTS, layers=[2], chat=False)
    b = extract(tuned, ByteTokenizer(), TEXTS, layers=[2], chat=False)
    assert not torch.equal(a[2], b[2])


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "drop_sidecar"])
def test_damaged_cache_is_detected_and_rebuilt(isolated_cache, damage):
    model = tiny_model("qwen2", seed=2)
    reference = extract(model, ByteTokenizer(), TEXTS, layers=[1], chat=False)
    (cache_file,) = (isolated_cache / "activations").glob("*.safetensors")
    data = cache_file.read_bytes()
    if damage == "truncate":
        cache_file.write_bytes(data[: len(data) // 2])
    elif damage == "flip_byte":
        cache_file.write_bytes(data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:])
    else:
        cache_file.with_suffix(".json").unlink()
    calls, handle = _counting(model)
    try:
        with pytest.warns(UserWarning, match="rebuilding"):
            rebuilt = extract(model, ByteTokenizer(), TEXTS, layers=[1], chat=False)
    finally:
        handle.remove()
    assert calls["n"] == 1
    assert torch.equal(rebuilt[1], reference[1])
    assert extract(model, ByteTokenizer(), TEXTS, layers=[1], chat=False)[1].equal(reference[1])  # healthy again


def test_extract_matches_one_by_one_hidden_states(isolated_cache):
    model = tiny_model("gpt2", seed=2)
    acts = extract(model, ByteTokenizer(), TEXTS, layers=[0, 1], reduction="last", batch_size=3, chat=False)
    tokenizer = ByteTokenizer()
    for i, text in enumerate(TEXTS):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        for layer in (0, 1):
            torch.testing.assert_close(acts[layer][i], hidden[layer + 1][0, -1], rtol=1e-4, atol=1e-5)


def test_extract_bad_input(isolated_cache):
    model = tiny_model("llama", seed=2)
    with pytest.raises(ValueError, match="reduction="):
        extract(model, ByteTokenizer(), TEXTS, reduction="all", chat=False)
    with pytest.raises(ValueError, match="layer 9 is out of range"):
        extract(model, ByteTokenizer(), TEXTS, layers=[9], chat=False)
    with pytest.raises(ValueError, match="texts is empty"):
        extract(model, ByteTokenizer(), [], chat=False)


def test_start_tokens_average_only_the_tail(isolated_cache):
    model, tokenizer = tiny_model("llama", seed=2), ByteTokenizer()
    starts = [3, 5, 1, 2, 4]
    acts = extract(model, tokenizer, TEXTS, layers=[1], reduction="mean", start_tokens=starts, batch_size=2,
                   chat=False)
    for i, text in enumerate(TEXTS):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[2][0]
        torch.testing.assert_close(acts[1][i], hidden[starts[i]:].mean(0), rtol=1e-4, atol=1e-5)
    everything = extract(model, tokenizer, TEXTS, layers=[1], reduction="mean", chat=False)
    assert not torch.allclose(everything[1], acts[1])  # a different cache entry, not a stale hit


def test_transformers_hidden_state_capture_does_not_switch_the_cache_off(isolated_cache):
    """transformers 5.24 installs read-only capture hooks on a model's first call with output_hidden_states (latent
    generation makes one) and keeps them: they must not count as interventions, or the cache would stay off for
    that model silently. Fails if a release moves the capture module or if its hooks start writing."""
    from lib.interventions import active_interventions

    model, tokenizer = tiny_model("llama", seed=2), ByteTokenizer()
    plain = extract(model, tokenizer, TEXTS, layers=[1], chat=False, use_cache=False, progress=False)
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 2, 3]]), output_hidden_states=True)
    installed = [hook for module in model.modules() for hook in module._forward_hooks.values()]
    assert installed, "transformers no longer installs capture hooks: READ_ONLY_MODULES may be stale"
    assert active_interventions(model) == []
    calls, handle = _counting(model)
    try:
        first = extract(model, tokenizer, TEXTS, layers=[1], chat=False, progress=False)
        again = extract(model, tokenizer, TEXTS, layers=[1], chat=False, progress=False)
    finally:
        handle.remove()
    assert calls["n"] == 1  # the second call was a hit
    assert torch.equal(first[1], plain[1]) and torch.equal(again[1], plain[1])
