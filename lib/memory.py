"""A memory plan before anything loads: from a model's config alone (no weights), the batch and lengths of a run
and its training mode, estimate peak memory and compare it with what the devices have.

The terms (bytes), each calibrated against the allocator-level peak of real runs on the embedded default
(`benchmarks/memory.py`, table in `out/bench/memory.md`: plan within 10% of the measured peak for forward passes,
generation and steady-state training, with and without gradient checkpointing):
- weights: parameters x dtype size;
- KV cache of generation: 2 x layers x kv heads x head dim x batch x tokens;
- the transient activations of one block (the widest per-layer tensors and the attention scores);
- logits, which steerlab reads in float32: inference keeps the logits and their log-softmax (2 x batch x tokens x
  vocab x 4; generation alone keeps the last position only), training 3 (logits, log-softmax and a gradient);
- when training: AdamW's two float32 moments (plus a float32 master copy of bf16 weights) for the trained
  parameters; the activations kept for the backward pass: per layer and token about 6 x hidden + 4 x intermediate
  values for a Llama-style block (norm inputs, q/k/v and attention outputs, the MLP's gate, up, activation and
  product), or, with gradient checkpointing, each block's input plus one block's recomputed set; and the gradients,
  which fill in as the backward pass frees those activations and the logits, so only their excess adds to the peak.
A 7B model in full fp32 finetuning needs 16 bytes per parameter before activations: ~120 GB.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any

import torch

GB = 1e9
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
TRAINING = ("none", "full", "lora")
LOGITS = ("all", "last")


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
    logits: str = "all"  # "all": log-probs read at every position (KL, scoring); "last": generation only

    def __post_init__(self) -> None:
        if self.training not in TRAINING:
            raise ValueError(f"training={self.training!r} must be one of {TRAINING}")
        if self.logits not in LOGITS:
            raise ValueError(f"logits={self.logits!r} must be one of {LOGITS}")


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
        width = max(len(name) for name in [*self.terms, "total (estimated peak)"]) + 2
        rows = [f"  {name:<{width}}{value / GB:9.2f} GB" for name, value in self.terms.items()]
        have = "unknown" if self.available is None else f"{self.available / GB:.2f} GB"
        rows.append(f"  {'total (estimated peak)':<{width}}{self.total / GB:9.2f} GB   available on {self.device}: "
                    f"{have}")
        return "\n".join(rows)


def plan(size: ModelSize, workload: Workload, dtype: str = "float32", device: str = "cpu",
         available: float | None = None) -> MemoryPlan:
    """The estimated peak of `workload` on a model of `size` with weights in `dtype`, beside `available`."""
    width = DTYPE_BYTES[dtype]
    b, t = workload.batch, workload.tokens
    terms = {"weights": workload.models * size.parameters * width}
    if workload.generated:
        terms["kv cache"] = 2 * size.layers * size.kv_heads * size.head_dim * b * t * width
    terms["activations (one layer)"] = b * t * (4 * size.hidden + 2 * size.intermediate) * width \
        + b * size.heads * t * t * width
    positions = t if workload.logits == "all" or workload.training != "none" else 1
    copies = 3 if workload.training != "none" else 2
    terms["logits (float32)"] = copies * b * positions * size.vocab * 4
    if workload.training != "none":
        if workload.training == "full":
            trained = size.parameters
        else:
            trained = size.layers * sum(workload.lora_rank * (i + o) for i, o in size.linear_shapes)
        master = 4 if width < 4 else 0  # bf16 weights train with a float32 copy
        terms["optimizer (AdamW)"] = trained * (8 + master)
        block = b * t * (6 * size.hidden + 4 * size.intermediate) * width  # one block's saved tensors
        kept = size.layers * b * t * size.hidden * width + block if workload.gradient_checkpointing \
            else size.layers * block
        terms["activations kept for backward"] = kept
        # gradients fill in as the backward pass frees the activations and logits: only the excess adds to the peak
        terms["gradients (beyond freed activations)"] = max(0, trained * width - kept - terms["logits (float32)"])
    result = MemoryPlan(terms, available, device)
    result.fixes = _fixes(size, workload, dtype, result)
    return result


def _fixes(size: ModelSize, workload: Workload, dtype: str, current: MemoryPlan) -> list[str]:
    """Cheaper settings, each with the total it would need, cheapest first. When no single one fits, the smallest
    combination that does comes first (fewest changes, then the least intrusive: gradient checkpointing and one
    model at a time leave results unchanged, bf16 rounds, LoRA and a smaller batch change the experiment)."""
    if current.fits:
        return []
    changes: list[tuple[str, int, Any]] = []  # (name, intrusiveness, change of (workload, dtype))
    if workload.training != "none" and not workload.gradient_checkpointing:
        changes.append(("gradient_checkpointing=True", 0,
                        lambda w, d: (Workload(**{**w.__dict__, "gradient_checkpointing": True}), d)))
    if workload.models > 1:
        changes.append(("one model at a time", 0, lambda w, d: (Workload(**{**w.__dict__, "models": 1}), d)))
    if dtype == "float32":
        changes.append(("dtype=bfloat16", 1, lambda w, d: (w, "bfloat16")))
    if workload.training == "full":
        changes.append(("use_lora=True", 2, lambda w, d: (Workload(**{**w.__dict__, "training": "lora"}), d)))
    if workload.batch > 1:
        smaller = max(1, workload.batch // 4)
        changes.append((f"a batch of {smaller} ({workload.batch_parameter})", 2,
                        lambda w, d: (Workload(**{**w.__dict__, "batch": smaller}), d)))

    def apply(chosen: tuple[tuple[str, int, Any], ...]) -> MemoryPlan:
        setting = (workload, dtype)
        for _, _, change in chosen:
            setting = change(*setting)
        return plan(size, setting[0], setting[1], current.device, current.available)

    singles = sorted(((name, apply(((name, cost, change),))) for name, cost, change in changes),
                     key=lambda item: item[1].total)
    fixes = [f"{name} ({option.total / GB:.1f} GB)" for name, option in singles]
    if singles and not any(option.fits for _, option in singles):
        combos = []
        for n in range(2, len(changes) + 1):
            for chosen in itertools.combinations(changes, n):
                option = apply(chosen)
                if option.fits:
                    combos.append((n, sum(cost for _, cost, _ in chosen), option.total, chosen))
        if combos:
            n, _, needed, chosen = min(combos, key=lambda item: item[:3])
            fixes.insert(0, f"{' + '.join(name for name, _, _ in chosen)} ({needed / GB:.1f} GB)")
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


def measured_peak(run: Any) -> float:
    """Bytes live at the peak of `run()` beyond what was allocated before it, as torch's allocator saw them:
    torch.cuda's peak counter on a GPU, torch.profiler's memory events on CPU (the process RSS would add malloc's
    own caching and the loading peak). Used to check the plan (`benchmarks/memory.py`, tests/test_memory.py)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - before)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    # the profiler's raw events: an API torch marks as its own; the check below fails loudly if it moves
    events = sorted((event.start_ns(), event.nbytes()) for event in prof.profiler.kineto_results.events()
                    if event.name() == "[memory]")
    if not events:
        raise RuntimeError("torch.profiler recorded no memory events; measured_peak cannot read this torch version")
    live = peak = 0
    for _, change in events:
        live += change
        peak = max(peak, live)
    return float(peak)
