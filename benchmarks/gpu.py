"""Steering's cost on a GPU at the seeds' scale; writes out/bench/gpu.{md,json} (or --out).

    python benchmarks/gpu.py --model Qwen/Qwen2.5-7B-Instruct            # one GPU, bf16 ("auto")
    python benchmarks/gpu.py --model allenai/Llama-3.1-Tulu-3-8B --device-map auto   # spread over the GPUs
    python benchmarks/gpu.py --quick                                      # CPU smoke run on the embedded default

Rows, each a ratio of medians measured side by side in one run (arms alternated, one warm-up each):
- steered / unsteered greedy generation (one vector at 2 layers, every row), with tokens/s of both;
- a K=4 layer sweep as one batch (per-row vectors: each copy of the prompts steered at another layer) / K sequential
  runs;
- a K=4 coefficient sweep as one batch (per-row coefficients) / K sequential runs.
Generation is forced to a fixed length (min_new_tokens) so tokens/s compare. Vectors are random directions scaled
to half the mean residual norm at their layer, read from the prompts (`lib.record`), so no data is needed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.steering import paired  # noqa: E402  (one alternated-median timer for every bench)
from lib.generation import encode, pad_batch, render_chat  # noqa: E402
from lib.hooks import record, steer  # noqa: E402
from lib.io import REPO_ROOT, atomic_write  # noqa: E402
from lib.kits.data import DEFAULT_PROMPTS, NEUTRAL_TEXTS  # noqa: E402
from lib.models import (  # noqa: E402
    EMBEDDED_DEFAULT,
    find_layers,  # noqa: E402
    load_model,
)
from lib.vectors import SteeringVector  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=EMBEDDED_DEFAULT)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device-map", default="")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(REPO_ROOT / "out" / "bench"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of the script")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.new_tokens, args.repeats = 4, 4, 1
    for name in ("prompts", "new_tokens", "repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")

    model, tokenizer = load_model(args.model, dtype=args.dtype, device_map=args.device_map)
    device = next(model.parameters()).device
    n_layers = len(find_layers(model)[1])
    texts = [render_chat(tokenizer, p) for p in (DEFAULT_PROMPTS + [f"Summarise: {t}" for t in NEUTRAL_TEXTS])]
    texts = (texts * (args.prompts // len(texts) + 1))[:args.prompts]
    batch = {k: v.to(device) for k, v in pad_batch(encode(tokenizer, texts), tokenizer.pad_token_id,
                                                   positions=False).items()}
    sweep_layers = sorted({min(n_layers - 1, round(n_layers * f)) for f in (0.2, 0.4, 0.6, 0.8)})
    with torch.no_grad(), record(model, sweep_layers, reduction="mean") as acts:
        model(**batch)
    generator = torch.Generator().manual_seed(0)
    directions = {}
    for layer in sweep_layers:
        direction = torch.randn(acts[layer].shape[-1], generator=generator)
        directions[layer] = direction / direction.norm() * 0.5 * acts[layer].float().norm(dim=-1).mean().cpu()
    vector = SteeringVector({layer: directions[layer] for layer in sweep_layers[1:3]})
    k = len(sweep_layers)
    rows_k = {key: value.repeat(k, 1) for key, value in batch.items()}

    @torch.no_grad()
    def run(rows: dict[str, torch.Tensor], vectors=None, coefficients=None) -> None:
        def go() -> None:
            model.generate(**rows, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id)
        if vectors is None:
            go()
            return
        with steer(model, vectors, coefficients=coefficients):
            go()

    tokens = args.prompts * args.new_tokens
    timed = [
        (f"steered / unsteered generation, {args.prompts} prompts x {args.new_tokens} tokens", 1,
         paired(lambda: run(batch), lambda: run(batch, vector), args.repeats)),
    ]
    per_layer = [SteeringVector({layer: directions[layer]}) for layer in sweep_layers]
    row_vectors = [v for v in per_layer for _ in texts]
    timed.append((f"K={k} layer sweep {sweep_layers}: one batch / {k} sequential runs", k,
                  paired(lambda: [run(batch, v) for v in per_layer], lambda: run(rows_k, row_vectors), args.repeats)))
    coefficients = [1.0, 2.0, 4.0, 8.0][:k]
    row_coefficients = [c for c in coefficients for _ in texts]
    timed.append((f"K={k} coefficient sweep: one batch / {k} sequential runs", k,
                  paired(lambda: [run(batch, vector, [c] * len(texts)) for c in coefficients],
                         lambda: run(rows_k, vector, row_coefficients), args.repeats)))
    results = []
    for name, runs, timing in timed:
        row = timing.row(name, "informational")
        results.append({**row, "row": name, "tokens_per_s": runs * tokens / row["measured_s"],
                        "reference_tokens_per_s": runs * tokens / row["reference_s"]})

    where = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    if torch.cuda.device_count() > 1 and args.device_map:
        where += f" x {torch.cuda.device_count()} (device_map={args.device_map})"
    header = (f"GPU bench: model {args.model}, dtype {next(model.parameters()).dtype}, {where}, torch "
              f"{torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}, {args.repeats} alternated pairs per row"
              "\n\n")
    lines = ["| comparison | reference s | measured s | ratio (median of pairs) | pair ratios min-max | tokens/s "
             "(measured) | tokens/s (reference) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['row']} | {r['reference_s']:.3f} | {r['measured_s']:.3f} | {r['ratio']:.3f} | "
              f"{r['ratio_min']:.3f}-{r['ratio_max']:.3f} | {r['tokens_per_s']:.1f} | "
              f"{r['reference_tokens_per_s']:.1f} |"
              for r in results]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "gpu.md", header + "\n".join(lines) + "\n")
    atomic_write(out / "gpu.json", json.dumps({"model": args.model, "device": where, "rows": results}, indent=2))
    print(header + "\n".join(lines))
    return results


if __name__ == "__main__":
    main()
