"""Journal 2026-12-01, "Which part of the trained dW carries it?": the ablation's tables, figures and verdict, built
with the notebook's own functions from the run folder's evaluations.json (also from an unfinished run: every
variant scored so far).

    .venv/bin/python out/journal/2026-12-01-ablation/tables.py [run folder]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib
import pandas as pd

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from lib.kits import delta_ablation as da  # noqa: E402  (lib.delta_ablation until 2026-12-06)
from lib.experiments import weight_ablation as wa  # noqa: E402

HERE = Path(__file__).parent
RUN = ROOT / "out" / "weight_ablation" / "families=lora,pissa_groups=roles,basis,thirds,controls,svd,dora,base-svd"


def load(run: Path) -> tuple[dict, wa.WeightAblationConfig, dict, wa.Evaluations, pd.DataFrame]:
    """A run folder's run.json record, config, family sources, evaluations and retained table (also for a run still
    going: every variant scored so far)."""
    record = json.loads((run / "run.json").read_text())
    params = {k: v for k, v in record["parameters"].items() if k in wa.WeightAblationConfig.field_names()}
    cfg = wa.WeightAblationConfig(**params)
    sources = wa.read_sources(cfg)
    owners = wa.family_sources(cfg, sources)
    evals = wa.eval_set(sources[0], cfg.behaviour)
    store = wa.Evaluations(run / "evaluations.json", da.eval_grid(evals.rows, cfg.coefficients))
    return record, cfg, owners, store, wa.retained_table(store, owners, cfg)


def verdicts(table: pd.DataFrame, owners: dict, cfg: wa.WeightAblationConfig) -> tuple[pd.DataFrame, dict]:
    """The full dW's effects (with the source runs' seed noise) and the verdict rules on both metrics."""
    noise = {family: wa.seed_noise(owners[family], family, max(cfg.coefficients)) for family in owners}
    effects = wa.full_effects(table, noise)
    rules = {column: wa.verdict(table, effects, cfg, column) for column in ("retained", "retained_preference")
             if column in table}
    return effects, rules


def print_rules(rules: dict) -> None:
    for column, fired in rules.items():
        print(f"--- {column}")
        for rule in fired:
            print(("FIRED  " if rule["fired"] else "       ") + f"{rule['rule']}: {rule['text']}")


def main(run: Path = RUN) -> None:
    record, cfg, owners, store, table = load(run)
    effects, rules = verdicts(table, owners, cfg)
    table.to_csv(HERE / "retained.csv", index=False)
    effects.to_csv(HERE / "full_effects.csv", index=False)
    (HERE / "verdict.json").write_text(json.dumps(rules, indent=1, default=str))
    wa.retained_figure(table, "retained", HERE / "retained_score.png")
    if "retained_preference" in table:
        wa.retained_figure(table, "retained_preference", HERE / "retained_preference.png")
    print(f"{len(store.records)} variants scored; status {record.get('status')}")
    print(effects.round(3).to_string(index=False))
    columns = ["family", "group", "variant", "norm_ratio", "swing", "swing_se", "retained", "preference_swing",
               "retained_preference", "kl+", "kl-", "pmass+", "pmass-"]
    print(table[[c for c in columns if c in table]].round(3).to_string(index=False))
    print_rules(rules)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else RUN)
