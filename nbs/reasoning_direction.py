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
# # A "good reasoning" direction from solved vs failed problems, with random controls
#
# After the seed report "GPT-2 Activation Steering Experiment". The model answers `n_problems` problems;
# solved and failed ones are balanced (n = the smaller count) and split `train_fraction` / rest per class;
# `direction = mean(acts | solved) - mean(acts | failed)` at every layer of the training half; the test
# problems are answered again with `alpha * direction` added at `layers` for every alpha, and with
# `n_random` random directions at `random_alphas` (the control that tells a direction from noise), each rescaled
# so that it changes the model as much as the direction does at that alpha: KL-matched within 5% (raw next-token
# KL on neutral text in token mode; in latent mode the KL of the first answer token after the steered thoughts,
# neutral texts as prompts). Where no scale reaches the direction's KL, the table says so instead of a number.
#
# - `mode="token"`: activations of the last prompt token (`read="prompt_last"`) or the mean over the model's
#   own completion (`"completion_mean"`); steering at `steer_positions` ("all", "prompt", "generated").
# - `mode="latent"`: `latent_steps` continuous thoughts (Coconut/CODI loop, `lib.latent`) between `<think>` and
#   `</think>`; the direction is `[k, hidden]` per layer and steering acts per step (`step_alphas`: one weight
#   per step). `projection` is a `torch.save`d hidden-to-embedding module (a CODI checkpoint's); empty feeds the
#   hidden state back as is. On a model not trained for latent reasoning the thoughts are untrained.
#
# Reference (GPT-2 CODI, GSM8K, 86 test problems): best amplification +2.3 points (alpha +1), suppression
# -12.8 points (alpha -3), random directions -6.7 points on average.
#
# Statistics (the evaluation kit, docs/evaluation.md): accuracy with a bootstrap CI over problems; the change vs
# alpha 0 with a paired bootstrap interval over test problems beside the exact McNemar p (sign test on the problems
# that changed); `significant` is ours (McNemar p < 0.05 per alpha, not adjusted: the summary gives the number of
# alphas tested as `comparisons`); the direction's rank among the KL-matched random directions at the same alpha
# with its floor 1/(n_random + 1), the smallest p that many controls can give (19 are needed to reach 0.05).

# %% tags=["parameters"]
model = "smollm2-135m"
dtype = "auto"  # "auto": bfloat16 on a GPU, float32 on CPU
device_map = ""  # "": one device; "auto": spread over the GPUs
attn_implementation = ""
mode = "token"
source = "arithmetic"
n_problems = 24
train_fraction = 0.8
read = "prompt_last"
layers = [15]
steer_positions = "all"
latent_steps = 4
projection = ""
step_alphas = []
alphas = [-3.0, 0.0, 3.0]
n_random = 2
random_alphas = [-3.0, 3.0]
max_new_tokens = 24
n_boot = 2000
batch_size = 16
seed = 0
out_dir = ""

# %%
import pandas as pd

from lib.experiments import reasoning_direction as rd
from lib.experiments.reasoning_direction import (
                   ReasoningDirectionConfig,
                   alpha_accuracy_figure,
                   direction_heatmaps,
                   transition_figure,
)
from lib.io import write_json

cfg = ReasoningDirectionConfig.from_namespace(globals())
out = cfg.resolve_out_dir()
model_, tokenizer, problems, projection_ = rd.load(cfg)
print(f"out: {out}; {len(problems)} {cfg.source} problems, mode={cfg.mode}")

# %% [markdown]
# ## Baseline answers, balance and split

# %%
rows = rd.baseline(cfg, model_, tokenizer, problems, out, projection_)
parts = rd.split(cfg, rows, problems, out)
print(f"solved {sum(r['correct'] for r in rows)} / {len(rows)}; answered {sum(r['answered'] for r in rows)}")
pd.Series({k: len(v) for k, v in parts.items()}, name="problems").to_frame().T

# %% [markdown]
# ## Direction: mean(solved) - mean(failed) on the training half

# %%
vector = rd.direction(cfg, model_, tokenizer, problems, rows, parts, out, projection_)
norms = rd.step_norms(vector)
direction_heatmaps(norms, rd.first_dims(cfg, vector), "latent step" if cfg.mode == "latent" else "layer",
                   f"{cfg.mode} direction (solved - failed), steered at layers {cfg.layers}",
                   out / "direction_heatmaps.png")
norms.round(2).T

# %% [markdown]
# Does the direction *read* success on the unseen test problems? AUC of their projection on it, per layer
# (0.5 is chance). Reading is not causing: the steering below tests whether adding it changes answers.

# %%
probe = rd.heldout_auc(cfg, model_, tokenizer, problems, rows, parts, vector, projection_)
probe.round(3).to_frame().T

# %% [markdown]
# ## Steering the test problems: the direction at every alpha, KL-matched random directions at `random_alphas`

# %%
test = [problems[i] for i in parts["test_correct"] + parts["test_wrong"]]
kl = rd.side_effect_kl(cfg, model_, tokenizer, vector, projection_)
controls = rd.controls(cfg, model_, tokenizer, vector, kl, projection_)
evaluations = rd.evaluate(cfg, model_, tokenizer, test, controls.vectors, out, projection_)
alphas_table = rd.alpha_table(cfg, evaluations, kl)
alphas_table.round(3)

# %%
moves = rd.transition_table(evaluations)
transition_figure(moves.to_dict("records"), f"{cfg.mode} mode: per-problem transitions", out / "transitions.png")
moves

# %%
randoms = rd.random_table(evaluations, controls.matches)
alpha_accuracy_figure(alphas_table.to_dict("records"), randoms.to_dict("records"),
                      f"{cfg.mode} mode, {len(test)} test problems, layers {cfg.layers}", out / "accuracy_vs_alpha.png")
randoms.round(3)

# %% [markdown]
# ## Summary

# %%
results = rd.results(cfg, vector, parts, alphas_table, moves, randoms, probe)
write_json(out / "results.json", results)
alphas_table.to_csv(out / "alpha_table.csv", index=False)
randoms.to_csv(out / "random_control.csv", index=False)
pd.Series(results["summary"]).to_frame("value")
