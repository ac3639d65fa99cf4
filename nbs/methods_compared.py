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
# # The methods compared on identical rows: one persona trait
#
# Prompting, activation addition along four estimators of a direction (mean difference, PCA, LDA, a logistic
# probe), weight steering (a LoRA difference), directional ablation (a suppression), conditional steering (CAST)
# and a monitor, each writing replies to the same held-out questions, scored by one likelihood judge, and compared
# where they change the model equally (KL on neutral text) with intervals, beside random and label-shuffled nulls.
# The steps and their papers: `lib/experiments/methods_compared.py`.

# %% tags=["parameters"]
model = "smollm2-135m"
dtype = "auto"
device_map = ""
attn_implementation = ""
trait = "pirate"
layer = 12
coefficients = [0.125, 0.25, 0.5]
estimators = ["mean_difference", "pca", "lda", "probe"]
weight_coefficients = [0.5, 1.0]
weight_steps = 4
weight_rank = 4
weight_learning_rate = 1e-3
gate_coefficient = 0.5
n_random = 1
n_shuffled = 1
kl_budgets = [0.05, 0.1]
n_train = 16
n_eval = 8
max_new_tokens = 24
n_boot = 1000
batch_size = 16
seed = 0
out_dir = ""

# %%
from functools import partial

import torch
from IPython.display import display

import lib
from lib.experiments import methods_compared as steps
from lib.experiments.methods_compared import MethodsComparedConfig
from lib.io import write_json
from lib.kits.data import NEUTRAL_TEXTS
from lib.kits.dose_response import residual_norms
from lib.kits.evaluation import (
    GeneratedText,
    ablated,
    compare,
    gated,
    on_grid,
    prompted,
    steered,
    unsteered,
    with_delta,
)
from lib.kits.gate_search import gate_scores, prompt_means, search_gate
from lib.kits.persona import GATE_PROMPTS, NEUTRAL_SYSTEM, TRAITS, persona_activations, trait_judge
from lib.kits.probes import direction_report
from lib.kits.text_scorers import projection_score
from lib.models import find_layers
from lib.vectors import mean_difference

cfg = MethodsComparedConfig.from_namespace(globals())
out = cfg.resolve_out_dir()
model, tokenizer = lib.load_model(cfg.model, **cfg.loading())
trait_system = TRAITS[cfg.trait][0]
all_layers = list(range(len(find_layers(model)[1])))

# %% [markdown]
# ## Directions: four estimators from the same activations, and the nulls
#
# The last prompt token under the trait's system prompt and under a neutral one, on the training questions; each
# estimator's direction on the held-out questions' activations gives its AUC per layer (the monitor before the reply).

# %%
train_trait, train_neutral = persona_activations(model, tokenizer, cfg.train_questions, trait_system,
                                                 layers=all_layers, batch_size=cfg.batch_size)
test_trait, test_neutral = persona_activations(model, tokenizer, cfg.eval_questions, trait_system,
                                               layers=all_layers, batch_size=cfg.batch_size)
report = direction_report(train_trait, train_neutral, test_trait, test_neutral, estimators=cfg.estimators)
display(report[report.layer == cfg.layer].round(3))
norm = residual_norms(model, tokenizer, NEUTRAL_TEXTS, [cfg.layer])[cfg.layer]
vectors = steps.estimator_vectors(train_trait, train_neutral, cfg.layer, cfg.estimators, norm)
nulls = {f"random {k}": v for k, v in enumerate(steps.random_vectors(vectors["mean_difference"], cfg.n_random,
                                                                       cfg.seed))}
nulls |= {f"shuffled {k}": v for k, v in enumerate(steps.shuffled_vectors(train_trait, train_neutral, cfg.layer,
                                                                           cfg.n_shuffled, norm, cfg.seed))}

# %% [markdown]
# ## Weight steering and the gate
#
# Two LoRA adapters on the model's own replies (under the trait prompt, under the neutral one; trained without
# either) give the weight delta. The gate's condition direction is the mean difference of food questions and other
# questions (the prompt's mean hidden state); its layer and threshold are searched for the best F1 on labelled
# prompts, at or below the steering layer.

# %%
delta = None
if cfg.weight_steps:
    delta, weight_record = steps.persona_delta(model, tokenizer, cfg.train_questions, trait_system, NEUTRAL_SYSTEM,
                                               cfg)
    display(weight_record)
gate_prompts = GATE_PROMPTS[True] + GATE_PROMPTS[False]
gate_labels = [True] * len(GATE_PROMPTS[True]) + [False] * len(GATE_PROMPTS[False])
gate_layers = list(range(1, cfg.layer + 1))
food_acts, other_acts = (prompt_means(model, tokenizer, GATE_PROMPTS[side], gate_layers, cfg.batch_size)
                          for side in (True, False))
gate_search = search_gate(model, tokenizer, gate_prompts, gate_labels, mean_difference(food_acts, other_acts),
                          layers=gate_layers, batch_size=cfg.batch_size)
gate = gate_search.gate
display(gate_search.table.head(3))

# %% [markdown]
# ## Every method on the same rows

# %%
grid = [0.0, *cfg.coefficients]
conditions = [unsteered(), prompted("system prompt", system=trait_system)]
conditions += on_grid([steered(name, vector, 1.0) for name, vector in {**vectors, **nulls}.items()], grid)
if delta is not None:
    conditions += on_grid([with_delta("weight (LoRA difference)", delta, 1.0)], [0.0, *cfg.weight_coefficients])
direction = vectors["mean_difference"]
ablations = ["system prompt + ablation"] + [f"system prompt + random ablation {k}" for k in range(cfg.n_random)]
conditions.append(steps.conditions_with_system(ablated("ablation", direction), trait_system, ablations[0]))
conditions += [steps.conditions_with_system(ablated("ablation", vector), trait_system, name)
               for name, vector in zip(ablations[1:], steps.random_vectors(direction, cfg.n_random, cfg.seed),
                                       strict=True)]
gated_name = f"gated on food x{cfg.gate_coefficient:g}"
conditions.append(gated(gated_name, direction, cfg.gate_coefficient, gate))
judge = partial(trait_judge, model, tokenizer, cfg.trait)
scorer = GeneratedText(cfg.eval_questions, {"trait": judge}, main="trait", max_new_tokens=cfg.max_new_tokens)
table = compare(model, tokenizer, conditions, scorer, baseline="unsteered", n_boot=cfg.n_boot,
                batch_size=cfg.batch_size, seed=cfg.seed)
display(table[table.metric == "trait"].round(3))

# %% [markdown]
# ## At matched KL, the suppression, the gate and the monitor

# %%
matched = steps.matched_table(table, cfg.kl_budgets)
display(matched.round(3))
suppression = steps.suppression_table(table, "trait", "system prompt", ablations, cfg.n_boot, cfg.seed)
display(suppression.round(3))
gate_rows = steps.gate_table(table, "trait", "unsteered", gated_name, f"mean_difference@{cfg.gate_coefficient:g}",
                             cfg.food_rows, cfg.n_boot, cfg.seed)
display(gate_rows.round(3))
eval_gate = gate_scores(model, tokenizer, cfg.eval_questions, {gate.layer: gate.direction}, batch_size=cfg.batch_size)
gate_accuracy = float((gate.decide(torch.from_numpy(eval_gate[gate.layer])).numpy() == cfg.food_rows).mean())
replies = scorer.texts["system prompt"] + scorer.texts["unsteered"]
reply_prompts = cfg.eval_questions * 2
projections = {name: projection_score(model, tokenizer, reply_prompts, replies, vector, cfg.layer).tolist()
               for name, vector in {**vectors, **nulls}.items()}
monitor = steps.reply_monitor(projections, [True] * cfg.n_eval + [False] * cfg.n_eval)
display(monitor.round(3))

# %%
steps.frontier_curves_figure(table, points=["system prompt", gated_name], path=out / "frontier.png")
result_summary = steps.summary(table, matched, cfg.kl_budgets[0])
write_json(out / "results.json", {
    "parameters": cfg.as_dict(), "table": table.to_dict(orient="records"), "matched": matched.to_dict(orient="records"),
    "suppression": suppression.to_dict(orient="records"), "gate": {
        "search_best": gate_search.best, "eval_accuracy": gate_accuracy, "rows": gate_rows.to_dict(orient="records")},
    "monitor": monitor.to_dict(orient="records"), "direction_report": report.to_dict(orient="records"),
    "weight": weight_record if delta is not None else None, "replies": scorer.texts, "scores": table.attrs["scores"],
    "residual_norm": norm,
    "summary": result_summary})
result_summary
