"""Steering overhead benchmarks on the embedded default; writes out/bench/steering.{md,json}.

Every comparison is measured side by side in one process, alternating the two arms, and
reported as a ratio of medians (this machine is noisy; absolute seconds are for context).
Targets (issue 2): steering adds < 3% to forward and generate; extraction within 1.15x of a
bare batched forward; a K-coefficient sweep as one batch beats K sequential runs. Issue 17 adds: a K=4 layer sweep
(per-row vectors, each row steered at another layer) as one batch vs 4 sequential runs, and extraction and steered
generation in bfloat16 vs float32 on CPU (on CPU bf16 saves memory, not time: the row says how much time).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lib.extract import extract, forward_batches
from lib.generation import encode, generate, pad_batch, render_chat
from lib.hooks import Steering
from lib.io import REPO_ROOT, atomic_write
from lib.kits.data import DEFAULT_PROMPTS, load_subset
from lib.models import hidden_size, load_model
from lib.vectors import SteeringVector, random_like

REPEATS = int(os.environ.get("BENCH_REPEATS", "7"))
NEW_TOKENS = 32  # every generation row makes exactly this many tokens per row (min_new_tokens): equal work per arm


@dataclass
class Timing:
    """Two arms timed side by side: seconds of each repeat, and the ratio of each alternated pair (measured /
    reference), whose spread says how much to trust the median on a noisy machine."""

    reference: list[float]
    measured: list[float]

    @property
    def ratios(self) -> list[float]:
        return [b / a for a, b in zip(self.reference, self.measured, strict=True)]

    def row(self, name: str, target: str) -> dict[str, object]:
        ratios = self.ratios
        return {"comparison": name, "reference_s": statistics.median(self.reference),
                "measured_s": statistics.median(self.measured), "ratio": statistics.median(ratios),
                "ratio_min": min(ratios), "ratio_max": max(ratios), "pairs": len(ratios), "target": target}


def paired(first: Callable[[], object], second: Callable[[], object], repeats: int = REPEATS) -> Timing:
    """Two arms alternated `repeats` times so drift hits both alike (one warm-up each); on a GPU each arm is timed
    to the end of its kernels."""
    first(), second()
    a, b = [], []
    for _ in range(repeats):
        for arm, times in ((first, a), (second, b)):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            arm()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return Timing(a, b)


def write_table(stem: str, header: str, rows: list[dict[str, object]]) -> None:
    """out/bench/<stem>.md (the header line, then one table row per timing row) and <stem>.json, and print the table:
    the one table every ratio benchmark writes."""
    lines = ["| comparison | reference s | measured s | ratio (median of pairs) | pair ratios min-max | target |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['comparison']} | {r['reference_s']:.3f} | {r['measured_s']:.3f} | {r['ratio']:.3f} | "
              f"{r['ratio_min']:.3f}-{r['ratio_max']:.3f} | {r['target']} |" for r in rows]
    out = REPO_ROOT / "out" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"{stem}.md", header + "\n".join(lines) + "\n")
    atomic_write(out / f"{stem}.json", json.dumps(rows, indent=2))
    print(header + "\n".join(lines))


def cache_hit_and_miss(model, tokenizer, texts: list[str], repeats: int = REPEATS) -> Timing:
    """A miss (a fresh cache folder) and the hit right after it, alternated. A hit pays for the fingerprint (every
    weight byte), the forward-state digest and reading the entry."""
    misses, hits, before = [], [], os.environ.get("STEERLAB_CACHE")
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            os.environ["STEERLAB_CACHE"] = cache
            for times in (misses, hits):
                start = time.perf_counter()
                extract(model, tokenizer, texts, progress=False)
                times.append(time.perf_counter() - start)
    os.environ.pop("STEERLAB_CACHE")
    if before is not None:
        os.environ["STEERLAB_CACHE"] = before
    return Timing(misses, hits)


def main() -> None:
    torch.manual_seed(0)
    model, tokenizer = load_model()
    size = hidden_size(model)
    probe = SteeringVector({layer: torch.ones(size) for layer in (10, 15)})
    steering = Steering(random_like(probe * (20 / probe[10].norm()), seed=0))
    prompts = (DEFAULT_PROMPTS * 4)[:16]
    batch = pad_batch(encode(tokenizer, [render_chat(tokenizer, p) for p in prompts]), tokenizer.pad_token_id)
    texts = [render_chat(tokenizer, e.prompt) for e in load_subset("math")[:32]]
    rows = []
    if sys.argv[1:] == ["cache"]:  # this row alone, printed (the table keeps the full run's)
        print(cache_hit_and_miss(model, tokenizer, texts).row("extract 32 texts: cache hit / miss", "<= 0.05"))
        return

    def forward() -> None:
        with torch.no_grad():
            model(**batch)

    def forward_steered() -> None:
        with torch.no_grad(), steering.batch(model):
            model(**batch)

    rows.append(paired(forward, forward_steered).row("forward 16 prompts: steered / unsteered", "< 1.03"))

    def gen(steer: bool) -> Callable[[], object]:
        return lambda: generate(model, tokenizer, prompts, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                batch_size=16, progress=False, steering=steering if steer else None)

    rows.append(paired(gen(False), gen(True)).row(f"generate 16 x {NEW_TOKENS} tokens: steered / unsteered", "< 1.03"))

    rows.append(paired(lambda: forward_batches(model, tokenizer, texts, 16, progress=False),
                       lambda: extract(model, tokenizer, texts, use_cache=False, progress=False))
                .row("extract 32 texts, all 30 layers: extract / bare forward", "< 1.15"))

    k = 4
    coefficients = [float(c) for c in range(k) for _ in prompts]

    def one_batch() -> None:
        generate(model, tokenizer, prompts * k, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                 batch_size=16 * k, progress=False, steering=steering, coefficients=coefficients)

    def sequential() -> None:
        for c in range(k):
            generate(model, tokenizer, prompts, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, batch_size=16,
                     progress=False, steering=Steering(steering.vector, float(c)))

    rows.append(paired(sequential, one_batch).row(f"K={k} coefficient sweep: one batch / {k} sequential runs", "< 1"))

    layers = [6, 10, 15, 20]
    per_layer = [SteeringVector({layer: steering.vector[10]}) for layer in layers]
    row_vectors = [vector for vector in per_layer for _ in prompts]

    def layer_batch() -> None:
        generate(model, tokenizer, prompts * len(layers), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                 batch_size=16 * len(layers), progress=False, steering=Steering(row_vectors))

    def layer_sequential() -> None:
        for vector in per_layer:
            generate(model, tokenizer, prompts, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, batch_size=16,
                     progress=False, steering=Steering(vector))

    rows.append(paired(layer_sequential, layer_batch).row(
        f"K={len(layers)} layer sweep (per-row vectors): one batch / {len(layers)} sequential runs", "< 1"))

    half, _ = load_model(dtype=torch.bfloat16)
    half_steering = Steering(steering.vector)
    rows.append(paired(lambda: extract(model, tokenizer, texts, use_cache=False, progress=False),
                       lambda: extract(half, tokenizer, texts, use_cache=False, progress=False))
                .row("extract 32 texts, all 30 layers: bfloat16 / float32 (CPU)", "informational"))
    rows.append(paired(lambda: generate(model, tokenizer, prompts, max_new_tokens=NEW_TOKENS,
                                        min_new_tokens=NEW_TOKENS, batch_size=16, progress=False, steering=steering),
                       lambda: generate(half, tokenizer, prompts, max_new_tokens=NEW_TOKENS,
                                        min_new_tokens=NEW_TOKENS, batch_size=16, progress=False,
                                        steering=half_steering))
                .row(f"steered generate 16 x {NEW_TOKENS} tokens: bfloat16 / float32 (CPU)", "informational"))

    rows.append(cache_hit_and_miss(model, tokenizer, texts).row("extract 32 texts: cache hit / miss", "<= 0.05"))

    header = (f"Steering benchmarks, embedded default, torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{time.strftime('%Y-%m-%d %H:%M')}, {REPEATS} alternated pairs per row (one warm-up each); "
              f"generation rows make exactly {NEW_TOKENS} tokens per row\n\n")
    write_table("steering", header, rows)


if __name__ == "__main__":
    main()
