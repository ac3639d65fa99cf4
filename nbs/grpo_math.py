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
# # GRPO on math (the "Day 4" training)
#
# TRL's `GRPOTrainer` with the Dr. GRPO loss, rewards for a correct answer (math-verify equivalence)
# and for the `<think>`/`<answer>` format, a one-shot demonstration in the prompt. The eval set is
# fixed by `source`, `eval_size` and `seed`, and is the same one `math_steering` scores.
#
# The defaults are the quick preset (a couple of minutes on CPU). The long preset in the journal:
# `./just run grpo_math num_train_iters=60 train_size=128 eval_size=64 num_chains=8 eval_every=20 save_every=10
# max_completion_length=64` (about 30-40 min on 2 cores). A killed run resumes from its last checkpoint
# when run again with the same parameters.
#
# **At the seed's scale** (Qwen2.5-7B-Instruct on one 80 GB GPU): `use_lora=True gradient_checkpointing=True`
# with `dtype="auto"` (bf16); `./just check grpo_math model=Qwen/Qwen2.5-7B-Instruct use_lora=True ...` prints the
# memory plan first. **vLLM** generation (TRL): `use_vllm=True` with `vllm_mode="colocate"` (vLLM shares the
# training GPU) or `vllm_mode="server"` (start `trl vllm-serve --model <model>` on another GPU first).

# %% tags=["parameters"]
model = "smollm2-135m"
dtype = "auto"  # "auto": bfloat16 on a GPU, float32 on CPU
device_map = ""  # "": one device; "auto": spread over the GPUs
attn_implementation = ""
source = "arithmetic"
train_size = 16
eval_size = 8
num_train_iters = 2
eval_every = 2
save_every = 1
num_chains = 4
prompts_per_step = 2
num_completions_eval = 1
eval_temperature = 0.0
max_completion_length = 32
train_temperature = 1.0
learning_rate = 1e-05
scale_rewards = "group"
use_lora = False
lora_r = 16
one_shot = True
use_vllm = False
vllm_mode = "colocate"
gradient_checkpointing = False
bf16 = True
batch_size = 16
seed = 0
out_dir = ""

# %%
import json

import pandas as pd

from lib.experiments.grpo_math import GRPOMathConfig, grpo_results, train_grpo, training_curve_figure
from lib.io import write_json
from lib.kits.mathdata import train_eval_split

cfg = GRPOMathConfig.from_namespace(globals())
out = cfg.resolve_out_dir()
train, eval_problems = train_eval_split(cfg.source, cfg.train_size, cfg.eval_size, cfg.seed)
print(f"out: {out}; {len(train)} train and {len(eval_problems)} eval problems from {cfg.source!r}")

# %%
final_model = train_grpo(cfg, out, train, eval_problems)

# %% [markdown]
# ## Training curve and evaluations

# %%
run_log = json.loads((out / "run_log.json").read_text())
evals = json.loads((out / "eval_summary.json").read_text())
training_curve_figure(run_log, evals, f"GRPO on {cfg.source}, {cfg.model}", out / "training_curve.png")
pd.DataFrame([{"step": e["step"], **{f"pass@{k}": v for k, v in e["pass_at"].items()},
               "ci_low": e["pass1_ci"][0], "ci_high": e["pass1_ci"][1]} for e in evals]).set_index("step")

# %%
pd.DataFrame(run_log).set_index("step").drop(columns=["sample_completions"]).round(3).tail(10)

# %% [markdown]
# ## Summary

# %%
results = grpo_results(cfg, final_model, run_log, evals)
write_json(out / "results.json", results)
pd.Series(results["summary"]).to_frame("value")
