import json, sys, time
import torch
from lib.models import load_model
from lib.kits.adapters import SFTPair, train_adapter
d = "out/weight_steering/adapters=lora,pissa,delora_behaviours=honesty_contrast_source=written_save_deltas=True"
p = json.load(open(f"{d}/honesty_written_pairs.json"))
pairs = [SFTPair(**x) for x in p["positive"]]
model, tok = load_model("smollm2-135m")
torch.set_num_threads(1)
for lam, lr in [(1.0, 1e-3), (0.25, 1e-3), (15.0, 1e-4)]:
    t = time.time()
    delta, losses = train_adapter(model, tok, pairs, "delora", seed=0, steps=16, batch_size=4, learning_rate=lr,
                                  rank=8, max_length=256, progress=False, delora_lambda=lam)
    print(f"lambda={lam} lr={lr} norm={delta.norm():.2f} losses={[round(x,2) for x in losses]} {time.time()-t:.0f}s", flush=True)
