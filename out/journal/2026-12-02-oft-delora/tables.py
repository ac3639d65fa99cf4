"""Journal 2026-12-02, "Weight steering, third pass": the dW ablation of OFT and DeLoRA (lambda 1), honesty seed 0,
from `./just run weight_ablation 'deltas_from=[<the DeLoRA lambda-1 run>, <the DoRA/OFT/IA3 run>]'
'families=[oft,delora]' 'groups=[roles,thirds,svd,base_svd,basis,controls]' 'ks=[8]' 'base_ranks=[8]' n_random=1`,
read with the notebook's own functions (the ablation entry's tables.py `load`). Writes retained.csv,
full_effects.csv, verdict.json, retained_preference.png and copies the run's base_lens.csv.

    .venv/bin/python out/journal/2026-12-02-oft-delora/tables.py
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "out" / "journal" / "2026-12-01-ablation"))  # tables.py puts the repo on the path
from tables import load, print_rules, verdicts  # noqa: E402

from lib.experiments import weight_ablation as wa  # noqa: E402

HERE = Path(__file__).parent
RUN = next((ROOT / "out" / "weight_ablation").glob("base_ranks=8_deltas_from=adapters-delora-*"), None)
COLUMNS = ["family", "group", "variant", "norm_ratio", "swing", "swing_se", "retained", "preference_swing",
           "retained_preference", "retained_preference_of_writes", "kl+", "kl-", "pmass+", "pmass-"]


def main(run: Path | None = RUN) -> None:
    if run is None:
        raise FileNotFoundError("no OFT/DeLoRA ablation run in out/weight_ablation: run the docstring command")
    record, cfg, owners, store, table = load(run)
    effects, rules = verdicts(table, owners, cfg)
    table[[c for c in COLUMNS if c in table]].round(4).to_csv(HERE / "retained.csv", index=False)
    effects.round(4).to_csv(HERE / "full_effects.csv", index=False)
    (HERE / "verdict.json").write_text(json.dumps(rules, indent=1, default=str))
    if "retained_preference" in table:
        wa.retained_figure(table, "retained_preference", HERE / "retained_preference.png")
    if (run / "base_lens.csv").exists():
        shutil.copy(run / "base_lens.csv", HERE / "base_lens.csv")
    print(f"{len(store.records)} variants scored; status {record.get('status')}")
    print(effects.round(3).to_string(index=False))
    print(table[[c for c in COLUMNS if c in table]].round(3).to_string(index=False))
    print_rules(rules)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else RUN)
