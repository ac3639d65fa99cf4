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
# # Which part of a trained dW carries the behaviour?
#
# Weight steering (Fierro & Roger 2025) steers with `coeff * dW`, `dW = dW_pos - dW_neg` from two trained adapters
# (`nbs/weight_steering.py`). This notebook starts from the deltas such a run saved (`save_deltas=True`; it never
# builds a delta from activations) and scores *variants* of each adapter family's dW on the run's own test rows and
# coefficients:
#
# - **roles**: residual writes (attention output, MLP down), reads, attention, MLP, q/k/v only, up/gate only;
# - **layers**: early / mid / late thirds, each block alone, every block but one;
# - **svd**: each tensor's own singular directions, top 25% / middle 50% / bottom 25% and energy groups (checked to
#   sum back to dW);
# - **base_svd**: dW projected on the base weight's top singular subspaces (does dW ride pretrained directions?);
# - **dora**: the change of each output row's norm (DoRA's magnitude) vs of its direction;
# - **ia3**: IA3's attention gates vs its MLP gates (the IA3 family only; its dW is checked to be gate-shaped);
# - **basis**: the families' residual-output deltas stacked per tensor, top-K shared directions kept or dropped, with
#   each family's own top-K, every other family's own top-K (`in_<family>K`: a basis that never saw this family)
#   and a rank-matched random basis as nulls;
# - **controls**: zero and norm-matched random deltas; crops that retain get `@norm` (rescaled to the full norm) and
#   `~rand` (random with the crop's norms on the same tensors) controls, on the metrics whose full swing is
#   identifiable (a ratio to a swing inside noise is noise).
#
# `retained = swing(variant) / swing(full dW)` with `swing = score(+c) - score(-c)` at the largest coefficient, beside
# pmass and KL on neutral text. For honesty a second metric, `preference` (held-out written honest minus deceptive
# reply log-prob), reads the contrast the adapters learned even where the two-choice eval has no headroom. The
# seed's decision rules give the verdict at the end.

# %% tags=["parameters"]
model = "smollm2-135m"
dtype = "auto"  # "auto": bfloat16 on a GPU, float32 on CPU
device_map = ""  # "": one device; "auto": spread over the GPUs
attn_implementation = ""
deltas_from = ["adapters=lora,pissa,delora_behaviours=honesty_contrast_source=written_save_deltas=True"]
behaviour = "honesty"
# deltas_from: weight_steering run folders, or run slugs under out/weight_steering/
families = []  # []: every family the runs saved
seed = 0  # the adapter seed whose dW is ablated; the others give the full dW's noise
coefficients = [-1.0, 1.0]  # inside the KL budget; at 4 the model breaks (KL ~3 nats/token)
groups = ["roles", "thirds", "layer_only", "layer_out", "svd", "base_svd", "dora", "ia3", "basis", "controls"]
ks = [8, 32, 64]
base_ranks = [8, 32]
n_random = 2
sufficient = 0.7
removes = 0.3
batch_size = 16
out_dir = ""

# %%
import pandas as pd
import torch
from IPython.display import display

from lib.experiments import weight_ablation as wa
from lib.experiments.weight_ablation import WeightAblationConfig
from lib.io import write_json
from lib.models import load_model

cfg = WeightAblationConfig.from_namespace(globals())
out = cfg.resolve_out_dir()
torch.manual_seed(cfg.seed)
sources = wa.read_sources(cfg)  # checked before the model loads
base, tokenizer = load_model(cfg.model, **cfg.loading())
print(f"out: {out}\nfamilies: {list(wa.family_sources(cfg, sources))} from {[str(s.folder) for s in sources]}")

# %% [markdown]
# ## Score every variant
# Resumable: each scored variant is kept in `evaluations.json` and skipped when re-run. The full dW re-scored here
# must reproduce the run's saved per-row scores (`reproduced_max_row_gap` in the summary).

# %%
ablation = wa.run_ablation(cfg, base, tokenizer, out)
table = ablation.table(cfg)
table.to_csv(out / "retained.csv", index=False)

# %% [markdown]
# ## The full dW: is there an effect to ablate?
# The swing of the full dW here, its per-row standard error, and the spread of the swing over the source run's
# seeds. A retention ratio only means something when the full swing stands out of both.

# %%
effects = wa.full_effects(table, ablation.noise)
effects.to_csv(out / "full_effects.csv", index=False)
effects.round(3)

# %% [markdown]
# ## Retention per variant
# `norm_ratio` = ||variant|| / ||full dW||; `pmass+` / `kl+` at the largest coefficient. The single-layer variants
# have a section of their own below.

# %%
columns = [c for c in ("family", "group", "variant", "norm_ratio", "swing", "swing_se", "retained",
                       "retained_preference", "pmass+", "pmass-", "kl+", "kl-") if c in table]
single_layer = table.kind.isin(wa.SINGLE_LAYER_KINDS)
display(table[~single_layer][columns].round(3))
figure = wa.retained_figure(table, "retained", out / "retained_score.png")
if "retained_preference" in table:
    figure = wa.retained_figure(table, "retained_preference", out / "retained_preference.png")

# %% [markdown]
# ## Single layers
# Each block alone (`L<i>_only`) and every block but one (`L<i>_out`). The verdict reads the first as one more
# partition (localised / distributed) and the second as "necessary layer": does leaving one block out remove
# the effect?

# %%
if single_layer.any():
    figure = wa.layer_figure(table, "retained_preference" if "retained_preference" in table else "retained",
                             out / "layers.png")

# %% [markdown]
# ## Does dW ride the base weights' top singular directions?
# Energy-weighted share of ||dW||^2 in the top-k x top-k block of `U0^T dW V0`, against an isotropic random delta.

# %%
lens = wa.lens_table(ablation.deltas, base, cfg.base_ranks)
lens.to_csv(out / "base_lens.csv", index=False)
display(lens.round(4))

# %% [markdown]
# Each geometric share of ||dW|| beside its chance value: the same share for random deltas with dW's per-tensor
# norms (DoRA's magnitude part of a random delta holds about 1/sqrt(fan-in) of it).

# %%
shares = wa.shares_table(ablation.deltas, base, cfg.base_ranks)
shares.to_csv(out / "norm_shares.csv", index=False)
shares.round(4)

# %% [markdown]
# ## Verdict: the seed's decision rules as written
# Each rule answers holds / fails / inconclusive from the 95% intervals (or "cannot run", with the reason) and lists
# every retention it read; "behavior" is the full dW's effect. Quoted in `wa.seed_rules`.

# %%
by_seed = {column: wa.seed_rules(table, effects, column) for column in ("retained", "retained_preference")
           if column in table}
for column, found in by_seed.items():
    print(f"--- {column}")
    display(wa.seed_rules_table(found))

# %% [markdown]
# ## Our rules (labelled ours; thresholds `sufficient`, `removes`)

# %%
rules = {column: wa.verdict(table, effects, cfg, column) for column in ("retained", "retained_preference")
         if column in table}
for column, fired in rules.items():
    print(f"--- {column}")
    for rule in fired:
        print(("FIRED  " if rule["fired"] else "       ") + f"{rule['rule']}: {rule['text']}")

# %% [markdown]
# ## Summary

# %%
results = wa.results(cfg, ablation, table, effects, rules, by_seed)
write_json(out / "results.json", results)
pd.Series(results["summary"]).to_frame("value")
