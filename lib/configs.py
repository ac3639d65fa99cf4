"""One config dataclass per notebook. The notebook's `parameters` cell mirrors the fields
(a test checks names and defaults), and `just run` / `just sweep` validate overrides
against it before anything launches, because papermill only warns on unknown names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class NotebookConfig:
    """Base of the per-notebook configs; each subclass ends with `out_dir: str = ""` (empty: derived)."""

    notebook: ClassVar[str] = ""

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
    return re.sub(r"[^A-Za-z0-9.,+-]+", "-", text).strip("-") or "empty"


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
            raise ValueError(f"layer={self.layer!r} must be a non-negative int (checked against the model later)")
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


@dataclass
class GRPOMathConfig(NotebookConfig):
    """GRPO on math (the seed's "Day 4" training). The seed's output_dir is `out_dir` here.

    The default is the quick preset (minutes on 2 CPU cores); the journal's long run is
    `num_train_iters=60 train_size=128 eval_size=64 num_chains=8 prompts_per_step=2 eval_every=20 save_every=10
    max_completion_length=64`.
    """

    notebook: ClassVar[str] = "grpo_math"
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


CONFIGS: dict[str, type[NotebookConfig]] = {
    cls.notebook: cls for cls in (ContrastiveConfig, GRPOMathConfig, MathSteeringConfig, BOSteeringConfig)
}
