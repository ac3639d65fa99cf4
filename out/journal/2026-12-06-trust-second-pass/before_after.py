"""Issue "Trust, second pass", before/after on the embedded default (SmolLM2-135M-Instruct).

Run as `PYTHONPATH=<checkout> python <this file> <out.json>` (the checkout's `lib` must be the one imported), once
in a checkout of 16441b7 (the old code) and once in the fix's: each measurement compares what steerlab returns
with an independent recompute.
1. PEFT: a LoRA (r=8, random B, q/v/down projections) on the embedded default; `extract` with the adapter on
   (cached), then inside `disable_adapter()`: the cached call vs `use_cache=False`.
2. Train mode: `extract` in train mode (cached), then in eval mode: cached vs `use_cache=False`.
3. Hidden states: transformers' capture hooks installed by one call first, then `steer` at layer 10 and
   `output_hidden_states=True`: hidden_states[11] vs the block output a plain own hook sees after adding the vector.
4. Cache hit / miss seconds for 32 texts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from lib.extract import extract
from lib.generation import render_chat
from lib.hooks import steer
from lib.kits.data import DEFAULT_PROMPTS, load_subset
from lib.models import find_layers, load_model


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def main(out: str) -> None:
    import os

    from peft import LoraConfig, get_peft_model

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    os.environ["STEERLAB_CACHE"] = tempfile.mkdtemp()
    model, tokenizer = load_model()
    texts = [render_chat(tokenizer, p) for p in DEFAULT_PROMPTS]
    result: dict[str, float | str] = {}

    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                  init_lora_weights=False)).eval()
    inner = peft_model.get_base_model()  # the transformers model with LoRA layers in it (the old code's only way in)
    on = extract(inner, tokenizer, texts, layers=[15], progress=False)[15]
    with peft_model.disable_adapter():
        served = extract(inner, tokenizer, texts, layers=[15], progress=False)[15]
        truth = extract(inner, tokenizer, texts, layers=[15], use_cache=False, progress=False)[15]
    result["peft_disabled_served_vs_truth_max_abs"] = max_abs(served, truth)
    result["peft_adapter_on_vs_off_max_abs"] = max_abs(on, truth)
    model = peft_model.unload()  # the plain model back

    model.train()
    noisy = extract(model, tokenizer, texts, layers=[15], progress=False)[15]
    model.eval()
    served = extract(model, tokenizer, texts, layers=[15], progress=False)[15]
    truth = extract(model, tokenizer, texts, layers=[15], use_cache=False, progress=False)[15]
    result["train_then_eval_served_vs_truth_max_abs"] = max_abs(served, truth)
    result["train_vs_eval_max_abs"] = max_abs(noisy, truth)

    layer, vector = 10, torch.randn(576, generator=torch.Generator().manual_seed(1)) * 20
    batch = tokenizer(texts[:1], return_tensors="pt")
    with torch.no_grad():
        model(**batch, output_hidden_states=True)  # transformers installs its capture hooks now
        seen = {}
        block = find_layers(model)[1][layer]
        handles = [block.register_forward_hook(lambda module, args, output: output + vector, prepend=True),
                   block.register_forward_hook(lambda module, args, output: seen.__setitem__("out", output))]
        try:
            reference_logits = model(**batch).logits
        finally:
            for handle in handles:
                handle.remove()
        with steer(model, {layer: vector}):
            steered = model(**batch, output_hidden_states=True)
    result["hidden_states_L+1_vs_steered_block_output_max_abs"] = max_abs(steered.hidden_states[layer + 1],
                                                                          seen["out"])
    result["logits_vs_own_hook_max_abs"] = max_abs(steered.logits, reference_logits)

    many = [render_chat(tokenizer, e.prompt) for e in load_subset("math")[:32]]
    start = time.perf_counter()
    extract(model, tokenizer, many, progress=False)
    miss = time.perf_counter() - start
    start = time.perf_counter()
    extract(model, tokenizer, many, progress=False)
    hit = time.perf_counter() - start
    root = Path(__import__("lib").__file__).parents[1]
    git = ["git", "-C", str(root)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run([*git, "status", "--porcelain", "lib"], capture_output=True, text=True).stdout.strip())
    result.update({"lib_commit": commit + ("-dirty" if dirty else ""),
                   "cache_miss_s": miss, "cache_hit_s": hit, "hit_over_miss": hit / miss,
                   "torch": torch.__version__, "transformers": __import__("transformers").__version__,
                   "peft": __import__("peft").__version__})
    with open(out, "w") as handle:
        json.dump(result, handle, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
