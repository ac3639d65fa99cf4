"""The reasoning-direction experiment's steps (notebook `reasoning_direction`).

After the seed report "GPT-2 Activation Steering Experiment" (GPT-2 CODI on GSM8K, 86 test problems:
best amplification +2.3 points at alpha +1, suppression -12.8 points at alpha -3, random directions
-6.7 points on average): the model answers a problem set; solved and failed problems are balanced
and split 80/20; `direction = mean(acts | solved) - mean(acts | failed)` per layer; the test problems
are re-run with `alpha * direction` added, and the same is done with random directions that change the
model as much as the direction does at that alpha (KL-matched, `lib.kits.controls`; the seed's controls were
matched in norm only, and a norm-matched random direction can change the model far less or far more).

Two modes. "token": activations of ordinary tokens (the last prompt token, or the mean over the model's
own completion) and steering at token positions; the side effect and the controls' matching read the raw
next-token KL on neutral text. "latent": the continuous-thought loop of `lib.latent`, activations and
steering per latent step (`[k, hidden]` per layer); latent steering never touches ordinary tokens, so its
KL is read through the loop (`latent_kl`: the first answer token after the thoughts, neutral texts as prompts).

Statistics (the evaluation kit, docs/evaluation.md): accuracy changes with a paired bootstrap interval over
test problems beside the exact McNemar p; the direction's rank among the random directions with its floor
1/(n + 1) (`lib.kits.uncertainty.rank_p_value`).

Every evaluation is one (direction, alpha) pair saved as it finishes, so an interrupted run resumes
without redoing any.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from lib.config import (
    ModelConfig,
    check_choice,
    check_file,
    check_layer_parameter,
    check_math_source,
    check_positive,
    layer_list,
    model_layer_count,
)
from lib.evals import kl_sum, next_token_kl
from lib.extract import extract, prompt_and_completion
from lib.generation import generate, render_chat
from lib.hooks import Steering
from lib.io import repo_path, write_json
from lib.kits.controls import KLUnreachable, kl_matched_random, match_kl
from lib.kits.data import NEUTRAL_TEXTS
from lib.kits.mathdata import MathProblem, build_messages, load_math
from lib.kits.plots import finish_figure
from lib.kits.rewards import extract_answer, is_correct
from lib.kits.stats import (
    TRANSITIONS,
    accuracy_ci,
    auc,
    balanced_split,
    mcnemar_exact,
    transitions,
)
from lib.kits.uncertainty import Estimate, bootstrap, rank_p_value
from lib.latent import LatentSteering, latent_generate
from lib.memory import Workload
from lib.models import find_layers, load_model
from lib.vectors import SteeringVector, mean_difference, random_like


@dataclass
class ReasoningDirectionConfig(ModelConfig):
    """A "good reasoning" direction from solved vs failed problems, with KL-matched random controls (after the
    seed report "GPT-2 Activation Steering Experiment"). Defaults are the quick preset; the journal run overrides
    sizes."""

    notebook: ClassVar[str] = "reasoning_direction"
    SEED_NAMES: ClassVar[dict[str, str]] = {"alphas": "coefficients", "random_alphas": "random_coefficients",
                                            "step_alphas": "step_coefficients"}
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
        super().__post_init__()
        check_choice("mode", self.mode, ("token", "latent"))
        check_choice("read", self.read, ("prompt_last", "completion_mean"))
        check_choice("steer_positions", self.steer_positions, ("all", "prompt", "generated"))
        for name in ("n_problems", "latent_steps", "max_new_tokens", "n_boot", "batch_size"):
            check_positive(name, getattr(self, name))
        check_positive("n_random", self.n_random, allow_zero=True)
        if not 0 < self.train_fraction < 1:
            raise ValueError(f"train_fraction={self.train_fraction} must be between 0 and 1 (0.8: the seed's 80/20)")
        self.layers = layer_list("layers", self.layers)
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

    @property
    def coefficients(self) -> list[float]:
        """`alphas`, the seed's name: coefficients of the direction."""
        return list(self.alphas)

    @property
    def random_coefficients(self) -> list[float]:
        """`random_alphas`: the alphas at which random directions, KL-matched to the direction there, are run."""
        return list(self.random_alphas)

    @property
    def step_coefficients(self) -> list[float]:
        """`step_alphas`: one coefficient per latent step (empty: `coefficients` at every step)."""
        return list(self.step_alphas)

    def workload(self) -> Workload:
        return Workload(batch=self.batch_size, tokens=256 + self.max_new_tokens, generated=self.max_new_tokens,
                        logits="last")

    def check_inputs(self) -> None:
        check_math_source("source", self.source)
        check_file("projection", self.projection, "give a file saved with torch.save(module), or '' for none")
        check_layer_parameter("layers", self.layers, self.model, model_layer_count(self.model))


START_TEXT, END_TEXT = "<think>", "</think>\n<answer>"  # latent mode: thoughts replace the text between the tags
SIGNIFICANCE = 0.05
# The per-alpha decision the summary makes. Ours: the seed report gave accuracy changes without a test.
SIGNIFICANCE_RULE = "ours: exact McNemar p < 0.05 vs alpha 0, per alpha, not adjusted for the number of alphas"


def load(cfg: ReasoningDirectionConfig) -> tuple[nn.Module, Any, list[MathProblem], nn.Module | None]:
    model, tokenizer = load_model(cfg.model, **cfg.loading())
    problems = load_math(cfg.source, cfg.n_problems, cfg.seed)
    projection = None
    if cfg.projection:
        path = repo_path(cfg.projection)
        if not path.exists():
            raise FileNotFoundError(f"projection={cfg.projection!r} does not exist: give a file saved with "
                                    "torch.save(module) (e.g. a CODI checkpoint's projection), or '' for none")
        projection = torch.load(path, weights_only=False, map_location="cpu")
        if not isinstance(projection, nn.Module):
            raise TypeError(f"projection={cfg.projection!r} holds a {type(projection).__name__}, not an nn.Module")
        projection.eval()
    return model, tokenizer, problems, projection


def solve(cfg: ReasoningDirectionConfig, model: nn.Module, tokenizer: Any, problems: list[MathProblem], *,
          vector: SteeringVector | None = None, alpha: float = 0.0, projection: nn.Module | None = None,
          record_layers: list[int] | None = None, progress: bool = True
          ) -> tuple[list[dict[str, Any]], dict[int, torch.Tensor]]:
    """Greedy answers to `problems` with `alpha * vector` at `cfg.layers` (unsteered without a vector).
    Returns per problem {correct, answered, completion}, and the latent activations read (latent mode)."""
    messages = [build_messages(p.question) for p in problems]
    coefficients = None if vector is None else [float(alpha)] * len(problems)
    latents: dict[int, torch.Tensor] = {}
    if cfg.mode == "token":
        steering = None if vector is None else Steering(vector, layers=cfg.layers, positions=cfg.steer_positions)
        completions = generate(model, tokenizer, messages, max_new_tokens=cfg.max_new_tokens,
                               batch_size=cfg.batch_size, steering=steering, coefficients=coefficients,
                               progress=progress)
    else:
        steering = None if vector is None else LatentSteering(
            vector.select(cfg.layers).vectors, list(cfg.step_coefficients) or None)
        output = latent_generate(model, tokenizer, messages, latent_steps=cfg.latent_steps, projection=projection,
                                 start_text=START_TEXT, end_text=END_TEXT, max_new_tokens=cfg.max_new_tokens,
                                 batch_size=cfg.batch_size, record_layers=record_layers, steering=steering,
                                 coefficients=coefficients, progress=progress)
        completions = ["<answer>" + text for text in output.texts]  # graded like token mode
        latents = output.latents
    rows = [{"correct": is_correct(c, p.answer), "answered": extract_answer(c) is not None, "completion": c}
            for c, p in zip(completions, problems, strict=True)]
    return rows, latents


def baseline(cfg: ReasoningDirectionConfig, model: nn.Module, tokenizer: Any, problems: list[MathProblem],
             out: Path, projection: nn.Module | None = None) -> list[dict[str, Any]]:
    """The unsteered answers to every problem (kept in baseline.json; a resumed run reads them back)."""
    path = out / "baseline.json"
    if path.exists():
        return json.loads(path.read_text())["rows"]
    rows, _ = solve(cfg, model, tokenizer, problems, projection=projection)
    write_json(path, {"questions": [p.question for p in problems], "answers": [p.answer for p in problems],
                      "rows": rows})
    return rows


def split(cfg: ReasoningDirectionConfig, rows: list[dict[str, Any]], problems: list[MathProblem],
          out: Path) -> dict[str, list[int]]:
    """Balanced solved/failed problems split train/test by class; problem ids and questions saved in split.json."""
    parts = balanced_split([r["correct"] for r in rows], cfg.train_fraction, cfg.seed)
    write_json(out / "split.json", {**parts, "questions": {i: problems[i].question for ids in parts.values()
                                                           for i in ids}})
    return parts


def read_activations(cfg: ReasoningDirectionConfig, model: nn.Module, tokenizer: Any, problems: list[MathProblem],
                     rows: list[dict[str, Any]], projection: nn.Module | None = None) -> dict[int, torch.Tensor]:
    """Block outputs at every layer: [problems, hidden] (token mode) or [problems, k, hidden] (latent mode)."""
    layers = list(range(len(find_layers(model)[1])))
    messages = [build_messages(p.question) for p in problems]
    if cfg.mode == "latent":
        _, latents = solve(cfg, model, tokenizer, problems, projection=projection, record_layers=layers)
        return latents
    if cfg.read == "prompt_last":
        texts = [render_chat(tokenizer, m) for m in messages]
        return extract(model, tokenizer, texts, reduction="last", batch_size=cfg.batch_size)
    texts, starts = prompt_and_completion(tokenizer, messages, [r["completion"] for r in rows])
    return extract(model, tokenizer, texts, reduction="mean", start_tokens=starts, batch_size=cfg.batch_size)


def direction(cfg: ReasoningDirectionConfig, model: nn.Module, tokenizer: Any, problems: list[MathProblem],
              rows: list[dict[str, Any]], parts: dict[str, list[int]], out: Path,
              projection: nn.Module | None = None) -> SteeringVector:
    """mean(train solved) - mean(train failed) at every layer; saved as direction.safetensors, read back on resume."""
    path = out / "direction"
    if path.with_suffix(".safetensors").exists():
        return SteeringVector.load(path)
    train = parts["train_correct"] + parts["train_wrong"]
    acts = read_activations(cfg, model, tokenizer, [problems[i] for i in train], [rows[i] for i in train], projection)
    n_solved = len(parts["train_correct"])
    vector = mean_difference({layer: a[:n_solved] for layer, a in acts.items()},
                             {layer: a[n_solved:] for layer, a in acts.items()},
                             {"method": "solved_minus_failed", "mode": cfg.mode, "read": cfg.read,
                              "source": cfg.source, "model": cfg.model, "seed": cfg.seed})
    vector.save(path)
    return vector


def first_dims(cfg: ReasoningDirectionConfig, vector: SteeringVector, n: int = 64) -> pd.DataFrame:
    """The first `n` dimensions of the unit direction (each row divided by its norm, so early layers with small
    norms stay visible): one row per layer (token mode) or per latent step at the first steered layer."""
    if cfg.mode == "latent":
        steps = vector[cfg.layers[0]]
        unit = steps / steps.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return pd.DataFrame(unit[:, :n].numpy()).rename_axis("latent step")
    return pd.DataFrame({layer: (v / v.norm().clamp_min(1e-12))[:n].numpy()
                         for layer, v in vector.vectors.items()}).T.rename_axis("layer")


def heldout_auc(cfg: ReasoningDirectionConfig, model: nn.Module, tokenizer: Any, problems: list[MathProblem],
                rows: list[dict[str, Any]], parts: dict[str, list[int]], vector: SteeringVector,
                projection: nn.Module | None = None) -> pd.Series:
    """Does the direction *read* success on unseen problems? Per layer, the AUC of the test problems' projection
    on the direction (solved vs failed; 0.5 is chance). A direction can separate them and still not *cause*
    success when added: the steering tables answer that."""
    test = parts["test_correct"] + parts["test_wrong"]
    acts = read_activations(cfg, model, tokenizer, [problems[i] for i in test], [rows[i] for i in test], projection)
    n_solved = len(parts["test_correct"])
    scores = {}
    for layer, direction_at_layer in vector.vectors.items():
        projected = (acts[layer].flatten(1) @ direction_at_layer.flatten()).tolist()
        scores[layer] = auc(projected[:n_solved], projected[n_solved:])
    return pd.Series(scores, name="test AUC").rename_axis("layer")


@dataclass
class Controls:
    """What `evaluate` runs: `vectors[label][alpha]` is steered at coefficient alpha ("direction" at every alpha,
    "random_<i>" at each random alpha where a KL-matched one exists), and `matches`, one record per random
    (label, alpha): its seed, the direction's KL there (`target_kl`), the control's matched `kl` and its scale
    over the norm-matched direction, or a `note` saying why there is none."""

    vectors: dict[str, dict[float, SteeringVector]]
    matches: list[dict[str, Any]] = field(default_factory=list)


def latent_answer_logprobs(cfg: ReasoningDirectionConfig, model: nn.Module, tokenizer: Any,
                           vector: SteeringVector | None = None, coefficients: Sequence[float] = (),
                           projection: nn.Module | None = None, texts: Sequence[str] = NEUTRAL_TEXTS
                           ) -> torch.Tensor:
    """[len(coefficients) * len(texts), vocab] (or [len(texts), vocab] without a vector) log-probs of the first
    answer token after the continuous thoughts, each text as the user prompt, with `vector` steering the thoughts
    exactly as `solve` does (`LatentSteering` at `cfg.layers`, `step_alphas`), rows coefficient-major."""
    prompts = [text for _ in (coefficients if vector is not None else [None]) for text in texts]
    steering = None if vector is None else LatentSteering(vector.select(cfg.layers).vectors,
                                                          list(cfg.step_coefficients) or None)
    row_coefficients = None if vector is None else [float(c) for c in coefficients for _ in texts]
    output = latent_generate(model, tokenizer, prompts, latent_steps=cfg.latent_steps, projection=projection,
                             start_text=START_TEXT, end_text=END_TEXT, max_new_tokens=1, batch_size=cfg.batch_size,
                             steering=steering, coefficients=row_coefficients, answer_logprobs=True, progress=False)
    assert output.answer_logprobs is not None
    return output.answer_logprobs


def latent_kl(cfg: ReasoningDirectionConfig, model: nn.Module, tokenizer: Any, vector: SteeringVector,
              coefficients: Sequence[float], projection: nn.Module | None = None,
              reference: torch.Tensor | None = None, texts: Sequence[str] = NEUTRAL_TEXTS) -> list[float]:
    """Latent mode's KL, one value per coefficient: KL(unsteered || steered) of the first answer token after the
    thoughts, averaged over `texts` (each the user prompt; nats). Latent steering acts at the thought positions
    only, so the raw KL on neutral text is 0 by construction; this reads the steering the experiment applies
    through the loop it runs. `reference`: the unsteered log-probs, when already computed."""
    if reference is None:
        reference = latent_answer_logprobs(cfg, model, tokenizer, projection=projection, texts=texts)
    steered = latent_answer_logprobs(cfg, model, tokenizer, vector, coefficients, projection, texts)
    n = len(texts)
    return [float(kl_sum(reference, steered[k * n:(k + 1) * n])) / n for k in range(len(coefficients))]


def random_control(cfg: ReasoningDirectionConfig, model: nn.Module, tokenizer: Any, vector: SteeringVector,
                   alpha: float, target_kl: float, seed: int, projection: nn.Module | None = None,
                   reference: torch.Tensor | None = None) -> tuple[SteeringVector, float, float]:
    """A random direction with `vector`'s per-layer (per-step) norms (`random_like`, `seed`), rescaled so that
    steering with it at coefficient `alpha` has the KL `target_kl` (within 5%) that the direction has there.
    Token mode: `lib.kits.controls.kl_matched_random` with the side effect's own KL (raw next-token KL on neutral
    text, all positions of `cfg.layers`). Latent mode: the same search (`match_kl`) over `latent_kl`, the KL of the
    latent steering `solve` applies. Returns the control, its KL and its scale over the norm-matched direction;
    raises `KLUnreachable` when no scale gets there."""
    if cfg.mode == "token":
        control, match = kl_matched_random(model, tokenizer, vector, target_kl, seed=seed, texts=NEUTRAL_TEXTS,
                                           weight=alpha, layers=cfg.layers, positions="all", rendering="raw",
                                           batch_size=cfg.batch_size)
        return control, match.kl, match.scale
    direction = random_like(vector, seed=seed)
    if reference is None:
        reference = latent_answer_logprobs(cfg, model, tokenizer, projection=projection)
    match = match_kl(lambda scales: latent_kl(cfg, model, tokenizer, direction, [alpha * s for s in scales],
                                              projection, reference), target_kl)
    control = direction * match.scale
    control.meta.update({"method": "random_kl_matched", "seed": seed, "target_kl": target_kl, "kl": match.kl,
                         "scale_over_norm_matched": match.scale, "kl_measure": "latent first answer token"})
    return control, match.kl, match.scale


def controls(cfg: ReasoningDirectionConfig, model: nn.Module, tokenizer: Any, vector: SteeringVector,
             kl: dict[float, float], projection: nn.Module | None = None) -> Controls:
    """The direction at every alpha and `n_random` random directions (seeds `cfg.seed + 1 + i`) at each random
    alpha, each KL-matched to the direction's KL there (`kl`, from `side_effect_kl`; `random_control`). Seed i is
    one random direction at every alpha, rescaled per alpha. Where no scale reaches the KL (a random direction's
    KL saturates below the direction's on small models) the control is left out, its record says why and a
    warning is raised: never a silent gap."""
    vectors: dict[str, dict[float, SteeringVector]] = {"direction": dict.fromkeys(cfg.coefficients, vector)}
    matches: list[dict[str, Any]] = []
    reference = (latent_answer_logprobs(cfg, model, tokenizer, projection=projection)
                 if cfg.mode == "latent" and cfg.n_random else None)
    for i in range(cfg.n_random):
        label, seed = f"random_{i}", cfg.seed + 1 + i
        vectors[label] = {}
        for alpha in cfg.random_coefficients:
            record: dict[str, Any] = {"direction": label, "alpha": alpha, "seed": seed, "target_kl": kl[alpha]}
            try:
                if not kl[alpha] > 0:
                    raise KLUnreachable(f"the direction's KL at alpha {alpha:+g} is {kl[alpha]:.3g}: nothing to match")
                control, matched, scale = random_control(cfg, model, tokenizer, vector, alpha, kl[alpha], seed,
                                                         projection, reference)
            except KLUnreachable as error:
                record["note"] = f"no KL-matched random control: {error}"
                warnings.warn(f"{label} at alpha {alpha:+g}: {record['note']}", stacklevel=2)
            else:
                vectors[label][alpha] = control
                record |= {"kl": matched, "scale_over_norm_matched": scale}
            matches.append(record)
    return Controls(vectors, matches)


def evaluate(cfg: ReasoningDirectionConfig, model: nn.Module, tokenizer: Any, test: list[MathProblem],
             vectors: dict[str, dict[float, SteeringVector]], out: Path, projection: nn.Module | None = None
             ) -> dict[str, dict[float, list[dict[str, Any]]]]:
    """Every (label, alpha) pair of `vectors` (`Controls.vectors`) on the test problems, the vector steered at
    coefficient alpha. Each pair is written to evals/ as it finishes and read back on resume."""
    jobs = [(label, alpha) for label, by_alpha in vectors.items() for alpha in by_alpha]
    results: dict[str, dict[float, list[dict[str, Any]]]] = {label: {} for label in vectors}
    bar = tqdm(jobs, desc="alphas")
    for label, alpha in bar:
        path = out / "evals" / label / f"alpha={alpha:+g}.json"
        if path.exists():
            results[label][alpha] = json.loads(path.read_text())["rows"]
            continue
        bar.set_postfix_str(f"{label} alpha={alpha:+g}")
        rows, _ = solve(cfg, model, tokenizer, test, vector=vectors[label][alpha], alpha=alpha,
                        projection=projection)
        write_json(path, {"label": label, "alpha": alpha, "rows": rows})
        results[label][alpha] = rows
    return results


def _flags(rows: list[dict[str, Any]]) -> list[bool]:
    return [bool(r["correct"]) for r in rows]


def change_points(cfg: ReasoningDirectionConfig, base: Sequence[bool], steered: Sequence[bool]) -> Estimate:
    """The accuracy change steered - base in points, with its paired bootstrap interval over test problems
    (`lib.kits.uncertainty.bootstrap`: each draw resamples the same problems in both runs)."""
    return bootstrap(lambda after, before: 100 * float(np.mean(after - before)), np.asarray(steered, dtype=float),
                     np.asarray(base, dtype=float), n_boot=cfg.n_boot, seed=cfg.seed)


def alpha_table(cfg: ReasoningDirectionConfig, evaluations: dict[str, dict[float, list[dict[str, Any]]]],
                kl: dict[float, float] | None = None) -> pd.DataFrame:
    """Accuracy with bootstrap CI per alpha; the change vs alpha 0 in points with its paired bootstrap interval
    over test problems (`delta_low`, `delta_high`); exact McNemar p on the discordant problems and
    `significant` (SIGNIFICANCE_RULE, ours); the KL per alpha (`kl_neutral` in token mode, `kl_latent` in
    latent mode, see `side_effect_kl`)."""
    runs = evaluations["direction"]
    base = _flags(runs[0.0])
    kl_column = "kl_neutral" if cfg.mode == "token" else "kl_latent"
    table = []
    for alpha in sorted(runs):
        flags = _flags(runs[alpha])
        low, high = accuracy_ci(flags, n_boot=cfg.n_boot, seed=cfg.seed)
        change = change_points(cfg, base, flags)
        test = mcnemar_exact(base, flags)
        table.append({"alpha": alpha, "accuracy": sum(flags) / len(flags), "ci_low": low, "ci_high": high,
                      "delta_points": 100 * (sum(flags) - sum(base)) / len(flags), "delta_low": change.low,
                      "delta_high": change.high, "gained": test["gained"],
                      "lost": test["lost"], "p_mcnemar": test["p_value"],
                      "significant": alpha != 0.0 and test["p_value"] < SIGNIFICANCE,
                      "answer_rate": sum(r["answered"] for r in runs[alpha]) / len(flags),
                      **({kl_column: kl[alpha]} if kl is not None else {})})
    return pd.DataFrame(table)


def transition_table(evaluations: dict[str, dict[float, list[dict[str, Any]]]]) -> pd.DataFrame:
    """Per alpha: problems that stayed correct / became correct / became wrong / stayed wrong vs alpha 0."""
    runs = evaluations["direction"]
    base = _flags(runs[0.0])
    return pd.DataFrame([{"alpha": alpha, **transitions(base, _flags(runs[alpha]))} for alpha in sorted(runs)],
                        columns=["alpha", *TRANSITIONS])


def random_table(evaluations: dict[str, dict[float, list[dict[str, Any]]]],
                 matches: Sequence[dict[str, Any]] = ()) -> pd.DataFrame:
    """Per random alpha: each random direction's accuracy change (points) with its KL match (`Controls.matches`:
    target_kl, kl, scale_over_norm_matched, or the `note` saying why it has none), their mean, and the direction's
    rank among the matched ones (`lib.kits.uncertainty.rank_p_value`, one-sided in the direction's sense as the
    seed read it: for a loss, how many random directions lose at least as much; for a gain, gain at least as
    much): `randoms_as_extreme`, `p_rank` = (1 + that count) / (n_random + 1), and its floor `p_floor` =
    1 / (n_random + 1), the smallest p `n_random` controls can give."""
    base = _flags(evaluations["direction"][0.0])
    labels = [label for label in evaluations if label != "direction"]
    found = {(m["direction"], m["alpha"]): m for m in matches}
    rows = []
    for alpha in sorted({a for label in labels for a in evaluations[label]} | {a for _, a in found}):
        def delta(label: str, alpha: float = alpha) -> float:
            flags = _flags(evaluations[label][alpha])
            return 100 * (sum(flags) - sum(base)) / len(flags)

        deltas = []
        for label in labels:
            match = {k: v for k, v in found.get((label, alpha), {}).items() if k not in ("direction", "alpha")}
            value = delta(label) if alpha in evaluations[label] else None
            if value is not None:
                deltas.append(value)
            rows.append({"alpha": alpha, "direction": label, "delta_points": value, **match})
        mine = delta("direction")
        target = next((m["target_kl"] for (_, a), m in found.items() if a == alpha), None)
        if deltas:
            rank = rank_p_value(mine, deltas, larger_is_more=mine >= 0)
            rows.append({"alpha": alpha, "direction": "random mean", "delta_points": float(np.mean(deltas))})
            rows.append({"alpha": alpha, "direction": "direction", "delta_points": mine, "target_kl": target,
                         "randoms_as_extreme": rank.at_least_as_large, "n_random": rank.n_controls,
                         "p_rank": rank.p, "p_floor": rank.floor})
        else:
            rows.append({"alpha": alpha, "direction": "direction", "delta_points": mine, "target_kl": target,
                         "n_random": 0, "note": "no random direction reached the direction's KL: no rank"})
    return pd.DataFrame(rows)


def side_effect_kl(cfg: ReasoningDirectionConfig, model: nn.Module, tokenizer: Any, vector: SteeringVector,
                   projection: nn.Module | None = None) -> dict[float, float]:
    """KL per alpha, the target the random controls are matched to. Token mode: KL(unsteered || steered) per
    token of neutral text, read raw (`next_token_kl`), steering all positions of `cfg.layers`. Latent steering
    never touches ordinary tokens, so there it is `latent_kl` (the first answer token after the thoughts), and
    the summary's side effect stays the answer rate (well-formed answers) in the alpha table."""
    if cfg.mode == "latent":
        values = latent_kl(cfg, model, tokenizer, vector, cfg.coefficients, projection)
        return dict(zip(cfg.coefficients, values, strict=True))
    steering = Steering(vector, layers=cfg.layers, positions="all")
    values = next_token_kl(model, tokenizer, NEUTRAL_TEXTS, steering=steering, coefficients=cfg.coefficients,
                           batch_size=cfg.batch_size)
    return {alpha: float(v) for alpha, v in zip(cfg.coefficients, values, strict=True)}


def step_norms(vector: SteeringVector) -> pd.DataFrame:
    """Direction norm per layer (rows) and latent step (columns; one column in token mode)."""
    return pd.DataFrame({layer: (v.norm(dim=-1) if v.dim() == 2 else v.norm().unsqueeze(0)).tolist()
                         for layer, v in vector.vectors.items()}).T.rename_axis("layer")


def results(cfg: ReasoningDirectionConfig, vector: SteeringVector, parts: dict[str, list[int]],
            alphas: pd.DataFrame, moves: pd.DataFrame, randoms: pd.DataFrame, probe: pd.Series) -> dict[str, Any]:
    """results.json: parameters, the tables, and a summary that calls an effect real only when its test says so
    (`significant_alphas`, SIGNIFICANCE_RULE, with `comparisons`: the steered alphas tested), each change with its
    paired interval, and the suppression's rank among the KL-matched random directions with its floor."""
    steered = alphas[alphas.alpha != 0.0]
    base = alphas[alphas.alpha == 0.0].iloc[0]
    best = steered.loc[steered.accuracy.idxmax()]
    worst = steered.loc[steered.accuracy.idxmin()]
    side = "kl_neutral" if "kl_neutral" in alphas else "answer_rate"
    ranked = (randoms[(randoms.alpha == worst.alpha) & (randoms.direction == "direction") & randoms.p_rank.notna()]
              if "p_rank" in randoms else randoms.iloc[0:0])
    unmatched = int(((randoms.direction != "direction") & randoms.note.notna()).sum()) if "note" in randoms else 0
    summary = {
        "main_metric": "test accuracy, best steered alpha",
        "main": float(best.accuracy), "best_alpha": float(best.alpha), "best_p_mcnemar": float(best.p_mcnemar),
        "baseline": float(base.accuracy),
        "suppression_alpha": float(worst.alpha), "suppression_accuracy": float(worst.accuracy),
        "suppression_p_mcnemar": float(worst.p_mcnemar),
        "best_delta_points": float(best.delta_points), "best_delta_low": float(best.delta_low),
        "best_delta_high": float(best.delta_high),
        "suppression_delta_points": float(worst.delta_points), "suppression_delta_low": float(worst.delta_low),
        "suppression_delta_high": float(worst.delta_high),
        "suppression_p_vs_random": float(ranked.p_rank.iloc[0]) if len(ranked) else None,
        "suppression_p_floor": float(ranked.p_floor.iloc[0]) if len(ranked) else None,
        "suppression_n_random": int(ranked.n_random.iloc[0]) if len(ranked) else 0,
        "random_controls": ("KL-matched random directions (" + ("raw next-token KL on neutral text"
                            if cfg.mode == "token" else "latent_kl: first answer token after the thoughts") + ")"),
        "unmatched_random_controls": unmatched,
        "side_effect_metric": f"{side} at the best alpha" + (" (latent mode)" if side == "answer_rate" else ""),
        "side_effect": float(best[side]),
        "n_test": int(len(parts["test_correct"]) + len(parts["test_wrong"])),
        "n_train": int(len(parts["train_correct"]) + len(parts["train_wrong"])),
        "significant_alphas": [float(a) for a in alphas.alpha[alphas.significant]],
        "comparisons": int(len(steered)),
        "significance_rule": SIGNIFICANCE_RULE,
        "test_auc_at_steered_layers": {int(layer): float(probe[layer]) for layer in cfg.layers},
    }
    return {"parameters": cfg.as_dict(), "split_sizes": {k: len(v) for k, v in parts.items()},
            "direction_norms": step_norms(vector).to_dict(orient="index"), "test_auc": probe.to_dict(),
            "alpha_table": alphas.to_dict("records"),
            "transitions": moves.to_dict("records"), "random_control": randoms.to_dict("records"),
            "summary": summary}


# ----------------------------------------------------------------------------- figures


def alpha_accuracy_figure(alphas: list[dict], randoms: list[dict], title: str, path: Path | None = None) -> Any:
    """Test accuracy against alpha with bootstrap CIs, amplification (alpha >= 0) and suppression (alpha <= 0)
    panels; random directions at the same alphas (grey crosses, their mean a black bar) are the control."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    base = next(row["accuracy"] for row in alphas if row["alpha"] == 0.0)
    for axis, keep, name in ((axes[0], lambda a: a >= 0, "amplification"), (axes[1], lambda a: a <= 0, "suppression")):
        rows = [row for row in alphas if keep(row["alpha"])]
        x = [row["alpha"] for row in rows]
        y = [row["accuracy"] for row in rows]
        errors = [[row["accuracy"] - row["ci_low"] for row in rows], [row["ci_high"] - row["accuracy"] for row in rows]]
        axis.errorbar(x, y, yerr=errors, marker="o", capsize=3, label="direction (95% bootstrap CI)")
        for row in rows:
            if row.get("significant"):
                axis.annotate(f"p={row['p_mcnemar']:.3f}", (row["alpha"], row["accuracy"]), fontsize=7,
                              textcoords="offset points", xytext=(4, 6))
        points = [r for r in randoms if r["direction"].startswith("random_") and keep(r["alpha"])
                  and r.get("delta_points") is not None and r["delta_points"] == r["delta_points"]]
        means = [r for r in randoms if r["direction"] == "random mean" and keep(r["alpha"])]
        if points:
            axis.scatter([r["alpha"] for r in points], [base + r["delta_points"] / 100 for r in points], marker="x",
                         color="0.5", label="random directions")
            axis.scatter([r["alpha"] for r in means], [base + r["delta_points"] / 100 for r in means], marker="_",
                         s=300, color="k", label="random mean")
        axis.axhline(base, color="k", lw=0.8, ls=":", label="unsteered")
        axis.set(xlabel="alpha", title=name)
    axes[0].set_ylabel("test accuracy")
    return finish_figure(fig, tuple(axes), title, path)


def transition_figure(moves: list[dict], title: str, path: Path | None = None) -> Any:
    """Stacked bars per alpha: problems that stayed correct / became correct / became wrong / stayed wrong."""
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(8, 3.8))
    colours = {"stayed_correct": "C2", "became_correct": "C0", "became_wrong": "C3", "stayed_wrong": "0.7"}
    labels = [f"{row['alpha']:+g}" for row in moves]
    bottom = [0] * len(moves)
    for key, colour in colours.items():
        heights = [row[key] for row in moves]
        axis.bar(labels, heights, bottom=bottom, color=colour, label=key.replace("_", " "))
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    axis.set(xlabel="alpha", ylabel="test problems", title="vs unsteered (alpha 0)")
    return finish_figure(fig, (axis,), title, path)


def direction_heatmaps(norms: Any, first_dims: Any, dims_label: str, title: str, path: Path | None = None) -> Any:
    """Left: direction norm by layer (rows) and latent step (columns); right: the first dimensions of the
    direction at the steered layer(s) (rows: layers in token mode, latent steps in latent mode)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5), gridspec_kw={"width_ratios": [1, 3]})
    sns.heatmap(norms, ax=left, cmap="viridis", cbar_kws={"label": "norm"})
    left.set(xlabel="latent step" if norms.shape[1] > 1 else "", ylabel="layer", title="direction norm")
    sns.heatmap(first_dims, ax=right, cmap="RdBu_r", center=0.0)
    right.set(xlabel="dimension", ylabel=dims_label,
              title=f"first {first_dims.shape[1]} dimensions of the unit direction")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
