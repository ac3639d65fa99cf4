"""steerlab: find directions that carry a behaviour and add them back, at chosen layers and strengths.

The map of the house (docs/architecture.md has the rules and a worked example):

- Core, at the bottom; knows no experiment:
  io (paths, atomic writes) -> models (loading, the one layer locator and layer indices, fingerprints) ->
  interventions (what acts on a model now) -> positions (prompt, generated and padding tokens of a forward call) ->
  gates (conditional steering: `Gate`) -> hooks (`record`, `steer`, `Steering`) ->
  vectors (`SteeringVector` and its `apply`, builders, layer groups) ->
  generation (chat rendering,
  the one batched-forward loop `run_batches`, `generate`) -> extract (cached activations), evals (log-probs,
  KL), choice_evals, latent (continuous-thought loop), weights (`WeightDelta`, `apply_delta`), ablation
  (`ablate`, `orthogonalize`: a direction out of the residual stream, by hooks or as weights), export
  (llama.cpp control vectors, folded checkpoints), model_diff, memory (the plan checked before a run loads).
- Kits, importable on their own: data and choice_data (offline data sets), contrast (is there a contrast to learn;
  prompt headroom), mathdata, matheval, rewards, passk, stats, optimize and optimize_plots (Bayesian
  optimisation), adapters (PEFT), plots (shared figure parts), weight_runs (a weight-steering run folder, as its
  writer and readers share it), delta_ablation (variants of a trained weight delta).
- Running: config (the base of every experiment config and the checks before launch), runner (papermill runs
  and sweeps), executors (local processes, Ray).
- Experiments, at the top: `lib/experiments/<notebook>.py` for each `nbs/<notebook>.py`: its config, steps and
  figures.

The strength of an intervention is called `coefficient` everywhere in lib and is passed when applying.
"""

from lib.ablation import ablate, orthogonalize, untie_embeddings
from lib.evals import continuation_logprobs, effect_curve, model_kl, next_token_kl
from lib.export import export_folded_checkpoint, export_llamacpp, import_llamacpp
from lib.extract import extract
from lib.gates import Gate
from lib.generation import generate, render_chat
from lib.hooks import Steering, record, steer
from lib.models import EMBEDDED_DEFAULT, find_layers, load_model, tiny_model
from lib.vectors import SteeringVector, group_weights, layer_groups, mean_difference, pca_direction, random_like
from lib.weights import WeightDelta, apply_delta, delta_from_merged, export_checkpoint

__all__ = [
    "EMBEDDED_DEFAULT",
    "Gate",
    "Steering",
    "SteeringVector",
    "WeightDelta",
    "ablate",
    "apply_delta",
    "continuation_logprobs",
    "delta_from_merged",
    "effect_curve",
    "export_checkpoint",
    "export_folded_checkpoint",
    "export_llamacpp",
    "extract",
    "find_layers",
    "generate",
    "group_weights",
    "import_llamacpp",
    "layer_groups",
    "load_model",
    "mean_difference",
    "model_kl",
    "next_token_kl",
    "orthogonalize",
    "pca_direction",
    "random_like",
    "record",
    "render_chat",
    "steer",
    "tiny_model",
    "untie_embeddings",
]
