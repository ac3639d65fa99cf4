"""Journal 2026-12-01 (weight steering, second pass): the labelled sycophancy contrast, halves by pair (as the first
contrast table measured it, 0.63) against halves by prompt (as `measure_contrast` does since), over five split seeds.
Reads the pairs the sycophancy run wrote to its folder.

    .venv/bin/python out/journal/2026-12-01-contrast/labelled_sycophancy.py   # -> labelled_sycophancy.json (~1 min)
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from lib.kits.adapters import SFTPair  # noqa: E402
from lib.kits.contrast import heldout_auc, reply_activations  # noqa: E402
from lib.models import load_model  # noqa: E402

RUN = next((ROOT / "out" / "weight_steering").glob("adapters=lora,pissa,delora_behaviours=sycophancy*"))
raw = json.loads((RUN / "sycophancy_labelled_pairs.json").read_text())
pairs = {side: [SFTPair(**p) for p in raw[side]] for side in ("positive", "negative")}
model, tokenizer = load_model("smollm2-135m")
acts = reply_activations(model, tokenizer, pairs, batch_size=16)
prompts = [p.prompt for p in pairs["positive"]]
report = {"n_pairs": len(prompts), "n_prompts": len(set(prompts)),
          "pairs_per_prompt": dict(Counter(Counter(prompts).values())),
          "examples": [{"prompt_end": p.prompt[-120:], "positive": p.response, "negative": q.response}
                       for p, q in list(zip(pairs["positive"], pairs["negative"], strict=True))[:4]]}
for label, groups in (("by pair", None), ("by prompt", prompts)):
    per_seed = [heldout_auc(acts["positive"], acts["negative"], seed=s, groups=groups) for s in range(5)]
    report[label] = {"best_auc": [round(r["best_auc"], 3) for r in per_seed],
                     "best_layer": [r["best_layer"] for r in per_seed],
                     "median_auc": [round(r["median_auc"], 3) for r in per_seed],
                     "best_cosine": [round(r["best_cosine"], 3) for r in per_seed]}
    print(label, report[label], flush=True)
print({k: report[k] for k in ("n_pairs", "n_prompts", "pairs_per_prompt")})
(Path(__file__).parent / "labelled_sycophancy.json").write_text(json.dumps(report, indent=1))
