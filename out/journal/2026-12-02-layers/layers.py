"""Journal 2026-12-02, "Weight steering, third pass", single layers: each block of the LoRA seed-0 dW alone
(`L<i>_only`) and every block but one (`L<i>_out`), from
`./just run weight_ablation 'families=[lora]' 'groups=[layer_only,layer_out]'`, read with the notebook's own
functions (tables.py `load`). Writes layers.csv (one row per block), sums.csv (additivity of the single layers),
verdict.json (the seed's rules, with the single-layer ones) and layers.png.

    .venv/bin/python out/journal/2026-12-02-layers/layers.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "out" / "journal" / "2026-12-01-ablation"))  # tables.py puts the repo on the path
from tables import load, print_rules, verdicts  # noqa: E402

from lib.experiments import weight_ablation as wa  # noqa: E402

HERE = Path(__file__).parent
RUN = ROOT / "out" / "weight_ablation" / "families=lora_groups=layer-only,layer-out"
THIRDS = ROOT / "out" / "journal" / "2026-12-01-ablation" / "retained.csv"  # the main run's early/mid/late
COLUMNS = ("retained_preference", "retained", "norm_ratio", "kl+", "pmass+")


def paired_se(store, family: str, variant: str, minus_full: bool, c: float) -> float:
    """SE over the held-out pairs of the variant's preference swing (minus the full dW's, pair by pair, for
    leave-one-out), in units of the full swing: the noise of one retention, paired on the same replies."""
    def rows(name: str) -> np.ndarray:
        points = store.records[f"{family}/{name}"]["points"]
        return np.array(points[str(c)]["preference_rows"]) - np.array(points[str(-c)]["preference_rows"])

    full = rows("full")
    diff = rows(variant) - (full if minus_full else 0.0)
    return float(diff.std(ddof=1) / np.sqrt(len(diff)) / full.mean())


def main(run: Path = RUN) -> None:
    record, cfg, owners, store, table = load(run)
    layers = table[table.variant.str.fullmatch(r"L\d+_(only|out)")].copy()
    layers["block"] = layers.variant.str.extract(r"L(\d+)_")[0].astype(int)
    layers["kind"] = layers.variant.str.extract(r"_(only|out)$")[0]
    wide = layers.pivot_table(index="block", columns="kind", values=list(COLUMNS))
    wide.columns = [f"{kind}_{column}" for column, kind in wide.columns]
    c = max(cfg.coefficients)
    for kind in ("only", "out"):
        wide[f"{kind}_preference_paired_se"] = [paired_se(store, "lora", f"L{i}_{kind}", kind == "out", c)
                                                for i in wide.index]  # index: block
    wide = wide[sorted(wide.columns, key=lambda c: (not c.startswith("only"), c))].reset_index()
    wide.round(4).to_csv(HERE / "layers.csv", index=False)
    thirds = pd.read_csv(THIRDS)
    thirds = thirds[(thirds.family == "lora") & thirds.variant.isin(["early", "mid", "late"])]
    n = len(wide)
    sums = pd.DataFrame([
        {"what": f"sum of the {n} L<i>_only", "retained_preference": wide.only_retained_preference.sum()},
        {"what": f"sum of the {n} removals 1 - L<i>_out",
         "retained_preference": (1 - wide.out_retained_preference).sum()},
        {"what": "largest L<i>_only", "retained_preference": wide.only_retained_preference.max()},
        {"what": "smallest L<i>_out", "retained_preference": wide.out_retained_preference.min()},
        *({"what": f"{v} third (main run)", "retained_preference": r}
          for v, r in zip(thirds.variant, thirds.retained_preference, strict=True)),
    ])
    sums.round(4).to_csv(HERE / "sums.csv", index=False)
    effects, rules = verdicts(table, owners, cfg)
    (HERE / "verdict.json").write_text(json.dumps(rules, indent=1, default=str))
    effects.to_csv(HERE / "full_effects.csv", index=False)
    wa.layer_figure(table, "retained_preference", HERE / "layers.png")
    print(f"{len(store.records)} variants; status {record.get('status')}; {record.get('seconds', '?')} s")
    print(effects.round(3).to_string(index=False))
    print(wide.round(3).to_string(index=False))
    print(sums.round(3).to_string(index=False))
    print_rules(rules)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else RUN)
