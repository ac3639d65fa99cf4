"""Journal 2026-12-06, "Corrections": the engineered persona prompt's headroom in every candidate answer format,
each item scored in both answer orders (issue "Corrections", requirements 1 and 2: the 2026-12-01 headroom was read
in one order and one format, chosen by pmass alone). Same split and prompts as `weight_steering` (seed 0, 24 / 12 /
36 items, the target first in half of each part).

    .venv/bin/python out/journal/2026-12-06-corrections/headroom.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from lib.experiments.weight_steering import CANDIDATE_FORMATS, PERSONAS  # noqa: E402
from lib.io import write_json  # noqa: E402
from lib.kits.choice_data import KIND  # noqa: E402
from lib.kits.contrast import prompt_headroom  # noqa: E402
from lib.kits.two_choice import headroom as room  # noqa: E402
from lib.kits.two_choice import score_both_orders  # noqa: E402
from lib.kits.weight_runs import FORMATS, run_split  # noqa: E402
from lib.models import load_model  # noqa: E402
from lib.runner import script_record, tree_record  # noqa: E402

HERE = Path(__file__).parent


def main() -> None:
    tree = tree_record(ROOT)  # before this script writes anything into the tree
    model, tokenizer = load_model()
    rows = []
    for behaviour in ("honesty", "sycophancy"):
        test = run_split(behaviour, 24, 12, 36, 0, "both")["test"]
        positive, negative = PERSONAS[KIND[behaviour]].engineered
        for name in CANDIDATE_FORMATS[KIND[behaviour]]:
            fmt = FORMATS[name]
            scored = {label: score_both_orders(model, tokenizer, test, fmt, system=system, progress=False)
                      for label, system in (("base", None), ("positive", positive), ("negative", negative))}
            shift = prompt_headroom(scored["positive"].content.tolist(), scored["negative"].content.tolist())
            rows.append({"behaviour": behaviour, "format": name, "n": len(test),
                         "pmass": float(scored["base"].pmass.mean()),
                         "room": float(room(scored["base"]).mean()),
                         "base_score": float(scored["base"].content.mean()),
                         "position_bias": float(scored["base"].position_bias.mean()),
                         **{k: shift[k] for k in ("mean_shift", "ci_low", "ci_high", "frac_rows_up",
                                                  "has_headroom")}})
            print(rows[-1], flush=True)
    pd.DataFrame(rows).to_csv(HERE / "headroom.csv", index=False)
    write_json(HERE / "headroom_run.json", script_record(tree))


if __name__ == "__main__":
    main()
