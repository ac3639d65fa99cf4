"""WeightDelta and apply_delta on tiny models: exact restores, coeff 0 is the base, coeff 1 is the merged adapter; and
what a parameter is (module role, block, stored orientation) on real architectures' parameter names."""

from __future__ import annotations

import copy
import hashlib
import json

import peft
import pytest
import torch

from lib.kits.adapters import merge_to_delta
from lib.models import tiny_model
from lib.weights import (
    WeightDelta,
    apply_delta,
    conv1d_names,
    delta_from_merged,
    export_checkpoint,
    layer_of,
    module_role,
    output_axis,
)

TARGETS = ["q_proj", "v_proj", "down_proj"]


@pytest.fixture(scope="module")
def base():
    return tiny_model("llama", n_layers=2, hidden=64, vocab=256, seed=3)


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(1, 256, (2, 9), generator=generator), "attention_mask": torch.ones(2, 9).long()}


def _lora(base, seed=0, r=4, alpha=8.0):
    """A LoRA whose A and B are both random (init_lora_weights=False), so it changes the model without training."""
    torch.manual_seed(seed)
    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights=False)
    return peft.get_peft_model(copy.deepcopy(base), config)


def _snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _assert_identical(model, snapshot):
    for name, p in model.named_parameters():
        assert torch.equal(p, snapshot[name]), name


@torch.no_grad()
def _logits(model, inputs):
    return model(**inputs).logits


def test_lora_delta_equals_b_at_a_times_scaling_by_hand(base):
    lora = _lora(base)
    expected = {}
    for name, module in lora.named_modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            scaling = module.scaling["default"]
            assert scaling == 2.0  # alpha / r
            product = module.lora_B["default"].weight @ module.lora_A["default"].weight * scaling
            expected[name.removeprefix("base_model.model.") + ".weight"] = product.detach()
    delta = merge_to_delta(base, lora)
    assert sorted(delta.names) == sorted(expected) and len(expected) == 2 * len(TARGETS)
    for name, value in expected.items():
        torch.testing.assert_close(delta[name], value, rtol=0, atol=1e-6)


def test_apply_then_exit_is_bit_identical_also_on_exception(base, inputs):
    delta = merge_to_delta(base, _lora(base, seed=1))
    before, logits = _snapshot(base), _logits(base, inputs)
    with apply_delta(base, delta, 3.7):
        changed = dict(base.named_parameters())
        assert not torch.equal(changed[delta.names[0]], before[delta.names[0]])
        assert not torch.equal(_logits(base, inputs), logits)
    _assert_identical(base, before)
    assert torch.equal(_logits(base, inputs), logits)
    with pytest.raises(RuntimeError, match="inside"), apply_delta(base, delta, -2.0):
        raise RuntimeError("raised inside the block")
    _assert_identical(base, before)


def test_restore_is_exact_in_bfloat16_where_subtracting_is_not(base):
    model = copy.deepcopy(base).to(torch.bfloat16)
    delta = merge_to_delta(base, _lora(base, seed=2))
    before = _snapshot(model)
    with apply_delta(model, delta, 1.3):
        pass
    _assert_identical(model, before)
    name = delta.names[0]
    w, d = before[name], delta[name].to(torch.bfloat16) * 1.3
    assert not torch.equal((w + d) - d, w)  # why apply_delta restores a copy instead of subtracting


def test_coeff_zero_equals_the_base_exactly(base, inputs):
    delta = merge_to_delta(base, _lora(base, seed=3))
    logits = _logits(base, inputs)
    with apply_delta(base, delta, 0.0):
        assert torch.equal(_logits(base, inputs), logits)


def test_coeff_one_with_positive_minus_zero_reproduces_the_merged_adapter(base, inputs):
    lora = _lora(base, seed=4)
    lora.eval()
    adapter_logits = _logits(lora, inputs)  # the unmerged adapter, as PEFT runs it
    positive = merge_to_delta(base, lora)
    delta = positive - positive.zeros_like()
    assert not torch.allclose(_logits(base, inputs), adapter_logits, atol=1e-3)
    with apply_delta(base, delta, 1.0):
        torch.testing.assert_close(_logits(base, inputs), adapter_logits, rtol=0, atol=1e-5)


def test_positive_minus_negative_is_the_difference_of_merged_weights(base):
    positive, negative = merge_to_delta(base, _lora(base, seed=5)), merge_to_delta(base, _lora(base, seed=6))
    delta = positive - negative
    before = _snapshot(base)
    with apply_delta(base, delta, 2.0):
        for name in delta.names:
            assert torch.equal(delta[name], positive[name] - negative[name])
            torch.testing.assert_close(base.get_parameter(name).detach(), before[name] + 2.0 * delta[name],
                                       rtol=0, atol=1e-6)


def test_arithmetic_norms_and_files(tmp_path):
    a = WeightDelta({"model.layers.0.mlp.w": torch.tensor([[3.0, 0.0]]), "model.layers.1.mlp.w": torch.tensor([[4.0]])},
                    {"adapter": "lora"})
    b = WeightDelta({"model.layers.0.mlp.w": torch.tensor([[1.0, 1.0]]), "lm_head.weight": torch.tensor([[2.0]])})
    diff = a - b
    assert torch.equal(diff["model.layers.0.mlp.w"], torch.tensor([[2.0, -1.0]]))
    assert torch.equal(diff["lm_head.weight"], torch.tensor([[-2.0]]))  # missing in a: an implicit zero
    assert torch.equal(diff["model.layers.1.mlp.w"], torch.tensor([[4.0]]))
    assert diff.meta == {"adapter": "lora", "op": "sub"}
    assert torch.equal((2 * a)["model.layers.1.mlp.w"], torch.tensor([[8.0]]))
    assert torch.equal((-a)["model.layers.0.mlp.w"], torch.tensor([[-3.0, 0.0]]))
    assert a.to(torch.float64)["model.layers.0.mlp.w"].dtype == torch.float64
    assert a.norm() == pytest.approx(5.0)
    assert a.layer_norms() == {"0": pytest.approx(3.0), "1": pytest.approx(4.0)}
    assert diff.layer_norms()["other"] == pytest.approx(2.0)
    assert a.module_norms() == {"model.layers.0.mlp.w": pytest.approx(3.0), "model.layers.1.mlp.w": pytest.approx(4.0)}
    path = diff.save(tmp_path / "delta")
    loaded = WeightDelta.load(path)
    assert loaded.names == diff.names and loaded.meta == diff.meta
    for name in diff.names:
        assert torch.equal(loaded[name], diff[name])
    assert json.loads((tmp_path / "delta.json").read_text())["norm"] == pytest.approx(diff.norm())
    with pytest.raises(ValueError, match="NaN"):
        WeightDelta({"x": torch.tensor([float("nan")])})


def test_saved_delta_is_checksummed(tmp_path):
    delta = WeightDelta({"model.layers.0.mlp.w": torch.arange(6.0).reshape(2, 3)}, {"adapter": "lora"})
    path = delta.save(tmp_path / "delta")
    sidecar = tmp_path / "delta.json"
    recorded = json.loads(sidecar.read_text())["sha256"]
    assert recorded == hashlib.sha256(path.read_bytes()).hexdigest()  # independent: hash of the bytes on disk
    assert "sha256" not in WeightDelta.load(path).meta  # never mistaken for a later save's checksum
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # one flipped bit in the last tensor byte: still parses, values differ
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256.*delta.json"):
        WeightDelta.load(path)
    legacy = json.loads(sidecar.read_text())
    del legacy["sha256"]  # a sidecar written before checksums loads unverified
    sidecar.write_text(json.dumps(legacy))
    assert not torch.equal(WeightDelta.load(path)["model.layers.0.mlp.w"], delta["model.layers.0.mlp.w"])


def test_corrupt_sidecar_is_a_value_error_naming_it(tmp_path):
    """A sidecar that is not JSON (a crash mid-copy, a hand edit) names the file and the fix, as the checksum error
    does (catches: a bare JSONDecodeError that names no file); so does a sidecar that is JSON but not an object."""
    path = WeightDelta({"model.layers.0.mlp.w": torch.ones(2, 3)}).save(tmp_path / "delta")
    sidecar = tmp_path / "delta.json"
    sidecar.write_text("{not json")
    with pytest.raises(ValueError, match=r"delta\.json.*WeightDelta\.save") as caught:
        WeightDelta.load(path)
    assert not isinstance(caught.value, json.JSONDecodeError)
    sidecar.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"delta\.json.*JSON object"):
        WeightDelta.load(path)


def test_content_digest_sees_values_dtypes_and_names_not_meta():
    w = torch.arange(6.0).reshape(2, 3)
    delta = WeightDelta({"a.w": w}, {"adapter": "lora"})
    assert delta.content_digest() == WeightDelta({"a.w": w.clone()}, {"other": 1}).content_digest()
    changed = w.clone()
    changed[1, 2] += 1e-6
    assert delta.content_digest() != WeightDelta({"a.w": changed}).content_digest()
    assert delta.content_digest() != WeightDelta({"b.w": w}).content_digest()
    assert delta.content_digest() != WeightDelta({"a.w": w.double()}).content_digest()
    assert delta.content_digest() != WeightDelta({"a.w": w.reshape(3, 2)}).content_digest()
    assert WeightDelta({"a.w": w.bfloat16()}).content_digest() == WeightDelta({"a.w": w.bfloat16()}).content_digest()


def test_bad_deltas_are_rejected_by_name(base):
    unknown = WeightDelta({"model.layers.9.nope": torch.zeros(2)})
    with pytest.raises(ValueError, match="model.layers.9.nope"), apply_delta(base, unknown, 1.0):
        pass
    name = "model.layers.0.self_attn.q_proj.weight"
    with pytest.raises(ValueError, match="shape"), apply_delta(base, WeightDelta({name: torch.zeros(3, 3)}), 1.0):
        pass
    with pytest.raises(ValueError, match="identical"):
        delta_from_merged(base, copy.deepcopy(base))


def test_exported_checkpoint_reloads_and_matches_the_applied_model(base, inputs, tmp_path):
    from transformers import AutoModelForCausalLM

    delta = merge_to_delta(base, _lora(base, seed=7))
    folder = export_checkpoint(base, None, delta, 1.5, tmp_path / "steered")
    with apply_delta(base, delta, 1.5):
        steered = _logits(base, inputs)
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert torch.equal(_logits(reloaded, inputs), steered)
    assert not torch.equal(_logits(base, inputs), steered)
    assert json.loads((folder / "steerlab_delta.json").read_text())["coefficient"] == 1.5
    with pytest.raises(FileExistsError, match="overwrite"):
        export_checkpoint(base, None, delta, 1.0, folder)


# ----------------------------------------------------------------------------- what a parameter is

# expected roles of one block's parameters, written out by hand from each architecture's module names
BLOCK_ROLES = {
    "llama": {"self_attn.q_proj.weight": "q", "self_attn.k_proj.weight": "k", "self_attn.v_proj.weight": "v",
              "self_attn.o_proj.weight": "o", "mlp.gate_proj.weight": "gate", "mlp.up_proj.weight": "up",
              "mlp.down_proj.weight": "down", "input_layernorm.weight": "other",
              "post_attention_layernorm.weight": "other"},
    "gpt2": {"ln_1.weight": "other", "ln_1.bias": "other", "attn.c_attn.weight": "qkv", "attn.c_attn.bias": "qkv",
             "attn.c_proj.weight": "o", "attn.c_proj.bias": "o", "ln_2.weight": "other", "ln_2.bias": "other",
             "mlp.c_fc.weight": "fc", "mlp.c_fc.bias": "fc", "mlp.c_proj.weight": "down", "mlp.c_proj.bias": "down"},
}
BLOCK_ROLES["qwen2"] = {**BLOCK_ROLES["llama"], "self_attn.q_proj.bias": "q", "self_attn.k_proj.bias": "k",
                        "self_attn.v_proj.bias": "v"}
BLOCK_ROLES["gemma3"] = {**BLOCK_ROLES["llama"], "self_attn.q_norm.weight": "other", "self_attn.k_norm.weight": "other",
                         "pre_feedforward_layernorm.weight": "other", "post_feedforward_layernorm.weight": "other"}
BLOCK_PREFIX = {"llama": "model.layers.", "qwen2": "model.layers.", "gemma3": "model.layers.", "gpt2": "transformer.h."}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gemma3"])
def test_module_roles_and_layers_on_real_parameter_names(arch):
    """Catches: GPT-2's c_proj looked up by module name only (attn.c_proj would become "down"), a role table entry
    swapped (o_proj -> "down"), a norm not recognised, or layer_of reading the wrong integer."""
    model = tiny_model(arch, n_layers=2, seed=0)
    prefix = BLOCK_PREFIX[arch]
    seen = set()
    for name, _ in model.named_parameters():
        if name.startswith(prefix):
            block, suffix = name[len(prefix):].split(".", 1)
            assert module_role(name) == BLOCK_ROLES[arch][suffix], name
            assert layer_of(name) == int(block)
            seen.add(suffix)
        else:  # embeddings, final norm, LM head
            assert module_role(name) == "other", name
            assert layer_of(name, allow_none=True) is None
            with pytest.raises(ValueError, match="allow_none"):
                layer_of(name)
    assert seen == set(BLOCK_ROLES[arch])  # the hand table covers exactly the architecture's block parameters
    assert {output_axis(n) for n, p in model.named_parameters() if p.ndim == 2 and n.startswith(prefix)} == \
        ({1} if arch == "gpt2" else {0})
    assert conv1d_names(model) == ({n for n, p in model.named_parameters() if p.ndim == 2 and
                                    n.startswith(prefix)} if arch == "gpt2" else set())


def test_unknown_names_raise_naming_roles_and_the_override_wins():
    """Catches: an unknown module silently filed as "other" (the fallback), or `roles=` looked up after the table."""
    name = "model.layers.4.block_sparse_moe.experts.3.w1.weight"
    with pytest.raises(ValueError, match=r"roles=\{'w1'"):
        module_role(name)
    assert module_role(name, roles={"w1": "up"}) == "up"
    assert module_role("model.layers.0.self_attn.o_proj.weight", roles={"o_proj": "other"}) == "other"
    full_name = "transformer.h.0.attn.c_proj.weight"
    assert module_role(full_name, roles={full_name: "v"}) == "v"
    with pytest.raises(ValueError, match="not a role"):
        module_role(name, roles={"w1": "ffn"})
    assert output_axis("transformer.h.0.attn.c_proj.weight", transposed=set()) == 0  # GPTBigCode-style override


@pytest.mark.parametrize(("coefficient", "named"), [("2.5", "coefficient='2.5' is a str"), (True, "is a bool"),
                                                    (float("nan"), "must be finite")])
def test_apply_delta_refuses_a_non_number_before_touching_weights(base, coefficient, named):
    """float("2.5") took a string coefficient silently (as steer's weight did); the weights stay untouched."""
    name = "model.layers.0.mlp.down_proj.weight"
    delta = WeightDelta({name: torch.ones_like(base.get_submodule(name.rsplit(".", 1)[0]).weight)})
    before = {key: value.clone() for key, value in base.state_dict().items()}
    with pytest.raises(ValueError, match=named), apply_delta(base, delta, coefficient):
        pass
    assert all(torch.equal(before[key], value) for key, value in base.state_dict().items())
