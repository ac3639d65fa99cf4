"""Journal 2026-12-02, "Weight steering, third pass": the ablation variants' own seed spread. Seed 0's variants come
from the main LoRA/PiSSA run, seeds 1 and 2 from `./just run weight_ablation 'families=[lora,pissa]'
'groups=[roles,basis]' 'ks=[8]' seed=<s>`; every run folder's evaluations.json is read (a variant scored in two runs of
one seed must agree). Per family and variant: retained (score and preference) per seed, mean and seed std; then
each cross-family gap (LoRA - PiSSA) beside the two families' seed stds.

    .venv/bin/python out/journal/2026-12-01-ablation/variant_seeds.py
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(Path(__file__).parent))  # tables.py puts the repository on the path
from tables import load  # noqa: E402

HERE = Path(__file__).parent
FAMILIES = ("lora", "pissa")
COLUMNS = ("retained", "retained_preference", "retained_preference_of_writes")


def read_runs() -> pd.DataFrame:
    frames = []
    for folder in sorted((ROOT / "out" / "weight_ablation").iterdir()):
        if not (folder / "evaluations.json").exists():
            continue
        _, cfg, _, _, table = load(folder)  # the journal's ablation tables read a run the same way
        table = table.assign(seed=cfg.seed, run=folder.name)
        table = table[table.family.isin(FAMILIES)].copy()
        for family in FAMILIES:  # f in the other family's own basis: one name for both, to compare them
            other = next(g for g in FAMILIES if g != family)
            rows = table.family == family
            table.loc[rows, "variant"] = table.loc[rows, "variant"].str.replace(f"in_{other}", "in_other",
                                                                                   regex=False)
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    table = read_runs()
    table = table[~table.group.isin(["sufficiency"]) & ~table.variant.str.endswith("@norm")]
    n_seeds = table.seed.nunique()
    seeds = table.groupby(["family", "variant"]).seed.nunique()
    common = seeds[seeds == n_seeds].index  # variants scored at every seed
    table = table.set_index(["family", "variant"]).loc[common].reset_index()
    twice = table.groupby(["family", "variant", "seed"]).retained_preference.agg(["min", "max"])
    if ((twice["max"] - twice["min"]).abs() > 1e-9).any():
        raise ValueError("a variant scored twice at one seed differs between runs")
    table = table.drop_duplicates(["family", "variant", "seed"]).sort_values("seed")
    spread = table.groupby(["family", "variant"]).agg(
        group=("group", "first"), norm_ratio=("norm_ratio", "mean"),
        **{f"{c}_{s}": (c, lambda x, s=s: x.iloc[s]) for c in ("retained_preference",) for s in range(n_seeds)},
        **{f"{c}_mean": (c, "mean") for c in COLUMNS}, **{f"{c}_std": (c, "std") for c in COLUMNS})
    spread = spread.reset_index()
    spread.to_csv(HERE / "variant_seeds.csv", index=False)
    by = spread.set_index(["variant", "family"])
    gaps = []
    for variant in sorted(spread.variant.unique()):
        if not all((variant, f) in by.index for f in FAMILIES):
            continue
        a, b = by.loc[(variant, FAMILIES[0])], by.loc[(variant, FAMILIES[1])]
        for column in COLUMNS:
            if math.isnan(a[f"{column}_mean"]) or math.isnan(b[f"{column}_mean"]):
                continue
            gap = a[f"{column}_mean"] - b[f"{column}_mean"]
            noise = math.hypot(a[f"{column}_std"], b[f"{column}_std"])
            gaps.append({"variant": variant, "metric": column, "lora": a[f"{column}_mean"],
                         "pissa": b[f"{column}_mean"], "gap": gap, "lora_std": a[f"{column}_std"],
                         "pissa_std": b[f"{column}_std"], "gap_over_seed_noise": gap / noise if noise else math.nan})
    gaps_frame = pd.DataFrame(gaps)
    gaps_frame.to_csv(HERE / "variant_seed_gaps.csv", index=False)
    with pd.option_context("display.width", 220, "display.max_columns", 30):
        print(spread.sort_values(["variant", "family"]).round(3).to_string(index=False))
        print(gaps_frame[gaps_frame.metric != "retained"].round(3).to_string(index=False))


if __name__ == "__main__":
    main()
