"""Journal 2026-12-01, "Weight steering: is there a contrast to learn?": the contrast per source and behaviour on
the embedded default, with the weight-steering notebook's default split and persona settings.

    .venv/bin/python out/journal/2026-12-01-contrast/measure.py   # -> contrast.json beside this file (~5 min)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from lib.experiments.weight_steering import WeightSteeringConfig, contrast_pairs, measured_sources
from lib.kits.choice_data import LOADERS, split_items
from lib.kits.contrast import measure_contrast
from lib.models import load_model

torch.manual_seed(0)
cfg = WeightSteeringConfig()
model, tokenizer = load_model(cfg.model)
report = {"config": {k: getattr(cfg, k) for k in ("model", "n_train", "n_val", "n_test", "n_paraphrases",
                                                  "max_new_tokens", "seed")}, "behaviours": {}}
for behaviour in cfg.behaviours:
    split = split_items(LOADERS[behaviour](), cfg.n_train, cfg.n_val, cfg.n_test, cfg.seed)
    held_out = split["val"] + split["test"]
    report["behaviours"][behaviour] = {}
    for source in ["persona"] + [s for s in measured_sources(cfg, behaviour) if s != "persona"]:
        start = time.perf_counter()
        pairs = contrast_pairs(cfg, model, tokenizer, behaviour, split["train"], source=source, held_out=held_out)
        result = measure_contrast(model, tokenizer, pairs, batch_size=cfg.batch_size, seed=cfg.seed)
        result["seconds"] = round(time.perf_counter() - start, 1)
        result["n_pairs"] = len(pairs["positive"])
        report["behaviours"][behaviour][source] = result
        print(f"{behaviour:<11} {source:<9} pairs {result['n_pairs']:>3}  best layer {result['best_layer']:>2}  "
              f"AUC {result['best_auc']:.3f}  median {result['median_auc']:.3f}  cos(halves) "
              f"{result['best_cosine']}  {result['verdict']}", flush=True)
(Path(__file__).parent / "contrast.json").write_text(json.dumps(report, indent=1, default=str))
