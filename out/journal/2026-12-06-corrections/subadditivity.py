"""Journal 2026-12-07, "Corrections", third part: is the reads + writes sub-additivity a saturation effect? (issue
"Corrections", point 5: "Everything is at coefficient 1 (KL about 0.3): the sub-additivity ... may be the saturating
regime".) Reads `weight_ablation` runs (groups=[roles]) of one dW at different coefficients and, per run, at its
largest coefficient c, the sum of two complementary crops' held-out preference swings over the full dW's swing:
(swing(reads) + swing(writes)) / swing(full), and the same for attention + MLP, each with a paired bootstrap
interval over the reply pairs (`lib.kits.uncertainty.ratio_of_means`). Additive parts give 1; overlapping ones more.
Records which runs it read.

    .venv/bin/python out/journal/2026-12-06-corrections/subadditivity.py <ablation run folder> [...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from lib.experiments.weight_ablation import row_swings  # noqa: E402
from lib.io import write_json  # noqa: E402
from lib.kits.uncertainty import ratio_of_means  # noqa: E402
from lib.runner import run_reference, script_record, tree_record  # noqa: E402

HERE = Path(__file__).parent
PAIRS = "preference_rows"  # the held-out reply pairs' preference, per pair
SPLITS = {"reads + writes": ("reads", "writes"), "attention + mlp": ("attention", "mlp")}


def main() -> None:
    tree = tree_record(ROOT)  # before this script writes anything into the tree
    rows, read = [], []
    for folder in sys.argv[1:]:
        run = Path(folder)
        result = json.loads((run / "results.json").read_text())
        store = json.loads((run / "evaluations.json").read_text())
        c = max(float(x) for x in result["parameters"]["coefficients"])
        for family in result["parameters"]["families"]:
            variants = {name.split("/", 1)[1]: record for name, record in store["variants"].items()
                        if name.startswith(f"{family}/")}
            swings = {name: row_swings(record["points"], c, PAIRS) for name, record in variants.items()
                      if PAIRS in record["points"][repr(c)]}
            full = swings["full"]
            for label, parts in SPLITS.items():
                estimate = ratio_of_means(sum(swings[part] for part in parts), full, seed=0)
                rows.append({"family": family, "seed": result["parameters"]["seed"], "coefficient": c,
                             "kl+": variants["full"]["points"][repr(c)]["kl"], "split": label,
                             "sum_over_full": estimate.value, "low": estimate.low, "high": estimate.high,
                             "full_swing": float(full.mean()), "pairs": len(full)}
                            | {f"{part}_over_full": float(swings[part].mean() / full.mean()) for part in parts})
        read.append(run_reference(run))
    pd.DataFrame(rows).to_csv(HERE / "subadditivity.csv", index=False)
    write_json(HERE / "subadditivity_runs_read.json", script_record(tree, read))


if __name__ == "__main__":
    main()
