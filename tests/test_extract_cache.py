"""The activation cache never serves activations the model would not compute now.

Every check compares a cached `extract` with a no-cache recompute (`use_cache=False`, or our own hook) of the
same call: a stale entry (steered for unsteered, another tokenizer's, another reduction's, another weight's)
shows up as a difference. Found on a fresh install (journal, 2026-12-01).
"""

from __future__ import annotations

import pytest
import torch
from conftest import TEXTS, ByteTokenizer

from lib.extract import extract
from lib.hooks import steer
from lib.interventions import active_interventions
from lib.models import find_layers, hidden_size, model_fingerprint, tiny_model
from lib.weights import WeightDelta, apply_delta


class _OtherTokenizer(ByteTokenizer):
    """Same texts, other ids: a second tokenizer."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [1 + ((b * 7) % 200) for b in text.encode()]}


class _BosTokenizer(ByteTokenizer):
    """Adds a BOS id for raw text (chat=False) and none when a chat template wrote the special tokens."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": ([250] if add_special_tokens else []) + super().__call__(text)["input_ids"]}


def _fresh(model, tokenizer, texts, **kwargs) -> dict[int, torch.Tensor]:
    return extract(model, tokenizer, texts, use_cache=False, progress=False, **kwargs)


def _cached(model, tokenizer, texts, **kwargs) -> dict[int, torch.Tensor]:
    return extract(model, tokenizer, texts, progress=False, **kwargs)


def _assert_same(a: dict[int, torch.Tensor], b: dict[int, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for layer in a:
        assert torch.equal(a[layer], b[layer]), layer


def _entries(cache) -> int:
    return len(list((cache / "activations").glob("*.safetensors"))) if (cache / "activations").exists() else 0


def test_steering_never_reads_or_writes_the_cache(isolated_cache):
    model, tokenizer = tiny_model("llama", seed=2), ByteTokenizer()
    vector = {1: torch.randn(hidden_size(model), generator=torch.Generator().manual_seed(0)) * 4}
    plain = _cached(model, tokenizer, TEXTS, layers=[2], chat=False)  # cache now holds the unsteered entry
    with steer(model, vector):
        steered = _cached(model, tokenizer, TEXTS, layers=[2], chat=False)
        _assert_same(steered, _fresh(model, tokenizer, TEXTS, layers=[2], chat=False))
    assert not torch.allclose(steered[2], plain[2])
    assert _entries(isolated_cache) == 1
    # the other order: steered first, with an empty cache, then unsteered
    for path in (isolated_cache / "activations").iterdir():
        path.unlink()
    with steer(model, vector):
        _cached(model, tokenizer, TEXTS, layers=[2], chat=False)
    assert _entries(isolated_cache) == 0
    _assert_same(_cached(model, tokenizer, TEXTS, layers=[2], chat=False),
                 _fresh(model, tokenizer, TEXTS, layers=[2], chat=False))


def test_other_libraries_hooks_and_weight_edits_switch_the_cache_off(isolated_cache):
    """A raw forward hook (any other library's steering) and `apply_delta` count as interventions. This also
    guards the torch-private hook dictionaries `active_interventions` reads: if they moved, it would fail."""
    model, tokenizer = tiny_model("qwen2", seed=2), ByteTokenizer()
    plain = _cached(model, tokenizer, TEXTS, layers=[2], chat=False)
    shift = torch.full((hidden_size(model),), 3.0)
    handle = find_layers(model)[1][1].register_forward_hook(lambda module, args, output: output + shift)
    try:
        assert active_interventions(model)
        hooked = _cached(model, tokenizer, TEXTS, layers=[2], chat=False)
    finally:
        handle.remove()
    assert not torch.allclose(hooked[2], plain[2])
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, output: output + shift if module is find_layers(model)[1][1] else None)
    try:
        _assert_same(_cached(model, tokenizer, TEXTS, layers=[2], chat=False), hooked)  # a global hook too
    finally:
        handle.remove()
    name = "model.layers.1.mlp.down_proj.weight"
    delta = WeightDelta({name: torch.randn_like(model.get_submodule(name.rsplit(".", 1)[0]).weight)})
    with apply_delta(model, delta, 2.0):
        assert active_interventions(model) == ["apply_delta(coefficient=2.0)"]
        edited = _cached(model, tokenizer, TEXTS, layers=[2], chat=False)
        _assert_same(edited, _fresh(model, tokenizer, TEXTS, layers=[2], chat=False))
    assert not torch.allclose(edited[2], plain[2])
    assert not active_interventions(model) and _entries(isolated_cache) == 1
    _assert_same(_cached(model, tokenizer, TEXTS, layers=[2], chat=False), plain)


def test_key_is_what_the_model_sees(isolated_cache):
    """Another tokenizer, chat=True vs chat=False (a BOS added or not) and texts that join to the same string
    each get their own entry: each call equals its own no-cache recompute, in either order."""
    model = tiny_model("llama", seed=2)
    calls = [
        (ByteTokenizer(), TEXTS, {"chat": False}),
        (_OtherTokenizer(), TEXTS, {"chat": False}),
        (_BosTokenizer(), TEXTS, {"chat": True}),
        (_BosTokenizer(), TEXTS, {"chat": False}),
        (ByteTokenizer(), ["a\0b", "c"], {"chat": False}),
        (ByteTokenizer(), ["a", "b\0c"], {"chat": False}),
        (ByteTokenizer(), ["ab", "c"], {"chat": False}),  # the same ids in all, split differently into rows
        (ByteTokenizer(), ["a", "bc"], {"chat": False}),
    ]
    for order in (calls, calls[::-1]):
        for path in isolated_cache.glob("activations/*"):
            path.unlink()
        for tokenizer, texts, kwargs in order:
            _assert_same(_cached(model, tokenizer, texts, layers=[1], **kwargs),
                         _fresh(model, tokenizer, texts, layers=[1], **kwargs))
    # chat=True with _BosTokenizer gives exactly ByteTokenizer's ids: the model sees the same, so they share an entry
    assert _entries(isolated_cache) == len(calls) - 1


def test_reduction_and_starts_are_part_of_the_key(isolated_cache):
    model, tokenizer = tiny_model("gpt2", seed=2), ByteTokenizer()
    variants = [{"reduction": "last"}, {"reduction": "mean"}, {"reduction": "mean", "start_tokens": [1, 2, 0, 3, 1]},
                {"reduction": "mean", "start_tokens": [2, 2, 0, 3, 1]}]
    for kwargs in variants:  # each after the others: a key missing a field would serve the previous entry
        _assert_same(_cached(model, tokenizer, TEXTS, layers=[0, 1], chat=False, **kwargs),
                     _fresh(model, tokenizer, TEXTS, layers=[0, 1], chat=False, **kwargs))
    for kwargs in variants:  # and again, now as cache hits
        _assert_same(_cached(model, tokenizer, TEXTS, layers=[0, 1], chat=False, **kwargs),
                     _fresh(model, tokenizer, TEXTS, layers=[0, 1], chat=False, **kwargs))
    assert _entries(isolated_cache) == len(variants)


def test_fingerprint_changes_with_any_single_element():
    """The smallest possible edit (one element to its next float) of every parameter changes the fingerprint,
    by both routes (bytes on the CPU, the on-device sketch), and restoring it restores the fingerprint."""
    model = tiny_model("llama", seed=4)
    before = {method: model_fingerprint(model, method) for method in ("bytes", "sketch")}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            flat = param.view(-1)
            index = int(torch.randint(flat.numel(), (1,), generator=generator))
            saved = flat[index].clone()
            flat[index] = torch.nextafter(saved, torch.tensor(float("inf")))
            for method, reference in before.items():
                assert model_fingerprint(model, method) != reference, (name, method)
            flat[index] = saved
    assert {method: model_fingerprint(model, method) for method in before} == before
    half = tiny_model("llama", seed=4).to(torch.bfloat16)
    assert model_fingerprint(half) != before["bytes"]  # dtype is part of it


def test_fingerprint_of_the_embedded_default_sees_one_embedding_row(embedded):
    model, _ = embedded
    embedding = model.get_input_embeddings().weight
    before = {method: model_fingerprint(model, method) for method in ("bytes", "sketch")}
    with torch.no_grad():
        saved = embedding[7].clone()  # row 7: the strided sample it replaces read rows 0, 12, 24, ...
        embedding[7] += 1e-3
        try:
            for method, reference in before.items():
                assert model_fingerprint(model, method) != reference, method
        finally:
            embedding[7] = saved
    assert model_fingerprint(model) == before["bytes"]


# ----------------------------------------------------------------------------- forward state that is not a weight
# Each test walks the model through states and checks every cached `extract` against a no-cache recompute, in an
# order where a key blind to the switch would serve the previous state's entry (issue "Trust, second pass").


def _lora(arch: str = "llama"):
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "v_proj", "down_proj"]
    model = get_peft_model(tiny_model(arch, seed=3), LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    torch.manual_seed(5)  # the second adapter gets other random weights
    model.add_adapter("second", LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    return model.eval()


def _check(model, tokenizer=None) -> torch.Tensor:
    tokenizer = tokenizer or ByteTokenizer()
    cached = _cached(model, tokenizer, TEXTS, layers=[2], chat=False)
    _assert_same(cached, _fresh(model, tokenizer, TEXTS, layers=[2], chat=False))
    return cached[2]


def test_peft_adapter_switches_are_part_of_the_key(isolated_cache):
    """Adapter on, disabled (`disable_adapter()`) and re-enabled, another named adapter, merged and unmerged, and a
    LoRA scale change: each extraction equals its own recompute, and the states really differ (so a stale entry
    would have shown). Two passes, then a hit."""
    from peft.tuners.lora import LoraLayer

    model = _lora()
    lora_layers = [module for module in model.modules() if isinstance(module, LoraLayer)]

    def states():
        yield "default", _check(model)
        with model.disable_adapter():
            yield "disabled", _check(model)
        yield "re-enabled", _check(model)
        model.set_adapter("second")
        yield "second", _check(model)
        model.set_adapter("default")
        model.merge_adapter()
        yield "merged", _check(model)
        model.unmerge_adapter()
        yield "unmerged", _check(model)
        for layer in lora_layers:
            layer.scale_layer(0.5)
        yield "scaled", _check(model)
        for layer in lora_layers:
            layer.unscale_layer()

    first = dict(states())
    second = dict(states())  # merge/unmerge round the base weights: their fingerprint moves, so misses again
    entries = _entries(isolated_cache)
    _check(model)
    assert _entries(isolated_cache) == entries  # the same state again is a hit
    for name in first:
        assert torch.allclose(first[name], second[name], atol=1e-5), name
    off = (first["default"] - first["disabled"]).abs().max()
    assert off > 1e-2 and (first["default"] - first["second"]).abs().max() > 1e-2
    assert (first["default"] - first["scaled"]).abs().max() > 1e-3
    assert torch.allclose(first["default"], first["re-enabled"]) and torch.allclose(first["default"], first["merged"],
                                                                                  atol=1e-4)


def test_peft_public_state_is_where_the_key_reads_it():
    """`forward_state` reads PEFT tuner layers through `PEFT_STATE` (public properties of BaseTunerLayer): this
    fails if a PEFT release renames them, instead of the key silently losing them."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from lib.models import PEFT_STATE, forward_state

    model = _lora()
    layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    assert layers
    for field in PEFT_STATE:
        assert all(hasattr(layer, field) for layer in layers), field
    before = forward_state(model)
    with model.disable_adapter():
        assert forward_state(model)[0] != before[0]
    assert forward_state(model) == before and before[1] == []


def test_train_mode_is_never_cached_nor_served(isolated_cache):
    """GPT-2 with dropout: activations in train mode are one dropout draw; they are neither stored nor served to
    eval mode (before: cached, then returned in eval mode, 0.04 off), and the reason is said once."""
    import warnings

    model, tokenizer = tiny_model("gpt2", seed=2), ByteTokenizer()
    model.train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        noisy = _cached(model, tokenizer, TEXTS, layers=[2], chat=False)
        _cached(model, tokenizer, TEXTS, layers=[2], chat=False)
    told = [w for w in caught if "training mode" in str(w.message)]
    assert _entries(isolated_cache) == 0 and len(told) <= 1
    model.eval()
    clean = _check(model, tokenizer)
    assert not torch.allclose(noisy[2], clean)
    assert _entries(isolated_cache) == 1


def test_offloaded_model_is_extracted_uncached(isolated_cache, tmp_path):
    """A model with a disk-offloaded block (accelerate, meta parameters): the fingerprint cannot read it, so the
    cache is skipped with a note, and the result equals the same model not offloaded (before: NotImplementedError
    'Cannot copy out of meta tensor' in model_fingerprint)."""
    from accelerate import dispatch_model

    tokenizer = ByteTokenizer()
    reference = _fresh(tiny_model("llama", seed=3), tokenizer, TEXTS, layers=[2], chat=False)
    placement = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                 "model.layers.2": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    model = dispatch_model(tiny_model("llama", seed=3), device_map=placement, offload_dir=str(tmp_path / "offload"))
    assert any(p.device.type == "meta" for p in model.parameters())
    with pytest.warns(UserWarning, match="meta device"):
        offloaded = _cached(model, tokenizer, TEXTS, layers=[2], chat=False)
    _assert_same(offloaded, reference)
    assert _entries(isolated_cache) == 0


def test_edits_through_data_change_the_fingerprint(isolated_cache):
    """`.data` edits bypass torch's version counters (PEFT's merge writes that way): the fingerprint reads every
    byte on every call, so it sees them, and the cache serves the edited model its own activations."""
    model, tokenizer = tiny_model("llama", seed=4), ByteTokenizer()
    weight = model.get_submodule("model.layers.1.mlp.down_proj").weight
    before, plain = model_fingerprint(model), _check(model, tokenizer)
    version, saved = weight._version, weight.data[3, 5].clone()
    weight.data[3, 5] += 0.5
    assert weight._version == version  # the premise: no version bump
    assert model_fingerprint(model) != before
    edited = _check(model, tokenizer)
    assert not torch.allclose(edited, plain)
    weight.data[3, 5] = saved
    assert model_fingerprint(model) == before
