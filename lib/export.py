"""Serve activation steering without Python hooks: llama.cpp control vectors, folded-bias checkpoints, and weight
deltas written into a GGUF.

Three exports, each exact where it claims to be:

- `export_llamacpp` / `import_llamacpp`: the control-vector GGUF that llama.cpp loads with
  `--control-vector-scaled FILE:SCALE` (format of llama.cpp's `cvector-generator` and of repeng's
  `ControlVector.export_gguf`: architecture `controlvector`, `controlvector.model_hint`,
  `controlvector.layer_count`, one F32 tensor `direction.N` per layer). llama.cpp adds `SCALE * direction.N`
  to the output of its layer N, and the layer-index offset between our block index and N was established
  by experiment (tests/test_llamacpp.py: offset 0 agrees with our hooks on >= 90% of steered argmaxes, offset
  +-1 does not). llama.cpp has no `direction.0` (its loader rejects index 0), so block 0 cannot be exported.
- `export_folded_checkpoint`: `coefficient * weight * vector[l]` folded into the bias of block l's MLP down
  projection, saved as an ordinary transformers checkpoint (transformers and vLLM load it with no code of ours).
  In a Llama-family block `h = h + mlp(norm(h))`, so a down-projection bias is added to the block output at
  every position: exact for steering at all positions only (CAA, Rimsky et al. 2024, steers all positions).
- `export_gguf_with_delta`: `base + coefficient * dW` into a llama GGUF (edited tensors in F32, the rest copied),
  e.g. `lib.orthogonalize`'s directional ablation as weights: llama.cpp's greedy tokens equal our hooks' where the
  ablation moves them (tests/test_llamacpp.py, `peers/serve_check.orthogonal_check`).
"""

from __future__ import annotations

import copy
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lib.hooks import layer_weights
from lib.interventions import active_interventions
from lib.io import write_json
from lib.models import check_layers, find_layers, hidden_size
from lib.vectors import SteeringVector

CONTROL_VECTOR_ARCH = "controlvector"
# Our block l is llama.cpp's direction.(l + LLAMACPP_LAYER_OFFSET): measured, not read (see module docstring).
LLAMACPP_LAYER_OFFSET = 0
# Architectures whose block is `h = h + mlp(...)` with the MLP's down projection last and a config switch that
# gives it a bias (`mlp_bias`). Others (e.g. Granite's residual multiplier, Gemma's post-MLP norm) would not
# add the bias unchanged to the residual stream.
FOLDABLE_MODEL_TYPES = ("llama",)
_ALTERNATIVES = ("alternatives: export_llamacpp() for llama.cpp (GGUF control vector), lib.hooks.steer() / "
                 "lib.generation.Steering at run time, or a weight-delta export from the weight-steering work "
                 "(lib.weights.export_checkpoint)")
_DIRECTION = re.compile(r"^direction\.(\d+)$")


def _scaled_vectors(vector: SteeringVector | Mapping[int, torch.Tensor], weight: float | Mapping[int, float],
                    layers: Sequence[int] | None) -> dict[int, torch.Tensor]:
    """{layer: weight[layer] * vector[layer]} for the chosen layers, with the same checks as `steer`."""
    layer_vectors: Mapping[int, torch.Tensor] = getattr(vector, "vectors", vector)
    weights = layer_weights(layer_vectors, weight, layers)
    chosen = list(weights)
    if not chosen:
        raise ValueError("no layers left to export: check layers= and weight=")
    scaled = {}
    for layer in chosen:
        value = layer_vectors[layer].detach().float().cpu() * weights[layer]
        if value.dim() != 1:
            raise ValueError(f"vector for layer {layer} has shape {tuple(value.shape)}; expected 1-D [hidden]")
        if not torch.isfinite(value).all():
            raise ValueError(f"vector for layer {layer} (times its weight) contains NaN or inf")
        scaled[layer] = value
    return scaled


# ----------------------------------------------------------------------------- llama.cpp control vectors


def export_llamacpp(
    vector: SteeringVector | Mapping[int, torch.Tensor],
    path: str | Path,
    *,
    model_hint: str | nn.Module = "llama",
    weight: float | Mapping[int, float] = 1.0,
    layers: Sequence[int] | None = None,
    n_layers: int | None = None,
    layer_offset: int = LLAMACPP_LAYER_OFFSET,
) -> Path:
    """Write a llama.cpp control-vector GGUF: `llama-completion -m MODEL.gguf --control-vector-scaled PATH:COEFF`.

    The coefficient is not stored (llama.cpp's SCALE plays its part); per-layer `weight` is folded in.
    model_hint: llama.cpp's architecture name (e.g. "llama"), or the model, whose `config.model_type` is used.
    n_layers: the model's block count, checked against the layers (taken from `model_hint` when it is a model).
    layer_offset: keep the default; tests pass +-1 to show that a one-layer-off file fails the agreement check.
    """
    import gguf

    if isinstance(model_hint, nn.Module):
        n_layers = len(find_layers(model_hint)[1]) if n_layers is None else n_layers
        size = hidden_size(model_hint)
        model_hint = str(model_hint.config.model_type)
    else:
        size = None
    scaled = _scaled_vectors(vector, weight, layers)
    if size is not None and next(iter(scaled.values())).numel() != size:
        raise ValueError(f"vector has size {next(iter(scaled.values())).numel()}; the model's hidden size is {size}")
    for layer in scaled:
        index = layer + layer_offset
        if index < 1:
            raise ValueError(f"layer {layer} maps to llama.cpp direction.{index}, but llama.cpp's loader rejects "
                             "index 0 (it cannot steer the first block's output): drop that layer with layers=")
        if n_layers is not None and not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer} is out of range: the model has layers 0..{n_layers - 1}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), CONTROL_VECTOR_ARCH)
    writer.add_string(f"{CONTROL_VECTOR_ARCH}.model_hint", model_hint)
    writer.add_uint32(f"{CONTROL_VECTOR_ARCH}.layer_count", len(scaled))
    for layer, value in scaled.items():
        writer.add_tensor(f"direction.{layer + layer_offset}", value.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return path


def import_llamacpp(path: str | Path, *, layer_offset: int = LLAMACPP_LAYER_OFFSET) -> SteeringVector:
    """Read a control-vector GGUF (ours, llama.cpp's `cvector-generator`, repeng's `export_gguf`) as a SteeringVector
    on our block indices. Apply it with coefficient = the SCALE you would give llama.cpp."""
    import gguf

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such control-vector file")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as error:
        raise ValueError(f"{path} is not a readable GGUF file: {error}") from error
    arch_field = reader.get_field("general.architecture")
    arch = arch_field.contents() if arch_field is not None else None
    if arch != CONTROL_VECTOR_ARCH:
        raise ValueError(f"{path}: general.architecture is {arch!r}, not {CONTROL_VECTOR_ARCH!r}: this is a model or "
                         "another kind of GGUF, not a llama.cpp control vector")
    hint_field = reader.get_field(f"{CONTROL_VECTOR_ARCH}.model_hint")
    count_field = reader.get_field(f"{CONTROL_VECTOR_ARCH}.layer_count")
    vectors: dict[int, torch.Tensor] = {}
    for tensor in reader.tensors:
        match = _DIRECTION.match(tensor.name)
        if match is None:
            continue  # llama.cpp ignores other tensors too
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ValueError(f"{path}: tensor {tensor.name} is {tensor.tensor_type.name}; control vectors are F32")
        layer = int(match.group(1)) - layer_offset
        if layer < 0:
            raise ValueError(f"{path}: {tensor.name} maps to block {layer} with layer_offset={layer_offset}")
        vectors[layer] = torch.from_numpy(np.array(tensor.data, dtype=np.float32).reshape(-1))
    if not vectors:
        raise ValueError(f"{path}: no direction.N tensors found")
    meta: dict[str, Any] = {"method": "llama.cpp control vector", "source": str(path)}
    if hint_field is not None:
        meta["model_hint"] = hint_field.contents()
    if count_field is not None and int(count_field.contents()) != len(vectors):
        meta["layer_count_field"] = int(count_field.contents())  # llama.cpp ignores it; keep it for the record
    return SteeringVector(vectors, meta)


# ----------------------------------------------------------------------------- folded-bias checkpoint


def check_foldable(model: nn.Module, positions: Any = "all") -> None:
    """Raise unless `coefficient * vector` can be folded exactly into MLP down-projection biases."""
    if not (isinstance(positions, str) and positions == "all"):
        raise ValueError(f"positions={positions!r}: a folded bias is added at every position, so it is exact only "
                         f"for positions='all'. For other position scopes use {_ALTERNATIVES}")
    config = model.config
    model_type = getattr(config, "model_type", type(config).__name__)
    if model_type not in FOLDABLE_MODEL_TYPES or not hasattr(config, "mlp_bias"):
        raise ValueError(f"model_type={model_type!r} has no MLP output bias switch (`mlp_bias`) that adds to the "
                         f"residual stream unchanged (supported: {', '.join(FOLDABLE_MODEL_TYPES)}); {_ALTERNATIVES}")
    active = active_interventions(model)
    if active:  # a copy made inside `steer` would carry its hooks and steer twice
        raise RuntimeError(f"the model has active forward hooks or weight edits ({'; '.join(active)}): inside a "
                           "`steer` or `apply_delta` block? Export outside them")
    _, blocks = find_layers(model)
    for index, block in enumerate(blocks):
        down = getattr(getattr(block, "mlp", None), "down_proj", None)
        if not isinstance(down, nn.Linear):
            raise ValueError(f"block {index} has no mlp.down_proj Linear to fold a bias into; {_ALTERNATIVES}")


@torch.no_grad()
def folded_model(
    model: nn.Module,
    vector: SteeringVector | Mapping[int, torch.Tensor],
    coefficient: float = 1.0,
    *,
    weight: float | Mapping[int, float] = 1.0,
    layers: Sequence[int] | None = None,
    positions: Any = "all",
) -> nn.Module:
    """A copy of `model` whose MLP biases carry the steering: unsteered `folded(x)` == steered `model(x)`.

    The input model is untouched. Every block gets (zero) gate/up/down biases because `mlp_bias=True` creates
    them all on reload; block l's down bias is `coefficient * weight[l] * vector[l]`.
    """
    check_foldable(model, positions)
    if not np.isfinite(float(coefficient)):
        raise ValueError(f"coefficient={coefficient} must be finite")
    scaled = _scaled_vectors(vector, weight, layers)
    check_layers(model, list(scaled))
    size = hidden_size(model)
    for layer, value in scaled.items():
        if value.shape != (size,):
            raise ValueError(f"vector for layer {layer} has shape {tuple(value.shape)}; the model's hidden size is "
                             f"{size}")
    folded = copy.deepcopy(model)
    folded.config.mlp_bias = True
    _, blocks = find_layers(folded)
    for index, block in enumerate(blocks):
        for name in ("gate_proj", "up_proj", "down_proj"):
            linear = getattr(block.mlp, name, None)
            if not isinstance(linear, nn.Linear):
                continue
            if linear.bias is None:
                linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=linear.weight.dtype,
                                                       device=linear.weight.device))
        if index in scaled:
            down = block.mlp.down_proj
            down.bias += (float(coefficient) * scaled[index]).to(down.bias)
    return folded


def export_folded_checkpoint(
    model: nn.Module,
    tokenizer: Any,
    vector: SteeringVector | Mapping[int, torch.Tensor],
    coefficient: float,
    out_dir: str | Path,
    *,
    weight: float | Mapping[int, float] = 1.0,
    layers: Sequence[int] | None = None,
    positions: Any = "all",
    overwrite: bool = False,
) -> Path:
    """Save a hook-free steered checkpoint folder: `AutoModelForCausalLM.from_pretrained(out_dir)` (or vLLM) runs
    the model steered by `coefficient * weight * vector` at all positions, with no steerlab code."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"out_dir={out_dir} exists and is not empty; pass overwrite=True or another folder")
    folded = folded_model(model, vector, coefficient, weight=weight, layers=layers, positions=positions)
    partial = out_dir.with_name(out_dir.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    folded.save_pretrained(partial)
    if tokenizer is not None:
        tokenizer.save_pretrained(partial)
    meta = getattr(vector, "meta", {})
    write_json(partial / "steerlab_steering.json", {
        "coefficient": float(coefficient), "layers": sorted(_scaled_vectors(vector, weight, layers)),
        "weight": weight if not isinstance(weight, Mapping) else {str(k): v for k, v in weight.items()},
        "positions": "all", "vector_meta": meta, "base_model": getattr(model, "steerlab_name", None),
    })
    if out_dir.exists():
        shutil.rmtree(out_dir)
    partial.replace(out_dir)
    return out_dir


# ----------------------------------------------------------------------------- weight deltas into a llama GGUF
# Hugging Face Llama names -> llama.cpp's. q_proj and k_proj are left out on purpose: llama.cpp stores them with
# their heads permuted (convert_hf_to_gguf's `permute`), so a delta on them would need that permutation too.
_GGUF_NAMES = (
    (re.compile(r"^model\.embed_tokens\.weight$"), "token_embd.weight"),
    (re.compile(r"^lm_head\.weight$"), "output.weight"),
    (re.compile(r"^model\.norm\.weight$"), "output_norm.weight"),
    (re.compile(r"^model\.layers\.(\d+)\.self_attn\.v_proj\.weight$"), "blk.{}.attn_v.weight"),
    (re.compile(r"^model\.layers\.(\d+)\.self_attn\.o_proj\.weight$"), "blk.{}.attn_output.weight"),
    (re.compile(r"^model\.layers\.(\d+)\.mlp\.gate_proj\.weight$"), "blk.{}.ffn_gate.weight"),
    (re.compile(r"^model\.layers\.(\d+)\.mlp\.up_proj\.weight$"), "blk.{}.ffn_up.weight"),
    (re.compile(r"^model\.layers\.(\d+)\.mlp\.down_proj\.weight$"), "blk.{}.ffn_down.weight"),
    (re.compile(r"^model\.layers\.(\d+)\.input_layernorm\.weight$"), "blk.{}.attn_norm.weight"),
    (re.compile(r"^model\.layers\.(\d+)\.post_attention_layernorm\.weight$"), "blk.{}.ffn_norm.weight"),
)


def gguf_name(hf_name: str) -> str:
    """llama.cpp's tensor name for a Hugging Face Llama parameter; q/k projections and unknown names are refused."""
    for pattern, target in _GGUF_NAMES:
        match = pattern.match(hf_name)
        if match:
            return target.format(*match.groups())
    raise ValueError(f"{hf_name}: no llama.cpp tensor name known for it (q_proj/k_proj are stored head-permuted in "
                     "a GGUF and are not supported); use export_checkpoint and llama.cpp's convert_hf_to_gguf.py")


def export_gguf_with_delta(base_gguf: str | Path, delta: Any, coefficient: float, path: str | Path,
                           overwrite: bool = False) -> Path:
    """A llama-architecture GGUF with `base + coefficient * delta` in place of the tensors the delta touches (each
    dequantised, edited in float32 and written F32; the rest copied as they are, quantised or not), so llama.cpp
    serves an orthogonalised or weight-steered model with no hooks and no conversion from a checkpoint. Where the
    delta edits the token embeddings of a GGUF whose output head reuses them, the original embeddings are written
    as `output.weight`, as `lib.ablation.untie_embeddings` keeps them apart in PyTorch."""
    import gguf

    from lib.weights import WeightDelta

    if not isinstance(delta, WeightDelta):
        raise TypeError(f"delta is a {type(delta).__name__}; give a lib.weights.WeightDelta")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True or choose another path")
    reader = gguf.GGUFReader(str(base_gguf))
    architecture = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    if architecture != "llama":
        raise ValueError(f"{base_gguf} is a {architecture!r} GGUF; the name mapping covers llama only")
    edits = {gguf_name(name): change for name, change in delta.deltas.items()}
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    missing = sorted(set(edits) - set(tensors) - {"output.weight"})
    if missing:
        raise ValueError(f"the GGUF has no tensors {missing[:4]}: was the delta made on another model?")
    untie = ("token_embd.weight" in edits or "output.weight" in edits) and "output.weight" not in tensors

    def edited(name: str) -> np.ndarray:
        tensor = tensors[name]
        base = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        change = edits[name].detach().float().cpu().numpy()
        if base.shape != change.shape:
            raise ValueError(f"{name}: the delta has shape {change.shape}, the GGUF tensor {base.shape}")
        return (base + float(coefficient) * change).astype(np.float32)

    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), architecture)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # the writer writes these itself
        kind = field.types[0]
        writer.add_key_value(field.name, field.contents(), kind,
                             sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    written: list[tuple[str, np.ndarray | None]] = []
    for tensor in reader.tensors:
        if tensor.name in edits:
            data = edited(tensor.name)
            writer.add_tensor_info(tensor.name, data.shape, data.dtype, data.nbytes, gguf.GGMLQuantizationType.F32)
            written.append((tensor.name, data))
        else:
            writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                                   tensor.tensor_type)
            written.append((tensor.name, None))
    if untie:  # the head was the embedding matrix: it keeps the original, plus its own edit if the delta has one
        head = gguf.quants.dequantize(tensors["token_embd.weight"].data,
                                      tensors["token_embd.weight"].tensor_type).astype(np.float32)
        if "output.weight" in edits:
            head = head + float(coefficient) * edits["output.weight"].detach().float().cpu().numpy()
        writer.add_tensor_info("output.weight", head.shape, head.dtype, head.nbytes, gguf.GGMLQuantizationType.F32)
        written.append(("output.weight", head))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name, data in written:
        writer.write_tensor_data(tensors[name].data if data is None else data,
                                 **({"tensor_endianess": reader.endianess} if data is None else {}))
    writer.close()
    tmp.replace(path)
    return path
