"""Journal 2026-12-01, "Weight steering: is there a contrast to learn?", the follow-up: the persona contrast with the
held-out halves split by prompt (`measure_contrast` now does), against the same pairs split by pair as before.
Reads the persona replies the 2026-11-24 run generated with the notebook's default settings (24 prompts x 2
paraphrases per behaviour).

    .venv/bin/python out/journal/2026-12-01-contrast/grouped.py   # -> grouped.json beside this file (~2 min)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from lib.kits.adapters import SFTPair  # noqa: E402
from lib.kits.contrast import heldout_auc, reply_activations  # noqa: E402
from lib.models import load_model  # noqa: E402

RUN = ROOT / "out" / "journal" / "2026-11-24-weight-steering"
model, tokenizer = load_model("smollm2-135m")
report = {}
for behaviour in ("honesty", "sycophancy"):
    raw = json.loads((RUN / f"{behaviour}_persona_pairs.json").read_text())
    pairs = {side: [SFTPair(**p) for p in raw[side]] for side in ("positive", "negative")}
    acts = reply_activations(model, tokenizer, pairs, batch_size=16)
    prompts = [p.prompt for p in pairs["positive"]]
    report[behaviour] = {"n_pairs": len(prompts), "n_prompts": len(set(prompts))}
    for label, groups in (("by pair", None), ("by prompt", prompts)):
        per_seed = [heldout_auc(acts["positive"], acts["negative"], seed=s, groups=groups) for s in range(5)]
        report[behaviour][label] = {"best_auc": [round(r["best_auc"], 3) for r in per_seed],
                                    "best_layer": [r["best_layer"] for r in per_seed],
                                    "median_auc": [round(r["median_auc"], 3) for r in per_seed]}
        print(behaviour, label, report[behaviour][label], flush=True)
(Path(__file__).parent / "grouped.json").write_text(json.dumps(report, indent=1))
