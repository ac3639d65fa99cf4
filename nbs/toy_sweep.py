# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Toy sweep: check an executor or a cluster in seconds
#
# Contrastive steering in miniature, with no language model: a random 4-layer linear residual stream
# (numpy), "target" inputs that differ from "baseline" inputs along a hidden direction, the vector
# `mean(target) - mean(baseline)` read at `layer`, and `scale * vector` added there. The behaviour is
# the mean sigmoid of a readout direction at the last layer; the side effect is how far the final
# state moves off that readout. Use it to check that `just sweep toy_sweep layer=0,1,2 scale=1,2
# --executor ray` reaches your cluster and brings every run's files back, before spending GPU hours.
# `work` adds CPU-bound matrix products (for benchmarks), `sleep_seconds` idle time, and `fail_scale`
# a deliberate error at that scale (to see how a failed run is reported).

# %% tags=["parameters"]
layer = 1
scale = 1.0
n_samples = 64
seed = 0
work = 0
sleep_seconds = 0.0
fail_scale = None
out_dir = ""

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_limits

from lib.experiments.toy_sweep import ToySweepConfig
from lib.io import write_json

cfg = ToySweepConfig.from_namespace(globals())
out = cfg.resolve_out_dir()
if cfg.fail_scale is not None and cfg.scale == cfg.fail_scale:
    raise ValueError(f"deliberate failure at scale={cfg.scale} (fail_scale={cfg.fail_scale})")

# %%
rng = np.random.default_rng(cfg.seed)
dim, n_layers = 32, 4
weights = [rng.normal(0, 0.3 / np.sqrt(dim), (dim, dim)) for _ in range(n_layers)]
hidden_direction = rng.normal(size=dim)
readout = hidden_direction / np.linalg.norm(hidden_direction) + rng.normal(0, 0.1, dim)  # the behaviour's direction
readout /= np.linalg.norm(readout)


def forward(x: np.ndarray, add: np.ndarray | None = None, at: int = 0) -> list[np.ndarray]:
    """Residual stream states after each layer; `add` joins the stream after layer `at`."""
    states = []
    for index, weight in enumerate(weights):
        x = x + np.tanh(x @ weight)
        if add is not None and index == at:
            x = x + add
        states.append(x)
    return states


target = rng.normal(size=(cfg.n_samples, dim)) + hidden_direction
baseline = rng.normal(size=(cfg.n_samples, dim))
neutral = rng.normal(size=(cfg.n_samples, dim))
vector = forward(target)[cfg.layer].mean(0) - forward(baseline)[cfg.layer].mean(0)

unsteered = forward(neutral)[-1]
steered = forward(neutral, cfg.scale * vector, cfg.layer)[-1]


def behaviour(states: np.ndarray) -> float:
    return float(np.mean(1 / (1 + np.exp(-states @ readout))))


drift = (steered - unsteered) - np.outer((steered - unsteered) @ readout, readout)
summary = {"main_metric": "readout", "main": behaviour(steered), "baseline": behaviour(unsteered),
           "side_effect_metric": "off_readout_drift", "side_effect": float(np.mean(np.sum(drift**2, axis=1)))}
summary["delta"] = summary["main"] - summary["baseline"]
summary

# %% [markdown]
# ## Optional cost: CPU-bound work and idle time (benchmarks and fault tests)

# %%
start = time.perf_counter()
with threadpool_limits(1):
    matrix = rng.normal(size=(256, 256)) / 16
    product = np.eye(256)
    for _ in range(cfg.work):
        product = np.tanh(product @ matrix)
time.sleep(cfg.sleep_seconds)
cost = {"work": cfg.work, "work_seconds": time.perf_counter() - start}
cost

# %% [markdown]
# ## Effect curve and results

# %%
scales = np.linspace(0, max(abs(cfg.scale), 1.0) * 2, 9)
curve = [behaviour(forward(neutral, s * vector, cfg.layer)[-1]) for s in scales]
fig, axis = plt.subplots(figsize=(5, 3.2))
axis.plot(scales, curve, marker="o")
axis.axvline(cfg.scale, color="grey", linestyle="--", label=f"scale={cfg.scale}")
axis.set(xlabel="scale", ylabel="readout (behaviour)", title=f"toy steering at layer {cfg.layer}")
axis.legend()
fig.tight_layout()
fig.savefig(out / "effect_curve.png", dpi=100)
write_json(out / "results.json", {"summary": summary, "curve": {"scales": scales.tolist(), "readout": curve},
                                  "metadata": {"layer": cfg.layer, "scale": cfg.scale, "vector_norm":
                                               float(np.linalg.norm(vector)), "seed": cfg.seed}})
summary
