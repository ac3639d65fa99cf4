"""Per-layer-group steering weights found by Bayesian optimisation (the seed's "Day 5" experiment).

The layers are split into contiguous groups (default four: early, mid_early, mid_late, late) and
one weight per group scales the vector there. The objective is any scalar eval: pass@1 of base +
grouped steering on the math eval set (default), or the contrastive log-prob gap. Random search
with the same budget runs beside BO, and the best configuration is re-scored on problems neither
the optimiser nor training saw, because the best of many noisy evaluations is biased upwards
(the winner's curse).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from lib.config import (
    ModelConfig,
    check_choice,
    check_file,
    check_finetuned,
    check_layer_parameter,
    check_math_source,
    check_positive,
    check_sampled,
    check_subset,
    model_layer_count,
)
from lib.evals import effect_curve
from lib.hooks import Steering
from lib.io import atomic_write, repo_path
from lib.kits.data import load_subset, reply_pairs, split_examples
from lib.kits.mathdata import MathProblem, train_eval_split
from lib.kits.matheval import MathEval, evaluate_math
from lib.kits.optimize import SearchSpace
from lib.memory import Workload
from lib.models import find_layers
from lib.vectors import SteeringVector, group_weights, layer_groups


@dataclass
class BOSteeringConfig(ModelConfig):
    """Bayesian optimisation of one steering weight per layer group (the seed's "Day 5")."""

    notebook: ClassVar[str] = "steering_bo"
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
        super().__post_init__()
        check_choice("objective", self.objective, ("pass1", "contrastive_gap"))
        for name in ("train_size", "eval_size", "n_groups", "n_initial_points", "n_iterations", "confirm_size",
                     "confirm_completions", "num_completions_eval", "max_completion_length", "frame_every",
                     "batch_size"):
            check_positive(name, getattr(self, name))
        if not self.weight_low < self.weight_high:
            raise ValueError(f"weight_low={self.weight_low} must be below weight_high={self.weight_high}")
        if self.n_initial_points > self.n_iterations:
            raise ValueError(f"n_initial_points={self.n_initial_points} must be <= n_iterations={self.n_iterations}")
        check_sampled("num_completions_eval", self.num_completions_eval, "eval_temperature", self.eval_temperature)
        check_sampled("confirm_completions", self.confirm_completions, "confirm_temperature", self.confirm_temperature)
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

    def workload(self) -> Workload:
        return Workload(batch=self.batch_size, tokens=256 + self.max_completion_length,
                        generated=self.max_completion_length, models=2 if self.objective == "pass1" else 1,
                        logits="last" if self.objective == "pass1" else "all")

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
        check_layer_parameter("boundaries", self.boundaries, self.model, n_layers, first=1)


DEFAULT_GROUP_NAMES = {4: ["early", "mid_early", "mid_late", "late"], 2: ["early", "late"],
                       3: ["early", "middle", "late"]}


def load_vector(cfg: BOSteeringConfig) -> SteeringVector:
    base = repo_path(cfg.vector).with_suffix("")
    if not base.with_suffix(".safetensors").exists():
        raise FileNotFoundError(f"vector={cfg.vector!r}: no {base.with_suffix('.safetensors')}; run the math_steering "
                                "(or contrastive_steering) notebook first and pass its out folder's vector")
    return SteeringVector.load(base)


def groups_for(cfg: BOSteeringConfig, model: nn.Module) -> tuple[list[str], list[list[int]]]:
    n_layers = len(find_layers(model)[1])
    groups = layer_groups(n_layers, cfg.n_groups, cfg.boundaries or None)
    names = list(cfg.group_names) or DEFAULT_GROUP_NAMES.get(len(groups), [f"group{i}" for i in range(len(groups))])
    if len(names) != len(groups):
        raise ValueError(f"group_names has {len(names)} names for {len(groups)} layer groups")
    return names, groups


def search_space(cfg: BOSteeringConfig, names: list[str]) -> SearchSpace:
    return SearchSpace(names, [(cfg.weight_low, cfg.weight_high)] * len(names))


def steering_for(vector: SteeringVector, groups: list[list[int]], names: list[str],
                 point: dict[str, float]) -> Steering:
    missing = sorted({layer for group in groups for layer in group} - set(vector.layers))
    if missing:
        raise ValueError(f"the vector lacks layers {missing}; grouped steering needs a vector at every layer")
    return Steering(vector, group_weights(groups, [point[name] for name in names]))


def math_problems(cfg: BOSteeringConfig) -> tuple[list[MathProblem], list[MathProblem]]:
    """The eval set of training (the optimiser's objective) and a confirmation set no run has seen:
    problems after the training ones in the same seeded stream."""
    _, eval_problems = train_eval_split(cfg.source, cfg.train_size, cfg.eval_size, cfg.seed)
    extended, _ = train_eval_split(cfg.source, cfg.train_size + cfg.confirm_size, cfg.eval_size, cfg.seed)
    return eval_problems, extended[cfg.train_size:]


def make_objective(cfg: BOSteeringConfig, model: nn.Module, tokenizer: Any, vector: SteeringVector,
                   names: list[str], groups: list[list[int]]) -> Callable[[dict[str, float]], float]:
    """A function point -> score for the chosen `objective`; every call is a real evaluation."""
    if cfg.objective == "pass1":
        eval_problems, _ = math_problems(cfg)

        def pass1(point: dict[str, float]) -> float:
            return math_score(cfg, model, tokenizer, eval_problems, steering_for(vector, groups, names, point))

        return pass1
    pairs_t = reply_pairs(split_examples(load_subset(cfg.target, cfg.seed), 1, cfg.eval_size)[1])
    pairs_b = reply_pairs(split_examples(load_subset(cfg.baseline, cfg.seed), 1, cfg.eval_size)[1])

    def contrastive_gap(point: dict[str, float]) -> float:
        curve = effect_curve(model, tokenizer, pairs_t, pairs_b, steering_for(vector, groups, names, point), [1.0],
                             cfg.batch_size, progress=False)
        return curve["gap"][0]

    return contrastive_gap


def math_eval(cfg: BOSteeringConfig, model: nn.Module, tokenizer: Any, problems: list[MathProblem],
              steering: Steering | None = None, n_completions: int | None = None,
              temperature: float | None = None) -> MathEval:
    n = n_completions or cfg.num_completions_eval
    results = evaluate_math(model, tokenizer, problems, n_completions=n,
                            temperature=cfg.eval_temperature if temperature is None else temperature,
                            max_new_tokens=cfg.max_completion_length, batch_size=cfg.batch_size, seed=cfg.seed,
                            steering=steering, coefficients=None if steering is None else [1.0], progress=False)
    return next(iter(results.values()))


def math_score(cfg: BOSteeringConfig, model: nn.Module, tokenizer: Any, problems: list[MathProblem],
               steering: Steering | None = None) -> float:
    return math_eval(cfg, model, tokenizer, problems, steering).pass_at[1]


def history_path(cfg: BOSteeringConfig, out: Path, method: str) -> Path:
    """The run folder's history; `resume_from` seeds it once from a killed run's file elsewhere."""
    path = out / f"{method}_history.json"
    if cfg.resume_from and method == "bo" and not path.exists():
        source = repo_path(cfg.resume_from)
        if not source.exists():
            raise FileNotFoundError(f"resume_from={cfg.resume_from!r} does not exist")
        atomic_write(path, source.read_bytes())
    return path


def bo_results(cfg: BOSteeringConfig, names: list[str], groups: list[list[int]], bo: Any, random: Any | None,
               baseline_score: float, finetuned_score: float | None, confirmation: dict[str, Any]) -> dict[str, Any]:
    """The run's results.json: both searches' histories, the confirmation, and the `summary` a sweep's
    summary.csv takes its metric columns from."""
    return {
        "best_weights": bo.best_point,
        "best_score": bo.best_score,
        "baseline_score": baseline_score,
        "finetuned_score": finetuned_score,
        "confirmed": confirmation,
        "optimization_history": bo.history,
        "random_search": None if random is None else {"best_weights": random.best_point,
                                                      "best_score": random.best_score, "history": random.history},
        "groups": dict(zip(names, groups, strict=True)),
        "optimizer_settings": bo.settings,
        "parameters": cfg.as_dict(),
        "summary": {"main_metric": f"{cfg.objective} (BO best)", "main": bo.best_score, "baseline": baseline_score,
                    "confirmed": confirmation.get("score"), "finetuned": finetuned_score,
                    "random_best": None if random is None else random.best_score,
                    "side_effect_metric": "KL from base on neutral text at the best weights",
                    "side_effect": confirmation.get("kl")},
    }


def draw_figures(results: dict[str, Any], out: Path, every: int = 1) -> dict[str, Path]:
    """All figures from results.json alone: 1-D GP frames and GIF, 2-D grid frames and GIF,
    parallel coordinates, and BO against random search."""
    from lib.kits.optimize import SearchSpace as Space
    from lib.kits.optimize_plots import animate, bo_vs_random_figure, gp_1d_frames, gp_2d_grid, parallel_coordinates

    settings = results["optimizer_settings"]
    space = Space.from_settings(settings)
    history = results["optimization_history"]
    figures: dict[str, Path] = {}
    frames_1d = gp_1d_frames(history, space, out / "frames_1d", every=every, seed=settings["seed"])
    if frames_1d:
        figures["gp_1d_gif"] = animate(frames_1d, out / "gp_1d.gif")
        figures["gp_1d_last"] = frames_1d[-1]
    frames_2d = []
    (out / "frames_2d").mkdir(parents=True, exist_ok=True)
    for end in range(max(3, settings["n_initial_points"]), len(history) + 1, every):
        frames_2d.append(gp_2d_grid(history[:end], space, out / "frames_2d" / f"frame_{end:03d}.png",
                                    seed=settings["seed"], n=25))
    if frames_2d:
        figures["gp_2d_gif"] = animate(frames_2d, out / "gp_2d.gif")
    figures["gp_2d"] = gp_2d_grid(history, space, out / "gp_2d.png", seed=settings["seed"])
    figures["parallel"] = parallel_coordinates(history, space, out / "parallel_coordinates.png")
    if results.get("random_search"):
        figures["bo_vs_random"] = bo_vs_random_figure(history, results["random_search"]["history"],
                                                      out / "bo_vs_random.png")
    return figures
