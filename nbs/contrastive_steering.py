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
# # Contrastive steering between two data sets
#
# Seed: "Chunky Tulu Contrastive Steering". Activations at the last prompt token (chat template
# applied) of a **target** and a **baseline** subset give `vector = mean(target) - mean(baseline)`.
# We add `scale * vector` at one layer and look at (1) side-by-side generations and (2) a number a
# sweep can plot: the log-probability gap between held-out target and baseline replies against
# scale, beside its cost, the KL from the unsteered next-token distribution on neutral text, with
# random directions matched to the vector's KL at each scale as the control (the evaluation kit,
# docs/evaluation.md). With `curve_prompts="neutral"` every reply follows
# the same neutral prompts (does steering make the target *style* more likely anywhere?); with
# `"own"` each reply follows its own prompt.
#
# Subset keys: `lib.kits.data.OFFLINE_SUBSETS` (work offline) and `lib.kits.data.TULU_SUBSETS` ("0".."18",
# need the hub).

# %% tags=["parameters"]
model = "smollm2-135m"
dtype = "auto"  # "auto": bfloat16 on a GPU, float32 on CPU
device_map = ""  # "": one device; "auto": spread over the GPUs
attn_implementation = ""
target = "math"
baseline = "howto"
layer = 10
scale = 2.0
n_samples = 32
n_eval = 16
include_response = False
inference_set = ""
inference_n = 5
max_tokens = 48
temperature = 0.0
curve_scales = [0.0, 1.0, 2.0, 4.0, 8.0]
curve_prompts = "neutral"
random_control = True
n_random = 1  # KL-matched random directions per scale (the rank p-value's floor is 1 / (n_random + 1))
batch_size = 16
seed = 0
out_dir = ""

# %%
import pandas as pd
from IPython.display import display

import lib
from lib.experiments import contrastive_steering
from lib.experiments.contrastive_steering import ContrastiveConfig, effect_curve_figure
from lib.io import write_json

cfg = ContrastiveConfig.from_namespace(globals())
out = cfg.resolve_out_dir()
llm, tokenizer = lib.load_model(cfg.model, **cfg.loading())
print(f"out: {out}")

# %% [markdown]
# ## Data and vector

# %%
data = contrastive_steering.load_data(cfg)
vector = contrastive_steering.build_vector(llm, tokenizer, cfg, data)
vector.save(out / "vector")
vector.select([cfg.layer]).to_plain_json(out / "steering_vectors.json")
pd.Series(vector.norms(), name="norm").to_frame().T.round(1)

# %% [markdown]
# ## Generations with and without the vector

# %%
generations = contrastive_steering.side_by_side(llm, tokenizer, cfg, vector, data.inference_prompts)
with pd.option_context("display.max_colwidth", 300):
    display(pd.DataFrame(generations).set_index("prompt_index").rename(columns={"baseline": "unsteered"}))

# %% [markdown]
# ## Effect and side effect against scale

# %%
curves = contrastive_steering.measure_curves(llm, tokenizer, cfg, vector, data)
title = f"{cfg.target} vs {cfg.baseline}, layer {cfg.layer}, {cfg.model}"
effect_curve_figure(curves, title, out / "effect_curve.png")
pd.DataFrame({name: pd.Series(c).explode() for name, c in curves["steering"].items()}).set_index("scale")

# %% [markdown]
# ## Summary

# %%
results = contrastive_steering.assemble_results(cfg, vector, generations, curves, len(data.inference_prompts))
write_json(out / "results.json", results)
summary = {**{k: results["metadata"][k] for k in ("layer", "scale", "vector_norm", "effective_magnitude")},
           **results["summary"]}
pd.Series(summary).to_frame("value")
