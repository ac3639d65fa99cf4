"""Journal 2026-12-06, "Corrections": the seed's decision rules as written (`weight_ablation.seed_rules`) applied to
the committed ablation runs' per-row scores, on both metrics, from their 95% intervals (issue "Corrections",
requirement 3). Reads only committed files: each folder's evaluations.json and the run.json beside it.

    .venv/bin/python out/journal/2026-12-06-corrections/seed_rules.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from lib.experiments import weight_ablation as wa  # noqa: E402
from lib.io import write_json  # noqa: E402
from lib.kits import delta_ablation as da  # noqa: E402
from lib.runner import script_record, tree_record  # noqa: E402

HERE = Path(__file__).parent
JOURNAL = ROOT / "out" / "journal"
RUNS = {  # label: (folder with evaluations.json, folder with the run's run.json)
    "lora,pissa (2026-12-01)": (JOURNAL / "2026-12-01-ablation", JOURNAL / "2026-12-01-ablation"),
    "dora,ia3 (2026-12-01)": (JOURNAL / "2026-12-01-ablation" / "dora_ia3", JOURNAL / "2026-12-01-ablation" /
                              "dora_ia3"),
}


def table_of(folder: Path, record_folder: Path) -> tuple[pd.DataFrame, dict]:
    record = json.loads((record_folder / "run.json").read_text())
    params = {k: v for k, v in record["parameters"].items() if k in wa.WeightAblationConfig.field_names()}
    cfg = wa.WeightAblationConfig(**params)
    data = json.loads((folder / "evaluations.json").read_text())
    store = wa.Evaluations(folder / "evaluations.json", da.EvalGrid.from_dict(data["grid"]))
    owners = {r["family"]: None for r in store.records.values()}
    return wa.retained_table(store, owners, cfg), record


def main() -> None:
    tree = tree_record(ROOT)  # before this script writes anything into the tree
    rows, read = [], []
    for label, (folder, record_folder) in RUNS.items():
        table, record = table_of(folder, record_folder)
        saved = pd.read_csv(folder / "full_effects.csv")  # the seeds' noise came from the source runs (not here)
        effects = wa.full_effects(table, {})
        for column in ("retained", "retained_preference"):
            if column not in table:
                continue
            if column == "retained":  # identifiable as the journal judged it, with the seeds' std
                effects = effects.drop(columns="identifiable").merge(saved[["family", "identifiable"]], on="family")
            found = wa.seed_rules_table(wa.seed_rules(table, effects, column))
            found.insert(0, "metric", "two-choice score" if column == "retained" else "written-reply preference")
            found.insert(0, "run", label)
            rows.append(found)
        read.append({"label": label, "evaluations": str(folder.relative_to(ROOT) / "evaluations.json"),
                     "run_json": str(record_folder.relative_to(ROOT) / "run.json"),
                     "commit": record.get("git_commit") or record.get("commit")})
    out = pd.concat(rows, ignore_index=True)
    out.to_csv(HERE / "seed_rules.csv", index=False)
    write_json(HERE / "seed_rules_runs_read.json", script_record(tree, read))
    with pd.option_context("display.width", 250, "display.max_colwidth", 160):
        print(out.to_string(index=False))


if __name__ == "__main__":
    main()
