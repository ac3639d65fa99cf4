"""Journal 2026-12-06, "Corrections", second part: DeLoRA's reads / writes split over three adapter seeds (issue
"Corrections", requirement 5). The 2026-12-02 verdict "DeLoRA carries its contrast in its reads" (reads keep 0.79,
writes 0.28 against our 0.3 cut) rested on seed 0. Reads the `weight_ablation` runs (groups=[roles], one per adapter
seed, from one `weight_steering` run): per seed, each role crop's retained preference and score with their 95%
intervals over rows, and over seeds the mean with a t interval (2 degrees of freedom); our rules' and the seed's
rules' answers per run. Records which runs it read.

    .venv/bin/python out/journal/2026-12-06-corrections/delora_reads.py <ablation run folder> [...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from lib.io import write_json  # noqa: E402
from lib.runner import run_reference, script_record, tree_record  # noqa: E402

HERE = Path(__file__).parent
CROPS = ("full", "writes", "reads", "attention", "mlp", "attn_read", "mlp_read")
COLUMNS = ("retained_preference", "retained")


def main() -> None:
    tree = tree_record(ROOT)  # before this script writes anything into the tree
    rows, rules, read = [], [], []
    for folder in sys.argv[1:]:
        run = Path(folder)
        result = json.loads((run / "results.json").read_text())
        seed = result["parameters"]["seed"]
        table = pd.DataFrame(result["table"])
        for _, row in table.iterrows():
            if row["variant"] in CROPS or str(row["variant"]).startswith(tuple(f"{c}~" for c in CROPS)):
                rows.append({"seed": seed, "family": row["family"], "variant": row["variant"],
                             "norm_ratio": row["norm_ratio"]}
                            | {k: row.get(k) for c in COLUMNS for k in (c, f"{c}_low", f"{c}_high")})
        for column, found in result["seed_rules"].items():
            for rule in found:
                rules.append({"seed": seed, "by": "seed", "metric": column, "rule": rule["rule"],
                              "family": rule.get("family", "all"), "answer": rule["answer"]})
        for column, found in result["verdict"].items():
            for rule in found:
                if rule.get("rule") != "verdict":
                    rules.append({"seed": seed, "by": rule.get("by", "ours"), "metric": column, "rule": rule["rule"],
                                  "family": rule.get("family", "all"), "answer": rule.get("answer", rule.get("fired")),
                                  "text": rule.get("text", "")})
        read.append({"seed": seed, **run_reference(run)})
    per_seed = pd.DataFrame(rows).sort_values(["variant", "seed"])
    over = []
    for variant, group in per_seed.groupby("variant"):
        entry = {"variant": variant, "n_seeds": len(group)}
        for column in COLUMNS:
            values = group[column].astype(float)
            mean, half = values.mean(), stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / len(values) ** 0.5
            entry |= {column: mean, f"{column}_low": mean - half, f"{column}_high": mean + half,
                      f"{column}_seeds": " / ".join(f"{v:.3f}" for v in values)}
        over.append(entry)
    per_seed.to_csv(HERE / "delora_reads_seeds.csv", index=False)
    pd.DataFrame(over).to_csv(HERE / "delora_reads.csv", index=False)
    pd.DataFrame(rules).to_csv(HERE / "delora_rules.csv", index=False)
    write_json(HERE / "delora_reads_runs_read.json", script_record(tree, read))
    with pd.option_context("display.width", 250):
        print(pd.DataFrame(over).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
