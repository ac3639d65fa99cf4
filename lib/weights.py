"""Weight deltas: `{param_name: Tensor}` plus metadata, applied to a model as `base + coefficient * dW`.

Weight steering (Fierro & Roger 2025, "Steering language models with weight arithmetic"): train one adapter on
responses of a positive persona and one on a negative persona, merge each into dense weights, and steer the base
model with `coefficient * (dW_pos - dW_neg)`. A delta is always computed from merged dense weights minus the base
(`delta_from_merged`), never by combining adapters with negative weights inside PEFT.

`apply_delta` is a context manager that saves a copy of every touched parameter and restores that copy in
`finally`: after the block the model is bit-identical to before, also when the block raises (undoing by
subtraction is not exact in low precision). `export_checkpoint` writes `base + coefficient * dW` as an ordinary Hugging
Face folder, so any serving engine runs the steered model without hooks.

What a parameter is, read off its name: `module_role` (which parameters write the residual stream, read it, belong to
attention or the MLP), `layer_of` (its decoder block) and `as_matrix` / `from_matrix` (its weight as [out, in]
whatever layout it is stored in).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lib.hooks import real_number
from lib.interventions import editing_weights
from lib.io import atomic_write, file_sha256, write_json

_LAYER_INDEX = re.compile(r"\.(\d+)\.")


@dataclass
class WeightDelta:
    """A dense weight difference per parameter name (names as in `model.named_parameters()`)."""

    deltas: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.deltas:
            raise ValueError("deltas is empty: a weight delta needs at least one parameter")
        for name, delta in self.deltas.items():
            if not isinstance(delta, torch.Tensor):
                raise TypeError(f"delta for {name!r} is {type(delta).__name__}, not a Tensor")
            if not torch.isfinite(delta).all():
                raise ValueError(f"delta for {name!r} contains NaN or inf")
        self.deltas = dict(sorted(self.deltas.items()))

    # -- inspection
    @property
    def names(self) -> list[str]:
        return list(self.deltas)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.deltas[name]

    def __len__(self) -> int:
        return len(self.deltas)

    def numel(self) -> int:
        return sum(d.numel() for d in self.deltas.values())

    def norm(self) -> float:
        """Frobenius norm over every parameter."""
        return float(torch.sqrt(sum((d.double() ** 2).sum() for d in self.deltas.values())))

    def module_norms(self) -> dict[str, float]:
        """Frobenius norm per parameter (e.g. `model.layers.3.mlp.down_proj.weight`)."""
        return {name: float(d.double().norm()) for name, d in self.deltas.items()}

    def layer_norms(self) -> dict[str, float]:
        """Frobenius norm per decoder layer (the first `.<int>.` in the name); other parameters under "other"."""
        squares: dict[str, float] = defaultdict(float)
        for name, d in self.deltas.items():
            match = _LAYER_INDEX.search(name)
            squares[match.group(1) if match else "other"] += float((d.double() ** 2).sum())
        order = sorted(squares, key=lambda k: (k == "other", int(k) if k.isdigit() else 0))
        return {key: squares[key] ** 0.5 for key in order}

    def __repr__(self) -> str:
        return f"WeightDelta({len(self)} params, {self.numel():,} values, norm={self.norm():.4g}, meta={self.meta})"

    # -- arithmetic (metadata follows the left operand; the op is noted)
    def _combine(self, other: WeightDelta, sign: float, op: str) -> WeightDelta:
        if not isinstance(other, WeightDelta):
            return NotImplemented
        combined = {name: d.clone() for name, d in self.deltas.items()}
        for name, d in other.deltas.items():
            if name in combined:
                if combined[name].shape != d.shape:
                    raise ValueError(f"{name}: shapes differ, {tuple(combined[name].shape)} vs {tuple(d.shape)}")
                combined[name] = combined[name] + sign * d.to(combined[name])
            else:  # a parameter one adapter did not touch is an implicit zero in the other
                combined[name] = sign * d.clone()
        return WeightDelta(combined, {**self.meta, "op": op})

    def __add__(self, other: WeightDelta) -> WeightDelta:
        return self._combine(other, 1.0, "add")

    def __sub__(self, other: WeightDelta) -> WeightDelta:
        return self._combine(other, -1.0, "sub")

    def __mul__(self, scalar: float) -> WeightDelta:
        return WeightDelta({name: d * float(scalar) for name, d in self.deltas.items()}, dict(self.meta))

    __rmul__ = __mul__

    def __neg__(self) -> WeightDelta:
        return self * -1.0

    def zeros_like(self) -> WeightDelta:
        return WeightDelta({name: torch.zeros_like(d) for name, d in self.deltas.items()}, {"op": "zeros"})

    def to(self, *args: Any, **kwargs: Any) -> WeightDelta:
        return WeightDelta({name: d.to(*args, **kwargs) for name, d in self.deltas.items()}, dict(self.meta))

    # -- files
    def content_digest(self) -> str:
        """sha256 of the names, dtypes, shapes and bytes of every tensor (not the meta): equal digests mean the same
        delta, whatever it is called (the ablation scores a variant once when two groups build the same one)."""
        digest = hashlib.sha256()
        for name, d in self.deltas.items():
            flat = d.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}|{flat.dtype}|{tuple(d.shape)}|".encode())
            digest.update(flat.view(torch.uint8).numpy())  # the buffer itself, no copy
        return digest.hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write `<path>.safetensors` (tensors) and `<path>.json` (metadata, norms and the "sha256" of the
        tensor file, checked by `load`); returns the tensor file."""
        base = Path(path).with_suffix("")
        file = base.with_suffix(".safetensors")
        tensors = {name: d.detach().cpu().contiguous() for name, d in self.deltas.items()}
        meta = {**self.meta, "norm": self.norm(), "layer_norms": self.layer_norms(), "n_params": len(self)}
        atomic_write(file, lambda tmp: save_file(tensors, tmp))
        write_json(base.with_suffix(".json"), {**meta, "sha256": file_sha256(file)})
        return file

    @classmethod
    def load(cls, path: str | Path) -> WeightDelta:
        """Read a delta written by `save`. A sidecar with "sha256" must match the tensor file, else ValueError
        naming both (corrupt, or changed after saving); a sidecar that is not a JSON object is a ValueError naming
        it; a sidecar written before checksums, or none, loads unverified (as `SteeringVector.load`)."""
        base = Path(path).with_suffix("")
        file, sidecar = base.with_suffix(".safetensors"), base.with_suffix(".json")
        if not file.exists():
            raise FileNotFoundError(f"{file} does not exist (saved with WeightDelta.save?)")
        meta: dict[str, Any] = {}
        if sidecar.exists():
            try:
                meta = json.loads(sidecar.read_text())
            except ValueError as error:  # JSONDecodeError, or bytes that are not text
                raise ValueError(f"{sidecar}: unreadable metadata sidecar of {file} ({error}); restore it, re-create "
                                 "both with WeightDelta.save (rerun what saved it), or delete the sidecar to load the "
                                 "tensors unverified") from error
            if not isinstance(meta, dict):
                raise ValueError(f"{sidecar}: metadata sidecar must be a JSON object, got {type(meta).__name__}")
        if "sha256" in meta:
            expected, actual = meta.pop("sha256"), file_sha256(file)
            if expected != actual:
                raise ValueError(f"{file}: sha256 {actual} does not match {expected!r} recorded in {sidecar}: the "
                                 "file is corrupt or was changed after saving; re-create it (rerun what saved it), or "
                                 f"if the change was intended, delete \"sha256\" from {sidecar} to load it unverified")
        tensors = load_file(file)
        for derived in ("norm", "layer_norms", "n_params"):
            meta.pop(derived, None)
        return cls(dict(tensors), meta)


def _parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    # named_parameters drops duplicates, so a tied embedding / lm_head is one entry under its first name
    return dict(model.named_parameters())


def check_delta(model: nn.Module, delta: WeightDelta) -> dict[str, nn.Parameter]:
    """Every delta name must be a parameter of the model with the same shape; returns the parameters touched."""
    params = _parameters(model)
    missing = [name for name in delta.names if name not in params]
    if missing:
        sample = ", ".join(list(params)[:4])
        raise ValueError(f"the delta has parameters the model lacks: {missing[:5]}{'...' if len(missing) > 5 else ''}"
                         f" (model parameters look like: {sample}, ...). Was it computed on another architecture?")
    for name, d in delta.deltas.items():
        if params[name].shape != d.shape:
            raise ValueError(f"{name}: delta shape {tuple(d.shape)} != parameter shape {tuple(params[name].shape)}")
    return {name: params[name] for name in delta.names}


@contextmanager
def apply_delta(model: nn.Module, delta: WeightDelta, coefficient: float = 1.0) -> Iterator[nn.Module]:
    """`with apply_delta(model, dW, coefficient):` the model's weights are `W + coefficient * dW` inside the block.

    A copy of every touched parameter is saved before the edit and copied back in `finally`, so the weights
    afterwards are bit-identical to before, also when the block raises.
    """
    coefficient = real_number(coefficient, "coefficient")  # the one number check: "2.5" is refused, not parsed
    touched = check_delta(model, delta)
    saved = {name: param.detach().clone() for name, param in touched.items()}
    try:
        with torch.no_grad():
            for name, param in touched.items():
                param.add_(delta.deltas[name].to(device=param.device, dtype=param.dtype), alpha=coefficient)
        with editing_weights(model, f"apply_delta(coefficient={coefficient})"):
            yield model
    finally:
        with torch.no_grad():
            for name, param in touched.items():
                param.copy_(saved[name])


def delta_from_merged(base: nn.Module, merged: nn.Module | Mapping[str, torch.Tensor],
                      meta: dict[str, Any] | None = None) -> WeightDelta:
    """Dense `merged - base` for every parameter that changed (compared in float32 on the CPU).

    `merged` is a model whose adapter was merged into its weights (PEFT `merge_and_unload`) or a state dict.
    The base must be the untouched original: PiSSA rewrites the base weights it wraps, so a delta against the
    wrapped copy would miss its initial residual.
    """
    merged_params = merged if isinstance(merged, Mapping) else _parameters(merged)
    deltas = {}
    for name, param in _parameters(base).items():
        if name not in merged_params:
            raise ValueError(f"{name} is missing from the merged model: merge the adapter first (merge_and_unload)")
        other = merged_params[name]
        if other.shape != param.shape:
            raise ValueError(f"{name}: merged shape {tuple(other.shape)} != base shape {tuple(param.shape)}")
        diff = other.detach().float().cpu() - param.detach().float().cpu()
        if diff.abs().max() > 0:
            deltas[name] = diff
    if not deltas:
        raise ValueError("merged and base weights are identical: the adapter did not change anything "
                         "(zero-initialised and untrained? check steps and learning rate)")
    return WeightDelta(deltas, dict(meta or {}))


def export_checkpoint(model: nn.Module, tokenizer: Any, delta: WeightDelta, coefficient: float, folder: str | Path,
                      overwrite: bool = False) -> Path:
    """Write `base + coefficient * dW` as an ordinary Hugging Face checkpoint (config, safetensors, tokenizer),
    loadable by `AutoModelForCausalLM.from_pretrained` or any serving engine, plus `steerlab_delta.json` saying
    what it is."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} exists and is not empty; pass overwrite=True or choose another folder")
    folder.mkdir(parents=True, exist_ok=True)
    with apply_delta(model, delta, coefficient):
        model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    record = {"coefficient": float(coefficient), "delta_meta": delta.meta, "delta_norm": delta.norm(),
              "base_model": getattr(model, "steerlab_name", getattr(model.config, "_name_or_path", ""))}
    write_json(folder / "steerlab_delta.json", record)
    return folder


# ----------------------------------------------------------------------------- what a parameter is
# Module roles (which parameters write the residual stream, read it, belong to attention or the MLP), the decoder
# block of a parameter and the orientation its matrix is stored in: read off parameter names, beside the deltas over
# those names (moved from lib/delta_ablation.py, issue "The weight wing and one way in", item 2).

ROLES = ("q", "k", "v", "qkv", "o", "gate", "up", "down", "fc", "other")
RESIDUAL_WRITES = frozenset({"o", "down"})  # their output space is the residual stream
ATTENTION = frozenset({"q", "k", "v", "qkv", "o"})
MLP = frozenset({"gate", "up", "down", "fc"})
ATTENTION_READS = frozenset({"q", "k", "v", "qkv"})
MLP_READS = frozenset({"gate", "up", "fc"})

# "parent.module" keys first (GPT-2's c_proj is `o` under attn and `down` under mlp), then the module's own name
_ROLE_TABLE = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",  # Llama, Qwen2, Gemma-3, Mistral
    "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
    "qkv_proj": "qkv",  # Phi-3
    "attn.c_attn": "qkv", "attn.c_proj": "o", "mlp.c_fc": "fc", "mlp.c_proj": "down",  # GPT-2
    "query_key_value": "qkv", "attention.dense": "o", "dense_h_to_4h": "fc", "dense_4h_to_h": "down",  # GPT-NeoX
}
_OTHER_MODULES = frozenset({"embed_tokens", "wte", "wpe", "embed_in", "embed_out", "lm_head", "embed_positions"})
_NORM = re.compile(r"(^|_)(norm|ln|ln_f|layernorm)(_|$)|layernorm|layer_norm|^ln_\w+$")
# GPT-2's Conv1D modules store their weight as [in, out]
CONV1D_MODULES = frozenset({"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"})


def _module_keys(param_name: str) -> tuple[str, str]:
    """("parent.module", "module") of a parameter name such as `model.layers.0.self_attn.q_proj.weight`."""
    parts = param_name.split(".")
    if len(parts) < 2:
        raise ValueError(f"{param_name!r} is not a parameter name of the form <module>.<weight|bias>")
    module = parts[-2]
    return (f"{parts[-3]}.{module}" if len(parts) >= 3 else module), module


def module_role(param_name: str, roles: Mapping[str, str] | None = None) -> str:
    """The role of a parameter's module: one of `ROLES`.

    Known names: Llama/Qwen2/Gemma-3/Mistral (`q_proj` ... `down_proj`), GPT-2 (`attn.c_attn` -> "qkv",
    `attn.c_proj` -> "o", `mlp.c_fc` -> "fc", `mlp.c_proj` -> "down"), GPT-NeoX and Phi-3's fused `qkv_proj`;
    embeddings, the LM head and norms are "other". `roles` overrides or extends the table: keys are a full parameter
    name, a "parent.module" pair or a module name (looked up in that order), values one of `ROLES`. Anything else
    raises, because a silently mis-filed tensor would corrupt every crop built from the roles.
    """
    pair, module = _module_keys(param_name)
    for table in (roles or {}, _ROLE_TABLE):
        for key in (param_name, pair, module):
            if key in table:
                role = table[key]
                if role not in ROLES:
                    raise ValueError(f"roles[{key!r}]={role!r} is not a role; choose one of {ROLES}")
                return role
    if module in _OTHER_MODULES or _NORM.search(module):
        return "other"
    raise ValueError(f"no module role for {param_name!r} (module {module!r}); pass roles={{{module!r}: <role>}} "
                     f"with a role in {ROLES} (keys may also be {pair!r} or the full parameter name)")


def layer_of(param_name: str, allow_none: bool = False) -> int | None:
    """The decoder block index of a parameter: the first `.<int>.` in its name, the rule `WeightDelta.layer_norms`
    uses. Names without one (embeddings, final norm, LM head) raise unless `allow_none`, then give None."""
    match = _LAYER_INDEX.search(param_name)
    if match:
        return int(match.group(1))
    if allow_none:
        return None
    raise ValueError(f"{param_name!r} has no decoder block index (no '.<int>.' in the name); pass allow_none=True "
                     "to treat it as outside the blocks")


def output_axis(param_name: str, transposed: Collection[str] | None = None) -> int:
    """The axis of a 2-D weight that indexes output units: 0 for `nn.Linear` ([out, in]), 1 for a Conv1D ([in, out]).

    `transposed` is the set of parameter names stored [in, out] (`conv1d_names(model)` reads it off a model); by
    default GPT-2's names (`attn.c_attn`, `attn.c_proj`, `mlp.c_fc`, `mlp.c_proj`) are. GPTBigCode uses the same
    names with `nn.Linear`: pass `transposed=conv1d_names(model)` (empty there) for it."""
    if transposed is not None:
        return 1 if param_name in transposed else 0
    pair, _ = _module_keys(param_name)
    return 1 if pair in CONV1D_MODULES else 0


def conv1d_names(model: nn.Module) -> set[str]:
    """Parameter names of the model's 2-D weights stored [in, out] (transformers' `Conv1D`)."""
    return {f"{module_name}.weight" if module_name else "weight" for module_name, module in model.named_modules()
            if type(module).__name__ == "Conv1D"}


def as_matrix(param_name: str, tensor: torch.Tensor, transposed: Collection[str] | None = None) -> torch.Tensor:
    """The weight as [out, in] (a view; a Conv1D weight is transposed)."""
    if tensor.ndim != 2:
        raise ValueError(f"{param_name}: shape {tuple(tensor.shape)} is not a matrix")
    return tensor.T if output_axis(param_name, transposed) == 1 else tensor


def from_matrix(param_name: str, matrix: torch.Tensor, transposed: Collection[str] | None = None) -> torch.Tensor:
    """The inverse of `as_matrix`: an [out, in] matrix back in the parameter's stored layout."""
    return (matrix.T if output_axis(param_name, transposed) == 1 else matrix).contiguous()
