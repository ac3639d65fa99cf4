"""Journal 2026-12-01: the full dW of every family and seed on both metrics, from every weight_ablation run folder
(its "full" record): the two-choice score swing and the held-out reply preference swing at c = 1, with their row /
pair SEs and the KL at +-1. Seeds 1-2 of LoRA and PiSSA (runs with groups=[controls]) give the preference's seed
spread, which the ablation itself (seed 0) does not have.

    .venv/bin/python out/journal/2026-12-01-ablation/preference.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from lib.experiments import weight_ablation as wa  # noqa: E402

HERE = Path(__file__).parent


def main() -> None:
    rows = []
    for folder in sorted((ROOT / "out" / "weight_ablation").iterdir()):
        if not (folder / "evaluations.json").exists():
            continue
        seed = json.loads((folder / "run.json").read_text())["parameters"]["seed"]
        for record in json.loads((folder / "evaluations.json").read_text())["variants"].values():
            if record["variant"] != "full":
                continue
            points = record["points"]
            rows.append({"family": record["family"], "seed": seed, "norm": record["norm"],
                         "score_swing": wa.swing(points, 1.0), "score_se": wa.row_swing_se(points, 1.0),
                         "preference_swing": wa.swing(points, 1.0, "preference"),
                         "preference_se": wa.row_swing_se(points, 1.0, "preference_rows"),
                         "kl+": points["1.0"]["kl"], "kl-": points["-1.0"]["kl"], "run": folder.name})
    table = pd.DataFrame(rows).drop_duplicates(["family", "seed"]).sort_values(["family", "seed"])
    table.to_csv(HERE / "preference_full.csv", index=False)
    spread = table.groupby("family").agg(n_seeds=("seed", "count"), preference_mean=("preference_swing", "mean"),
                                         preference_seed_std=("preference_swing", "std"),
                                         preference_pair_se=("preference_se", "mean"),
                                         score_mean=("score_swing", "mean"), score_seed_std=("score_swing", "std"))
    spread.to_csv(HERE / "preference_seeds.csv")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.drop(columns="run").round(3).to_string(index=False))
        print(spread.round(3).to_string())


if __name__ == "__main__":
    main()
