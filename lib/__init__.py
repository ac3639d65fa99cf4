"""steerlab: find directions that carry a behaviour and add them back, at chosen layers and strengths.

Core: models (loading, layer locator) -> hooks (record, steer) -> vectors (dataclass, builders)
-> extract (cached activations) -> generation / evals. Around it: data sets (data, mathdata), rewards
and pass@k, training (grpo), optimisation (optimize), one module of steps per experiment (contrastive,
math_steering, bo_steering), configs, plots and the papermill runner.
"""

from lib.export import export_folded_checkpoint, export_llamacpp, import_llamacpp
from lib.generation import Steering, generate, render_chat
from lib.hooks import group_weights, layer_groups, record, steer
from lib.models import EMBEDDED_DEFAULT, find_layers, load_model, tiny_model
from lib.vectors import SteeringVector, mean_difference, pca_direction, random_like
from lib.weights import WeightDelta, apply_delta, delta_from_merged, export_checkpoint

__all__ = [
    "EMBEDDED_DEFAULT",
    "Steering",
    "SteeringVector",
    "WeightDelta",
    "apply_delta",
    "delta_from_merged",
    "export_checkpoint",
    "export_folded_checkpoint",
    "export_llamacpp",
    "find_layers",
    "generate",
    "group_weights",
    "import_llamacpp",
    "layer_groups",
    "load_model",
    "mean_difference",
    "pca_direction",
    "random_like",
    "record",
    "render_chat",
    "steer",
    "tiny_model",
]
