"""Journal 2026-12-06, "Corrections", second part: the six adapter families on the two-choice honesty score at
matched KL (issue "Corrections", requirement 1: "families compared at matched KL"). Reads the `weight_steering`
runs' own tables (no scoring here): each run's `matched_at_kl.csv` (the trained difference and its KL-matched random
delta read where each curve reaches the run's KL budget, with the interval over items) and `seeds.csv` (KL and pmass
at c = +-1), one row per family, and records which runs it read.

    .venv/bin/python out/journal/2026-12-06-corrections/families.py <label>=<run folder> [...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from lib.io import write_json  # noqa: E402
from lib.runner import run_reference, script_record, tree_record  # noqa: E402

HERE = Path(__file__).parent


def main() -> None:
    tree = tree_record(ROOT)  # before this script writes anything into the tree
    rows, read = [], []
    for spec in sys.argv[1:]:
        label, folder = spec.split("=", 1)
        run = Path(folder)
        matched = pd.read_csv(run / "matched_at_kl.csv")
        seeds = pd.read_csv(run / "seeds.csv")
        for adapter in sorted(set(matched.adapter) - {"-"}):
            row = {"run": label, "adapter": adapter}
            for method in ("weight", "random_delta"):
                found = matched[(matched.method == method) & (matched.adapter == adapter)]
                if found.empty:
                    continue
                got = found.iloc[0]
                prefix = "" if method == "weight" else "random_"
                row |= {f"{prefix}{k}": got[k] for k in ("n_seeds", "max_kl_tested", "up_delta", "up_low", "up_high",
                                                          "up_kl", "down_delta", "down_low", "down_high", "down_kl")}
            for coeff in (-1.0, 1.0):
                at = seeds[(seeds.adapter == adapter) & (seeds.coeff == coeff)]
                sign = "+" if coeff > 0 else "-"
                if not at.empty:
                    row |= {f"kl{sign}1": at.iloc[0]["kl"], f"pmass{sign}1": at.iloc[0]["pmass"],
                            f"effect_mean{sign}1": at.iloc[0]["delta_mean"]}
            rows.append(row)
        read.append({"label": label, **run_reference(run)})
    table = pd.DataFrame(rows)
    table.to_csv(HERE / "families_at_kl.csv", index=False)
    print(table.round(3).to_string(index=False))
    write_json(HERE / "families_runs_read.json", script_record(tree, read))


if __name__ == "__main__":
    main()
