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
# # Steering vectors from base vs GRPO-finetuned, and their evaluation (the "Day 4" experiment)
#
# The same training prompts go through the base and the finetuned model (from `grpo_math`);
# `vector[layer] = mean(finetuned) - mean(base)` of block outputs, by default averaged over the tokens
# of a completion the finetuned model wrote (`reduction="completion_mean"`; `"prompt_last"` and
# `"all_mean"` are the alternatives). Then base + `w * vector` at every layer is scored on the same eval
# set, generation settings and scoring as training, for every `w` in `weights` in one batched pass,
# beside the base and the finetuned model. A random direction scaled to the vector's KL at each weight is
# the control (the evaluation kit, docs/evaluation.md), every pass@1 change has a paired interval over
# problems, and the KL from the base on neutral text tells "steering helped" from "steering broke the model".
#
# Reference (Qwen2.5-7B-Instruct, 20 MATH problems, pass@1): base 33.75%, GRPO 56%, steered in between.
# Use the same `source`, `train_size`, `eval_size` and `seed` as the training run.

# %% tags=["parameters"]
model = "smollm2-135m"
dtype = "auto"  # "auto": bfloat16 on a GPU, float32 on CPU
device_map = ""  # "": one device; "auto": spread over the GPUs
attn_implementation = ""
finetuned = "out/grpo_math/default/final_model"
source = "arithmetic"
train_size = 16
eval_size = 8
max_examples = 16
reduction = "completion_mean"
weights = [0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35]
num_completions_eval = 1
eval_temperature = 0.0
max_completion_length = 32
one_shot = True
random_control = True
batch_size = 16
seed = 0
out_dir = ""

# %%
import pandas as pd

from lib.experiments import math_steering
from lib.experiments.math_steering import MathSteeringConfig, weight_curve_figure
from lib.io import write_json

cfg = MathSteeringConfig.from_namespace(globals())
out = cfg.resolve_out_dir()
train, eval_problems = math_steering.problems(cfg)
print(f"out: {out}; vectors from {min(cfg.max_examples, len(train))} training prompts, eval on {len(eval_problems)}")

# %% [markdown]
# ## The finetuned model, then the base (never both in memory)

# %%
finetuned = math_steering.finetuned_pass(cfg, train, eval_problems)
base, tokenizer = math_steering.load_base(cfg)

# %% [markdown]
# ## Vectors

# %%
vector = math_steering.build_vector(cfg, base, tokenizer, train, finetuned)
vector.save(out / "vector")
vector.to_plain_json(out / "steering_vectors.json")
pd.Series(vector.norms(), name="norm").to_frame().T.round(2)

# %% [markdown]
# ## Evaluation: base, finetuned, base + w * vector

# %%
evaluation = math_steering.evaluate(cfg, base, tokenizer, eval_problems, vector, finetuned)
math_steering.table(evaluation, cfg.weights)

# %%
weight_curve_figure(cfg.weights, evaluation["steered"], evaluation["base"], evaluation["finetuned"],
                    f"{cfg.source}: base + w * (finetuned - base)", out / "weight_curve.png",
                    random=evaluation.get("random"))

# %% [markdown]
# ## Summary

# %%
results = math_steering.results(cfg, vector, evaluation)
write_json(out / "results.json", results)
pd.Series(results["summary"]).to_frame("value")
