"""Journal 2026-12-06, "Corrections": the geometric shares of the retrained deltas beside their chance values
(issue "Corrections", requirement 4): DoRA's magnitude / direction split and the base weights' top-8 / top-32
singular subspaces, each as a share of ||dW|| beside the same share for random deltas of dW's per-tensor norms
(`weight_ablation.shares_table`). The 2026-12-01 deltas were not kept; these are the same recipe retrained.

    .venv/bin/python out/journal/2026-12-06-corrections/geometry.py <label>=<run folder> [...] \
        [--seeds S ...] [--name N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from lib.experiments.weight_ablation import shares_table  # noqa: E402
from lib.io import write_json  # noqa: E402
from lib.kits.weight_runs import saved_deltas  # noqa: E402
from lib.models import load_model  # noqa: E402
from lib.runner import run_reference, script_record, tree_record  # noqa: E402
from lib.weights import WeightDelta  # noqa: E402

HERE = Path(__file__).parent


def main() -> None:
    tree = tree_record(ROOT)  # before this script writes anything into the tree
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", help="label=run folder")
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="only these adapter seeds (default all)")
    parser.add_argument("--name", default="", help="suffix of the output files (geometry_<name>.csv, ...)")
    args = parser.parse_args()
    suffix = f"_{args.name}" if args.name else ""
    model, _ = load_model()
    tables, read = [], []
    for spec in args.runs:
        label, folder = spec.split("=", 1)
        run = Path(folder)
        found = saved_deltas(run, "honesty")
        deltas = {f"{label} {family} s{seed}": WeightDelta.load(path) for family, seeds in found.items()
                  for seed, path in sorted(seeds.items()) if args.seeds is None or seed in args.seeds}
        table = shares_table(deltas, model, ranks=[8, 32])
        tables.append(table)
        read.append({"label": label, "seeds": args.seeds, **run_reference(run)})
        print(table.round(4).to_string(index=False), flush=True)
        pd.concat(tables).to_csv(HERE / f"geometry{suffix}.csv", index=False)  # after each run: kept if interrupted
    write_json(HERE / f"geometry{suffix}_runs_read.json", script_record(tree, read))


if __name__ == "__main__":
    main()
