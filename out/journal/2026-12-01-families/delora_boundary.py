"""Journal 2026-12-01 (weight steering over families): why DeLoRA diverged. One adapter (positive written pairs,
16 steps x 4, rank 8) at PEFT's default boundary with a 10x lower lr, and at boundaries 1 and 0.25 with lr 1e-3.

    .venv/bin/python out/journal/2026-12-01-families/delora_boundary.py   (about 4 min; output in delora_boundary.txt)
"""

import json
import time
from pathlib import Path

import torch

from lib.kits.adapters import SFTPair, train_adapter
from lib.models import load_model

RUN = "out/weight_steering/adapters=lora,pissa,delora_behaviours=honesty_contrast_source=written_save_deltas=True"
pairs = [SFTPair(**x) for x in json.loads(Path(f"{RUN}/honesty_written_pairs.json").read_text())["positive"]]
model, tok = load_model("smollm2-135m")
torch.set_num_threads(1)
for boundary, lr in [(1.0, 1e-3), (0.25, 1e-3), (15.0, 1e-4)]:
    start = time.time()
    delta, losses = train_adapter(model, tok, pairs, "delora", seed=0, steps=16, batch_size=4, learning_rate=lr,
                                  rank=8, max_length=256, progress=False, delora_lambda=boundary)
    print(f"lambda={boundary} lr={lr} norm={delta.norm():.2f} losses={[round(x, 2) for x in losses]} "
          f"{time.time() - start:.0f}s", flush=True)
