"""A memory plan before anything loads: from a model's config alone (no weights), the batch and lengths of a run
and its training mode, estimate peak memory and compare it with what the devices have.

The terms (bytes): weights (parameters x dtype size); the KV cache of generation (2 x layers x kv heads x head dim
x batch x tokens); the transient activations of one forward pass (the widest per-layer tensors plus the logits,
which steerlab reads in float32 at every position for the KL); and, when training, gradients, AdamW's two float32
moments (and a float32 master copy of bf16 weights) for the trained parameters, plus the activations kept for the
backward pass (all layers', or one layer's with gradient checkpointing). A 7B model in full fp32 finetuning needs
16 bytes per parameter before activations: ~120 GB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

GB = 1e9
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
TRAINING = ("none", "full", "lora")


@dataclass(frozen=True)
class ModelSize:
    """What the plan needs from a config."""

    parameters: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    linear_shapes: tuple[tuple[int, int], ...] = ()  # (in, out) of each decoder block's linear layers, for LoRA


def _text(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def parameter_count(config: Any) -> int:
    """Exact parameter count from the config: built on PyTorch's meta device (no memory, no weights), so it holds
    for every architecture transformers knows, tied embeddings and biases included."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def model_size(config: Any) -> ModelSize:
    text = _text(config)
    hidden = getattr(text, "hidden_size", None) or text.n_embd
    layers = getattr(text, "num_hidden_layers", None) or text.n_layer
    heads = getattr(text, "num_attention_heads", None) or text.n_head
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    intermediate = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * hidden
    linears = ((hidden, heads * head_dim), (hidden, kv_heads * head_dim), (hidden, kv_heads * head_dim),
               (heads * head_dim, hidden), (hidden, intermediate), (hidden, intermediate), (intermediate, hidden))
    return ModelSize(parameter_count(config), layers, hidden, heads, kv_heads, head_dim, intermediate,
                     text.vocab_size, linears)


@dataclass(frozen=True)
class Workload:
    """What a run does with the model: rows per forward pass, tokens per row (prompt + generated), new tokens held
    in the KV cache, and training."""

    batch: int
    tokens: int
    generated: int = 0
    training: str = "none"
    lora_rank: int = 16
    gradient_checkpointing: bool = False
    models: int = 1  # models held at once (e.g. base and finetuned)
    batch_parameter: str = "batch_size"  # the notebook parameter(s) that set `batch`, for the fixes

    def __post_init__(self) -> None:
        if self.training not in TRAINING:
            raise ValueError(f"training={self.training!r} must be one of {TRAINING}")


@dataclass
class MemoryPlan:
    terms: dict[str, float]  # bytes
    available: float | None  # bytes on the devices the run uses; None when unknown
    device: str
    fixes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.terms.values())

    @property
    def fits(self) -> bool:
        return self.available is None or self.total <= self.available

    def table(self) -> str:
        rows = [f"  {name:<28}{value / GB:9.2f} GB" for name, value in self.terms.items()]
        have = "unknown" if self.available is None else f"{self.available / GB:.2f} GB"
        rows.append(f"  {'total (estimated peak)':<28}{self.total / GB:9.2f} GB   available on {self.device}: {have}")
        return "\n".join(rows)


def plan(size: ModelSize, workload: Workload, dtype: str = "float32", device: str = "cpu",
         available: float | None = None) -> MemoryPlan:
    """The estimated peak of `workload` on a model of `size` with weights in `dtype`, beside `available`."""
    width = DTYPE_BYTES[dtype]
    b, t = workload.batch, workload.tokens
    terms = {"weights": workload.models * size.parameters * width}
    if workload.generated:
        terms["kv cache"] = 2 * size.layers * size.kv_heads * size.head_dim * b * t * width
    per_layer = b * t * (4 * size.hidden + 2 * size.intermediate) * width + b * size.heads * t * t * width
    terms["activations (one layer)"] = per_layer
    terms["logits (float32)"] = b * t * size.vocab * 4 * 2  # the logits and their log-softmax
    if workload.training != "none":
        if workload.training == "full":
            trained = size.parameters
        else:
            trained = size.layers * sum(workload.lora_rank * (i + o) for i, o in size.linear_shapes)
        master = 4 if width < 4 else 0  # bf16 weights train with a float32 copy
        terms["gradients"] = trained * width
        terms["optimizer (AdamW)"] = trained * (8 + master)
        kept = size.layers * b * t * size.hidden * width if workload.gradient_checkpointing \
            else size.layers * per_layer
        terms["activations kept for backward"] = kept
    result = MemoryPlan(terms, available, device)
    result.fixes = _fixes(size, workload, dtype, result)
    return result


def _fixes(size: ModelSize, workload: Workload, dtype: str, current: MemoryPlan) -> list[str]:
    """Cheaper settings, each with the total it would need, cheapest first."""
    if current.fits:
        return []
    options: list[tuple[str, MemoryPlan]] = []
    if dtype == "float32":
        options.append(("dtype=bfloat16", plan(size, workload, "bfloat16", current.device, current.available)))
    if workload.training == "full":
        lora = Workload(**{**workload.__dict__, "training": "lora"})
        options.append(("use_lora=True", plan(size, lora, dtype, current.device, current.available)))
    if workload.batch > 1:
        smaller = Workload(**{**workload.__dict__, "batch": max(1, workload.batch // 4)})
        options.append((f"a batch of {smaller.batch} ({workload.batch_parameter})", plan(size, smaller, dtype,
                                                                                       current.device,
                                                                                       current.available)))
    if workload.models > 1:
        one = Workload(**{**workload.__dict__, "models": 1})
        options.append(("one model at a time", plan(size, one, dtype, current.device, current.available)))
    options.sort(key=lambda item: item[1].total)
    fixes = [f"{name} ({option.total / GB:.1f} GB)" for name, option in options]
    return fixes + ['device_map="auto" to spread the model over several GPUs']


def available_memory(device_map: str = "") -> tuple[str, float | None]:
    """(where, bytes free): the free memory of GPU 0, of all GPUs with a device_map, else the available RAM."""
    if torch.cuda.is_available():
        devices = range(torch.cuda.device_count()) if device_map else [0]
        return (f"{len(devices)} GPU(s)", float(sum(torch.cuda.mem_get_info(d)[0] for d in devices)))
    try:
        with open("/proc/meminfo") as handle:
            info = dict(line.split(":", 1) for line in handle)
        return "CPU RAM", float(info["MemAvailable"].strip().split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else None
        return "CPU RAM", float(pages * os.sysconf("SC_PAGE_SIZE")) if pages else None
