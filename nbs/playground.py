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
# # Steering playground
#
# What does this vector do at this layer and coefficient? The widget below generates one prompt unsteered
# (coefficient 0) and steered, side by side in one batch, with the KL the same steering costs on neutral text.
# Change any control and it recomputes: the coefficient slider, several coefficients at once ("0, 2, 4, 8", still
# one batch), the layers (those the vector has), the positions steered (all, prompt, generated), greedy or sampled
# decoding, the number of new tokens, or another vector (a run folder or vector file, then "load").
#
# It opens on the contrastive demo's vector (math vs howto, `./just run contrastive_steering`); when that run has
# not been made, this notebook builds the same vector first. The configured prompt and coefficients are computed
# once without widgets and written to `results.json`, so a headless run (`./just run playground coefficient=4`)
# and a sweep record the same table; the widget opens on it.

# %% tags=["parameters"]
model = "smollm2-135m"
dtype = "auto"  # "auto": bfloat16 on a GPU, float32 on CPU
device_map = ""  # "": one device; "auto": spread over the GPUs
attn_implementation = ""
vector = "out/contrastive_steering/default/vector"  # a run folder, a vector file, or "" to build the demo's here
layers = [10]
coefficient = 2.0
coefficients = [4.0, 8.0]
positions = "all"
prompt = "What should I cook for dinner tonight?"
temperature = 0.0
max_new_tokens = 32
seed = 0
out_dir = ""

# %%
from IPython.display import HTML, display

import lib
from lib.experiments import playground as experiment
from lib.experiments.playground import PlaygroundConfig
from lib.io import write_json
from lib.kits.playground import Playground, load_vector, playground_outputs

cfg = PlaygroundConfig.from_namespace(globals())
out = cfg.resolve_out_dir()
llm, tokenizer = lib.load_model(cfg.model, **cfg.loading())
print(f"out: {out}")

# %% [markdown]
# ## The vector

# %%
if cfg.builds_vector:
    from lib.experiments import contrastive_steering

    demo = contrastive_steering.ContrastiveConfig(model=cfg.model, **cfg.loading())
    why = "vector=''" if not cfg.vector else f"{cfg.vector} does not exist yet (./just run contrastive_steering)"
    print(f"note: {why}; building the contrastive demo's vector here the way that notebook does "
          f"({demo.target} vs {demo.baseline}, {demo.n_samples} prompts each, every layer) -> {out / 'vector'}")
    vector = contrastive_steering.build_vector(llm, tokenizer, demo, contrastive_steering.load_data(demo))
    vector.save(out / "vector")
else:
    vector = load_vector(cfg.vector)
vector

# %% [markdown]
# ## The configured table
#
# The parameters above, computed once without widgets: this is what the run records (not the widget's later
# state), and what the executed notebook keeps, since a saved notebook does not keep live widgets.

# %%
outputs = playground_outputs(llm, tokenizer, cfg.prompt, vector, cfg.layers, cfg.run_coefficients,
                             positions=cfg.positions, temperature=cfg.temperature,
                             max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
display(HTML(outputs.to_html()))

# %% [markdown]
# ## The playground
#
# Live in JupyterLab: it opens on the table above (not computed again), and every change recomputes; the
# status line says "running..." meanwhile and shows input errors.

# %%
playground = Playground(llm, tokenizer, vector, prompt=cfg.prompt, layers=cfg.layers, coefficient=cfg.coefficient,
                        coefficients=cfg.coefficients, positions=cfg.positions, temperature=cfg.temperature,
                        max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, run=False)
playground.show(outputs)
display(playground)

# %% [markdown]
# ## Summary

# %%
results = experiment.assemble_results(cfg, vector, outputs)
write_json(out / "results.json", results)
{**{k: results["metadata"][k] for k in ("layers", "coefficient", "vector_norms")}, **results["summary"]}
