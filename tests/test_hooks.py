"""Exact-tensor tests of `record` and `steer` on tiny models of several architectures."""

from __future__ import annotations

import pytest
import torch
from conftest import HOOK_ARCHS, padded_batch

from lib.hooks import record, steer
from lib.models import cache_argument, find_layers, hidden_size, tiny_model
from lib.vectors import group_weights, layer_groups

STEER_LAYER = 1
WEIGHT = 0.75


def _vector(model: torch.nn.Module, seed: int = 3) -> dict[int, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {STEER_LAYER: torch.randn(hidden_size(model), generator=generator)}


def _outputs(model, batch) -> dict[int, torch.Tensor]:
    with torch.no_grad(), record(model) as acts:
        model(**batch)
    return {layer: acts[layer] for layer in acts}


def _expected_scope(mask: torch.Tensor, scope) -> torch.Tensor:
    """Independent route: positions in scope from the mask alone, row by row."""
    expected = torch.zeros_like(mask, dtype=torch.bool)
    for row in range(mask.shape[0]):
        real = mask[row].nonzero().flatten().tolist()
        chosen = real if scope in ("all", "prompt") else real[scope]
        expected[row, chosen] = True
    return expected


@pytest.mark.parametrize("arch", HOOK_ARCHS)
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("scope", ["all", "prompt", slice(1, 3)])
def test_steer_adds_weight_times_vector_exactly_in_scope(tiny_models, arch, side, scope):
    model = tiny_models[arch]
    batch = padded_batch([5, 3], side)
    vector = _vector(model)
    before = _outputs(model, batch)
    with torch.no_grad(), steer(model, vector, WEIGHT, positions=scope), record(model) as acts:
        model(**batch)
    in_scope = _expected_scope(batch["attention_mask"], scope)
    expected = before[STEER_LAYER] + in_scope.unsqueeze(-1) * (WEIGHT * vector[STEER_LAYER])
    assert torch.equal(acts[STEER_LAYER], expected)
    assert torch.equal(acts[0], before[0])  # layers before the steered one are untouched
    untouched = ~in_scope
    assert torch.equal(acts[STEER_LAYER][untouched], before[STEER_LAYER][untouched])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generated_scope_steers_only_tokens_after_the_prompt(tiny_models, arch):
    from transformers import DynamicCache

    model = tiny_models[arch]
    batch = padded_batch([4, 6], "left")
    vector = _vector(model)
    step = torch.randint(1, 200, (2, 1))
    step_mask = torch.cat([batch["attention_mask"], torch.ones(2, 1, dtype=torch.long)], dim=1)

    def two_calls(context):
        cache = DynamicCache()
        with torch.no_grad(), context, record(model, [STEER_LAYER]) as acts:
            model(**batch, **{cache_argument(model): cache}, use_cache=True)
            model(input_ids=step, attention_mask=step_mask, **{cache_argument(model): cache}, use_cache=True)
        return acts.chunks[STEER_LAYER]

    import contextlib

    plain_prompt, plain_step = two_calls(contextlib.nullcontext())
    steered_prompt, steered_step = two_calls(steer(model, vector, WEIGHT, positions="generated"))
    assert torch.equal(steered_prompt, plain_prompt)
    assert torch.equal(steered_step, plain_step + WEIGHT * vector[STEER_LAYER])


@pytest.mark.parametrize("arch", HOOK_ARCHS)
def test_model_is_bit_identical_after_exit_and_after_an_exception(tiny_models, arch):
    model = tiny_models[arch]
    batch = padded_batch([6, 4], "left")
    with torch.no_grad():
        reference = model(**batch).logits
        with steer(model, _vector(model), 5.0):
            assert not torch.equal(model(**batch).logits, reference)
        assert torch.equal(model(**batch).logits, reference)
        with pytest.raises(RuntimeError, match="inside"), steer(model, _vector(model), 5.0), record(model):
            raise RuntimeError("inside the block")
        assert torch.equal(model(**batch).logits, reference)
    blocks = find_layers(model)[1]
    assert all(not block._forward_hooks for block in blocks)


@pytest.mark.parametrize("arch", HOOK_ARCHS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_of_one_equals_its_row_of_a_padded_batch(tiny_models, arch, side):
    model = tiny_models[arch]
    batch = padded_batch([3, 7, 5], side, seed=4)
    vector = _vector(model)
    with torch.no_grad(), steer(model, vector, WEIGHT, positions=slice(0, 4)):
        full = model(**batch).logits
        for row in range(3):
            real = batch["attention_mask"][row].bool()
            alone = model(input_ids=batch["input_ids"][row][real][None],
                          attention_mask=torch.ones(1, int(real.sum()), dtype=torch.long)).logits[0]
            torch.testing.assert_close(full[row][real], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt_neox"])
def test_per_row_coefficients_equal_separate_runs(tiny_models, arch):
    model = tiny_models[arch]
    single = padded_batch([6], "left", seed=5)
    coefficients = [0.0, 1.5, -2.0]
    repeated = {k: v.repeat(3, 1) for k, v in single.items()}
    vector = _vector(model)
    with torch.no_grad():
        with steer(model, vector, WEIGHT, coefficients=coefficients):
            batched = model(**repeated).logits
        for row, coefficient in enumerate(coefficients):
            with steer(model, vector, WEIGHT * coefficient):
                separate = model(**single).logits[0]
            torch.testing.assert_close(batched[row], separate, rtol=1e-5, atol=1e-6)


def test_weight_per_layer_and_per_group(tiny_models):
    model = tiny_models["llama"]
    batch = padded_batch([5], "left")
    generator = torch.Generator().manual_seed(0)
    vectors = {layer: torch.randn(hidden_size(model), generator=generator) for layer in range(3)}
    weights = group_weights(layer_groups(3, boundaries=[1]), [0.0, 2.0])
    assert weights == {0: 0.0, 1: 2.0, 2: 2.0}
    before = _outputs(model, batch)
    with torch.no_grad(), steer(model, vectors, {0: 0.5}), record(model) as acts:
        model(**batch)
    assert torch.equal(acts[0], before[0] + 0.5 * vectors[0])


@pytest.mark.parametrize("arch", HOOK_ARCHS)
def test_record_agrees_with_output_hidden_states(tiny_models, arch):
    model = tiny_models[arch]
    batch = padded_batch([6, 4], "right")
    with torch.no_grad(), record(model, [0, 1]) as acts:
        hidden_states = model(**batch, output_hidden_states=True).hidden_states
    # hidden_states[i + 1] is block i's output (the last entry has the final norm applied, so it is skipped)
    for layer in (0, 1):
        assert torch.equal(acts[layer], hidden_states[layer + 1])


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("reduction", ["last", "mean"])
def test_record_reductions_ignore_padding(tiny_models, side, reduction):
    model = tiny_models["qwen2"]
    batch = padded_batch([2, 6, 4], side, seed=7)
    with torch.no_grad(), record(model, [2], reduction) as acts:
        model(**batch)
    for row in range(3):
        real = batch["attention_mask"][row].bool()
        with torch.no_grad(), record(model, [2]) as alone:
            model(input_ids=batch["input_ids"][row][real][None])
        tokens = alone[2][0]
        expected = tokens[-1] if reduction == "last" else tokens.mean(0)
        torch.testing.assert_close(acts[2][row], expected, rtol=1e-4, atol=1e-5)


def test_layer_locator_override_and_errors():
    model = tiny_model("llama", n_layers=2)
    assert find_layers(model)[0] == "model.layers"
    assert find_layers(model, "model.layers")[1] is model.model.layers
    assert find_layers(tiny_model("gpt2", n_layers=2))[0] == "transformer.h"
    assert find_layers(tiny_model("gpt_neox", n_layers=2))[0] == "gpt_neox.layers"
    with pytest.raises(ValueError, match="layers_path='model.nothing'"):
        find_layers(model, "model.nothing")
    with pytest.raises(ValueError, match="layers_path"):
        find_layers(torch.nn.Linear(2, 2))


# ----------------------------------------------------------------------------- bad input


def test_bad_input_raises_naming_the_parameter(tiny_models):
    model = tiny_models["llama"]
    size = hidden_size(model)
    batch = padded_batch([4, 2], "left")
    with pytest.raises(ValueError, match="hidden size is 64"), steer(model, {1: torch.ones(size + 1)}):
        pass
    with pytest.raises(ValueError, match="layer 7 is out of range"), steer(model, {7: torch.ones(size)}):
        pass
    with pytest.raises(ValueError, match="layer 7 is out of range"), record(model, [7]):
        pass
    with pytest.raises(ValueError, match="NaN or inf"), steer(model, {1: torch.full((size,), float("nan"))}):
        pass
    with pytest.raises(ValueError, match="weight=inf must be finite"), \
            steer(model, {1: torch.ones(size)}, float("inf")):
        pass
    with pytest.raises(ValueError, match="positions="), steer(model, {1: torch.ones(size)}, positions="middle"):
        pass
    with pytest.raises(ValueError, match="reduction="), record(model, [1], "max"):  # type: ignore[arg-type]
        pass
    with pytest.raises(ValueError, match="coefficients has 3 values but the batch has 2"), torch.no_grad(), \
            steer(model, {1: torch.ones(size)}, coefficients=[1, 2, 3]):
        model(**batch)


def test_unexpected_block_output_type_raises(tiny_models):
    model = tiny_models["llama"]
    block = find_layers(model)[1][1]
    original = block.forward
    block.forward = lambda *args, **kwargs: {"hidden": original(*args, **kwargs)}  # the block itself returns a dict
    try:
        with pytest.raises(TypeError, match="Block 1 returned dict"), torch.no_grad(), \
                steer(model, _vector(model)):
            model(**padded_batch([3], "left"))
    finally:
        del block.forward


def test_steering_nothing_is_an_error_not_a_no_op(tiny_models):
    """`{}` vectors, `weight={}`, `layers=[]` and a weight map that misses every chosen layer would run unsteered."""
    model = tiny_models["llama"]
    vector = {1: torch.ones(hidden_size(model))}
    cases = [({}, 1.0, None, "vectors is empty"), (vector, {}, None, r"weight=\{\} steers no layer"),
             (vector, 1.0, [], r"layers=\[\] selects no layer"),
             ({0: vector[1], 1: vector[1]}, {1: 2.0}, [0], "selects none of them")]
    for vectors, weight, layers, message in cases:
        with pytest.raises(ValueError, match=message), steer(model, vectors, weight, layers=layers):
            pass
    with pytest.raises(ValueError, match="records nothing"), record(model, []):
        pass


def test_layers_accept_integer_types_and_refuse_bool_and_float(tiny_models):
    import numpy as np

    model = tiny_models["llama"]
    batch = padded_batch([4], "left")
    vector = _vector(model)[STEER_LAYER]
    with torch.no_grad():
        with steer(model, {STEER_LAYER: vector}):
            expected = model(**batch).logits
        for layer in (np.int64(STEER_LAYER), np.int32(STEER_LAYER), torch.tensor(STEER_LAYER)):
            with steer(model, {layer: vector}):
                assert torch.equal(model(**batch).logits, expected)
            with steer(model, {STEER_LAYER: vector}, layers=[layer]):
                assert torch.equal(model(**batch).logits, expected)
            with record(model, [layer]) as acts:
                model(**batch)
            assert list(acts) == [STEER_LAYER] and type(next(iter(acts))) is int
    for bad in (True, 1.0, "1"):
        with pytest.raises(TypeError, match="integer indices"), steer(model, {bad: vector}):
            pass
        with pytest.raises(TypeError, match="integer indices"), record(model, [bad]):
            pass


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"weight": "2.5"}, "weight='2.5' is a str"),
    ({"weight": {1: "2"}}, r"weight\[1\]='2' is a str"),
    ({"weight": True}, "weight=True is a bool"),
    ({"coefficients": "2"}, "coefficients='2' is a str"),
    ({"coefficients": ["1", "2"]}, r"coefficients\[0\]='1' is a str"),
    ({"coefficients": [1.0, None]}, r"coefficients\[1\]=None"),
    ({"coefficients": 2.0}, "coefficients=2.0 is a float; give one number per batch row"),
])
def test_string_and_other_non_numbers_are_refused_by_name(tiny_models, kwargs, named):
    """float("2.5") took a string weight silently, and torch's own message answered string coefficients without
    the parameter's name."""
    model = tiny_models["llama"]
    with pytest.raises(ValueError, match=named), steer(model, _vector(model), **kwargs):
        pass


@pytest.mark.parametrize("first_call", ["before steer", "inside steer"])
def test_hidden_states_and_record_see_the_steered_output_whatever_came_first(first_call):
    """transformers 5.24 captures hidden states with forward hooks installed on a model's first call that asks
    for them. Installed before `steer` was entered, they ran before its hook and hidden_states[L + 1] looked
    unsteered at a steered layer L while the next entry and the logits were steered. steer's hooks now go first:
    hidden states, and `record` entered before or inside `steer`, equal a hand-steered forward (own hook)."""
    model, layer = tiny_model("llama", n_layers=4, seed=6), 1  # 4 blocks: the last entry has the final norm
    vector = _vector(model)[layer] * 5
    batch = padded_batch([5, 5], "left")  # no padding: the own hook adds at every position
    with torch.no_grad():
        if first_call == "before steer":
            model(**batch, output_hidden_states=True)  # installs transformers' capture hooks now
        # the independent route, on a twin model with no hooks of transformers: our own adding hook, then plain reads
        twin, seen = tiny_model("llama", n_layers=4, seed=6), {}
        blocks = find_layers(twin)[1]
        handles = [blocks[layer].register_forward_hook(lambda module, args, output: output + vector)]
        handles += [blocks[i].register_forward_hook(lambda module, args, output, i=i: seen.__setitem__(i, output))
                    for i in (layer, layer + 1)]
        try:
            logits = twin(**batch).logits
        finally:
            for handle in handles:
                handle.remove()
        with record(model, [layer]) as outside, steer(model, {layer: vector}), record(model, [layer]) as inside:
            out = model(**batch, output_hidden_states=True)
    for index in (layer, layer + 1):
        torch.testing.assert_close(out.hidden_states[index + 1], seen[index], rtol=0, atol=0)
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=0)
    for recorded in (outside, inside):
        torch.testing.assert_close(recorded[layer], seen[layer], rtol=0, atol=0)


def test_vector_apply_is_the_way_in_and_equals_an_own_hook(tiny_models):
    """`SteeringVector.apply(model, coefficient=...)` adds coefficient * weight * vector (own hook, no lib), restores
    the model bit for bit, and takes `layers_path`; `Steering` carries `layers_path` to every batch (it was dropped)."""
    from lib.hooks import Steering
    from lib.vectors import SteeringVector

    model = tiny_models["llama"]
    batch = padded_batch([4, 4], "left")  # no padding: the own hook adds at every position
    vector = SteeringVector({STEER_LAYER: _vector(model)[STEER_LAYER]})
    with torch.no_grad():
        plain = model(**batch).logits
        handle = find_layers(model)[1][STEER_LAYER].register_forward_hook(
            lambda module, args, output: output + 2.5 * 0.8 * vector[STEER_LAYER])
        try:
            expected = model(**batch).logits
        finally:
            handle.remove()
        with vector.apply(model, coefficient=2.5, weight=0.8):
            applied = model(**batch).logits
        with vector.apply(model, 2.5, weight={STEER_LAYER: 0.8}, layers_path="model.layers"):
            by_path = model(**batch).logits
        with Steering(vector, 0.8, layers_path="model.layers").batch(model, [2.5, 2.5]):
            batched = model(**batch).logits
        assert torch.equal(model(**batch).logits, plain)
    torch.testing.assert_close(applied, expected, rtol=1e-6, atol=1e-5)
    assert torch.equal(by_path, applied)
    torch.testing.assert_close(batched, applied, rtol=1e-6, atol=1e-6)  # 2.5 * (0.8 * v) vs (2.5 * 0.8) * v
    with pytest.raises(ValueError, match="layers_path='model.nowhere'"), \
            Steering(vector, layers_path="model.nowhere").batch(model):
        pass
    with pytest.raises(ValueError, match="coefficient='4' is a str"), vector.apply(model, "4"):
        pass
