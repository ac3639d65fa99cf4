"""Hook-free exports (lib.export): llama.cpp control-vector GGUF files and folded-bias checkpoints.

The llama.cpp layer mapping is checked against llama.cpp itself in tests/test_llamacpp.py (tier `llamacpp`);
here: the file format, read back both by our importer and by the `gguf` package directly, files written the way
llama.cpp's cvector-generator and repeng write them, and the folded checkpoint reloaded by plain transformers.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from conftest import padded_batch
from transformers import AutoModelForCausalLM

from lib.export import export_folded_checkpoint, export_llamacpp, folded_model, import_llamacpp
from lib.hooks import steer
from lib.models import embedded_gguf, tiny_model
from lib.vectors import SteeringVector


def _vector(layers, size=64, seed=0) -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    return SteeringVector({layer: torch.randn(size, generator=generator) for layer in layers}, {"method": "test"})


# ----------------------------------------------------------------------------- GGUF


def test_gguf_round_trip_is_exact_and_readable_by_gguf(tmp_path):
    vector = _vector([1, 2, 5], size=96)
    path = export_llamacpp(vector, tmp_path / "cv.gguf", model_hint="llama", weight={1: 1.0, 2: -0.5, 5: 2.0})
    back = import_llamacpp(path)
    assert back.layers == [1, 2, 5]
    for layer, w in {1: 1.0, 2: -0.5, 5: 2.0}.items():
        assert torch.equal(back[layer], vector[layer] * w)
    assert back.meta["model_hint"] == "llama"
    # read by the gguf package directly, as llama.cpp's loader sees it
    reader = gguf.GGUFReader(str(path))
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "llama"
    assert reader.get_field("controlvector.layer_count").contents() == 3
    names = {t.name: t for t in reader.tensors}
    assert set(names) == {"direction.1", "direction.2", "direction.5"}
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [96] for t in names.values())
    np.testing.assert_array_equal(np.asarray(names["direction.2"].data), (vector[2] * -0.5).numpy())


def test_layer_offset_shifts_names_both_ways(tmp_path):
    vector = _vector([3, 4])
    path = export_llamacpp(vector, tmp_path / "off.gguf", layer_offset=1)
    assert {t.name for t in gguf.GGUFReader(str(path)).tensors} == {"direction.4", "direction.5"}
    assert import_llamacpp(path).layers == [4, 5]  # read with the default mapping: one layer off
    assert import_llamacpp(path, layer_offset=1).layers == [3, 4]


def _write_foreign(path, directions: dict[int, np.ndarray], layer_count_int32: bool, extra: bool = False):
    """A control vector written the way llama.cpp's cvector-generator (int32 layer_count) or repeng (uint32) do."""
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    (writer.add_int32 if layer_count_int32 else writer.add_uint32)("controlvector.layer_count", len(directions))
    for layer, direction in directions.items():
        writer.add_tensor(f"direction.{layer}", direction)
    if extra:
        writer.add_tensor("not_a_direction", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("int32", [True, False], ids=["cvector-generator", "repeng"])
def test_imports_files_written_by_llamacpp_and_repeng(tmp_path, int32):
    rng = np.random.default_rng(0)
    directions = {layer: rng.standard_normal(32).astype(np.float32) for layer in (1, 7, 29)}
    _write_foreign(tmp_path / "f.gguf", directions, int32, extra=True)
    vector = import_llamacpp(tmp_path / "f.gguf")
    assert vector.layers == [1, 7, 29]
    for layer, direction in directions.items():
        np.testing.assert_array_equal(vector[layer].numpy(), direction)
    # steerable: the imported vector drives our hooks with its coefficient at apply time
    model = tiny_model("llama", n_layers=3, hidden=32, seed=0)
    batch = padded_batch([5], "left")
    with torch.no_grad():
        base = model(**batch).logits
        with steer(model, vector.select([1]), 4.0):
            steered = model(**batch).logits
    assert not torch.allclose(base, steered)


def test_gguf_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="direction.0"):
        export_llamacpp(_vector([0, 1]), tmp_path / "zero.gguf")
    export_llamacpp(_vector([0, 1]), tmp_path / "ok.gguf", layers=[1])  # the fix the message names works
    model = tiny_model("llama", n_layers=3, hidden=64)
    with pytest.raises(ValueError, match="out of range"):
        export_llamacpp(_vector([1, 3]), tmp_path / "range.gguf", model_hint=model)
    with pytest.raises(ValueError, match="hidden size"):
        export_llamacpp(_vector([1], size=32), tmp_path / "size.gguf", model_hint=model)
    with pytest.raises(ValueError, match="have no vector"):
        export_llamacpp(_vector([1]), tmp_path / "missing.gguf", layers=[2])
    with pytest.raises(FileNotFoundError):
        import_llamacpp(tmp_path / "nope.gguf")
    with pytest.raises(ValueError, match="not a llama.cpp control vector"):
        import_llamacpp(embedded_gguf())  # a model GGUF, not a control vector
    writer = gguf.GGUFWriter(str(tmp_path / "f16.gguf"), "controlvector")
    writer.add_tensor("direction.1", np.zeros(8, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="F32"):
        import_llamacpp(tmp_path / "f16.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ValueError, match="not a readable GGUF"):
        import_llamacpp(tmp_path / "junk.gguf")


# ----------------------------------------------------------------------------- folded bias


def _hooked_and_reloaded(model, vector, coefficient, out_dir, batch, weight=1.0):
    export_folded_checkpoint(model, None, vector, coefficient, out_dir, weight=weight)
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        with steer(model, vector, weight, coefficients=[coefficient] * len(batch["input_ids"])):
            hooked = model(**batch).logits
        plain = reloaded(**batch).logits
        base = model(**batch).logits
    return hooked, plain, base, reloaded


@pytest.mark.parametrize("side", ["left", "right"])
def test_folded_checkpoint_reloads_equal_to_hooked_model_on_padded_batches(tmp_path, side):
    model = tiny_model("llama", n_layers=3, hidden=64, seed=2)
    vector = _vector([0, 2], size=64, seed=3)
    batch = padded_batch([7, 3, 5], side, seed=4)
    before = {name: p.clone() for name, p in model.state_dict().items()}
    hooked, plain, base, reloaded = _hooked_and_reloaded(model, vector, 2.5, tmp_path / side, batch,
                                                         weight={0: 1.0, 2: 0.5})
    real = batch["attention_mask"].bool()
    assert (hooked - base)[real].abs().max() > 0.1  # the steering is large enough to matter
    torch.testing.assert_close(plain[real], hooked[real], atol=1e-4, rtol=0)
    assert reloaded.config.mlp_bias is True
    biases = {name for name, _ in reloaded.named_parameters() if name.endswith("mlp.down_proj.bias")}
    assert len(biases) == 3
    torch.testing.assert_close(reloaded.model.layers[2].mlp.down_proj.bias, 2.5 * 0.5 * vector[2])
    assert torch.equal(reloaded.model.layers[1].mlp.down_proj.bias, torch.zeros(64))
    # exporting did not touch the source model
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())
    assert model.config.mlp_bias is False


def test_folded_checkpoint_of_the_embedded_default(embedded, tmp_path):
    """The real model: the reloaded folder's logits equal the hooked model's on a padded batch (atol 1e-4)."""
    model, tokenizer = embedded
    generator = torch.Generator().manual_seed(0)
    vector = SteeringVector({layer: torch.randn(576, generator=generator) * 8 for layer in (6, 12)})
    prompts = ["The capital of France is", "Tell me a story about a dragon who", "2 + 2 ="]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    batch["position_ids"] = (batch["attention_mask"].cumsum(1) - 1).clamp_min(0)
    export_folded_checkpoint(model, tokenizer, vector, 3.0, tmp_path / "ckpt")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float32).eval()
    with torch.no_grad():
        with steer(model, vector, coefficients=[3.0] * len(prompts)):
            hooked = model(**batch).logits
        plain = reloaded(**batch).logits
        base = model(**batch).logits
    real = batch["attention_mask"].bool()
    assert (hooked - base)[real].abs().max() > 1.0
    torch.testing.assert_close(plain[real], hooked[real], atol=1e-4, rtol=0)
    assert (tmp_path / "ckpt" / "tokenizer_config.json").exists()
    assert (tmp_path / "ckpt" / "steerlab_steering.json").exists()


def test_folded_model_in_memory_matches_hooks_for_negative_coefficients():
    model = tiny_model("llama", n_layers=2, hidden=64, seed=5)
    vector = _vector([1], seed=6)
    batch = padded_batch([4, 6], "left", seed=1)
    folded = folded_model(model, vector, -1.5)
    with torch.no_grad(), steer(model, vector, -1.5):
        hooked = model(**batch).logits
    with torch.no_grad():
        plain = folded(**batch).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(plain[real], hooked[real], atol=1e-5, rtol=0)


def test_folding_refuses_what_it_cannot_do_exactly(tmp_path):
    llama = tiny_model("llama", n_layers=2, hidden=64)
    vector = _vector([1])
    for scope in ("prompt", "generated", slice(0, 3)):
        with pytest.raises(ValueError, match="positions=.*GGUF|export_llamacpp"):
            folded_model(llama, vector, 1.0, positions=scope)
    for arch in ("qwen2", "gemma3", "gpt2"):
        other = tiny_model(arch, n_layers=2, hidden=64)
        with pytest.raises(ValueError, match="mlp_bias.*export_llamacpp.*steer.*weight-delta"):
            folded_model(other, vector, 1.0)
    with pytest.raises(ValueError, match="out of range"):
        folded_model(llama, _vector([2]), 1.0)
    with pytest.raises(ValueError, match="hidden size"):
        folded_model(llama, _vector([1], size=32), 1.0)
    with pytest.raises(ValueError, match="finite"):
        folded_model(llama, vector, float("nan"))
    with steer(llama, vector, 1.0), pytest.raises(RuntimeError, match="forward hooks"):
        folded_model(llama, vector, 1.0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_folded_checkpoint(llama, None, vector, 1.0, tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep me"


def test_a_delta_written_into_a_gguf_edits_its_tensors_and_copies_the_rest(tmp_path):
    """export_gguf_with_delta on a small llama GGUF written here (one F32 and one Q8_0 tensor, tied head): the
    edited tensors read back as dequantised base + coefficient x delta in F32, the untouched one byte for byte, the
    metadata key for key, and the head keeps the original embeddings as its own output.weight."""
    from lib.export import export_gguf_with_delta, gguf_name
    from lib.weights import WeightDelta

    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(64, 32)).astype(np.float32)  # [vocab, hidden] as llama.cpp reads it back
    down = rng.normal(size=(32, 64)).astype(np.float32)
    norm = rng.normal(size=(32,)).astype(np.float32)
    base = tmp_path / "base.gguf"
    writer = gguf.GGUFWriter(str(base), "llama")
    writer.add_block_count(1)
    writer.add_string("general.name", "tiny")
    writer.add_tensor("token_embd.weight", embeddings)
    quantized = gguf.quants.quantize(down, gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.0.ffn_down.weight", quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.0.attn_norm.weight", norm)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    delta = WeightDelta({"model.embed_tokens.weight": torch.ones(64, 32),
                         "model.layers.0.mlp.down_proj.weight": torch.full((32, 64), 0.5)})
    out = export_gguf_with_delta(base, delta, 2.0, tmp_path / "edited.gguf")
    read = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    original = {t.name: t for t in gguf.GGUFReader(str(base)).tensors}
    np.testing.assert_allclose(read["token_embd.weight"].data, embeddings + 2.0, atol=1e-6)
    dequantized = gguf.quants.dequantize(original["blk.0.ffn_down.weight"].data, gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_allclose(read["blk.0.ffn_down.weight"].data, dequantized + 1.0, atol=1e-6)
    assert read["blk.0.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert np.array_equal(read["blk.0.attn_norm.weight"].data, norm)
    np.testing.assert_allclose(read["output.weight"].data, embeddings, atol=0)  # untied: the head kept them
    fields = gguf.GGUFReader(str(out)).fields
    assert fields["general.name"].contents() == "tiny" and fields["llama.block_count"].contents() == 1
    with pytest.raises(ValueError, match="head-permuted"):
        gguf_name("model.layers.0.self_attn.q_proj.weight")
    with pytest.raises(FileExistsError):
        export_gguf_with_delta(base, delta, 1.0, out)
