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
# # A persona trait three ways: a vector, a system prompt and KL-matched random directions
#
# The evaluation kit's worked example (docs/evaluation.md). A persona vector (Chen et al. 2025: the mean
# difference of the residual stream under a system prompt that plays the trait and a neutral one) is added at
# coefficients relative to the layer's median residual norm, beside the same persona as a system prompt. Every
# condition writes replies to the same held-out questions; a likelihood judge scores them (log p(reply | "answer
# as the trait") - log p(reply | the question), per token), next to degenerate-text flags, the plain model's NLL of
# the replies, the KL on neutral text and, for each vector condition, random directions matched to its KL.

# %% tags=["parameters"]
model = "smollm2-135m"
dtype = "auto"
device_map = ""
attn_implementation = ""
trait = "pirate"
layer = 12
relative_coefficients = [0.25, 0.5]
n_train = 8
n_eval = 8
max_new_tokens = 32
n_random = 2
n_boot = 2000
batch_size = 16
seed = 0
out_dir = ""

# %%
from functools import partial

from IPython.display import display

import lib
from lib.experiments.persona_compare import PersonaCompareConfig, summary
from lib.io import write_json
from lib.kits.data import NEUTRAL_TEXTS
from lib.kits.dose_response import relative_coefficient, residual_norms
from lib.kits.evaluation import GeneratedText, compare, frontier_figure, prompted, steered, unsteered
from lib.kits.persona import TRAITS, persona_vector, trait_judge

cfg = PersonaCompareConfig.from_namespace(globals())
out = cfg.resolve_out_dir()
model, tokenizer = lib.load_model(cfg.model, **cfg.loading())

# %% [markdown]
# ## The vector, and the conditions on identical rows

# %%
vector = persona_vector(model, tokenizer, cfg.train_questions, TRAITS[cfg.trait][0], layers=[cfg.layer])
norms = residual_norms(model, tokenizer, NEUTRAL_TEXTS, [cfg.layer])
conditions = [unsteered()]
conditions += [steered(f"vector x{r}", vector, relative_coefficient(vector, norms, r))
               for r in cfg.relative_coefficients]
conditions += [prompted("system prompt", system=TRAITS[cfg.trait][0])]
judge = partial(trait_judge, model, tokenizer, cfg.trait)
scorer = GeneratedText(cfg.eval_questions, {"trait": judge}, main="trait", max_new_tokens=cfg.max_new_tokens)
table = compare(model, tokenizer, conditions, scorer, baseline="unsteered", n_random=cfg.n_random,
                n_boot=cfg.n_boot, batch_size=cfg.batch_size, seed=cfg.seed)
display(table.round(4))

# %% [markdown]
# ## What each condition buys for what it costs, and a few replies

# %%
frontier_figure(table, path=out / "frontier.png")
display({name: texts[:2] for name, texts in scorer.texts.items()})
write_json(out / "results.json", {"parameters": cfg.as_dict(), "table": table.to_dict(orient="records"),
                                  "replies": scorer.texts, "vector_norm": vector.norms(),
                                  "summary": summary(table)})
summary(table)
