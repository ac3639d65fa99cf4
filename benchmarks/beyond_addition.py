"""What ablation, conditional steering and orthogonalised weights cost on the embedded default; writes
out/bench/beyond_addition.{md,json}.

Rows (issue "Beyond addition"): generation with a direction ablated from every writer of all 30 blocks and the
embeddings vs unsteered (target <= 1.03); gated steering (`Gate` at layer 10, half the rows open) vs the same steering
without a gate, and vs unsteered (<= 1.03: the gate reads the prefill, no second forward); the orthogonalised weights
(applied once, outside the timing) vs the base weights (the same model size and no hooks: 1.0 within noise).
Alternated pairs, as every timed row of ./just bench (benchmarks/steering.py's `paired`).
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.steering import NEW_TOKENS, REPEATS, paired, write_table  # noqa: E402
from lib.ablation import ablate, orthogonalize, untie_embeddings  # noqa: E402
from lib.gates import Gate  # noqa: E402
from lib.generation import generate  # noqa: E402
from lib.hooks import Steering  # noqa: E402
from lib.kits.data import DEFAULT_PROMPTS  # noqa: E402
from lib.models import hidden_size, load_model  # noqa: E402


def main() -> None:
    torch.manual_seed(0)
    model, tokenizer = load_model()
    untie_embeddings(model)  # the orthogonalised row edits the embeddings; untied costs the same
    size = hidden_size(model)
    direction = torch.randn(size, generator=torch.Generator().manual_seed(0))
    vector = {12: torch.randn(size, generator=torch.Generator().manual_seed(1)) * 4}
    prompts = (DEFAULT_PROMPTS * 4)[:16]

    def gen(steering: Steering | None = None, context: Callable[[], object] | None = None,
            which: torch.nn.Module = model) -> Callable[[], object]:
        def run() -> object:
            with context() if context is not None else contextlib.nullcontext():
                return generate(which, tokenizer, prompts, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                batch_size=16, progress=False, steering=steering)
        return run

    # a threshold at the median score: half the rows open
    probe_gate = Gate(direction, layer=10, threshold=0.0)
    gen(Steering(vector, gate=probe_gate))()
    assert probe_gate.scores is not None
    gate = Gate(direction, layer=10, threshold=float(probe_gate.scores.median()))
    plain = gen()
    rows = [paired(plain, gen(context=lambda: ablate(model, direction))).row(
        f"generate 16 x {NEW_TOKENS} tokens: ablate (30 blocks + embeddings) / unsteered", "<= 1.03")]
    rows.append(paired(gen(Steering(vector)), gen(Steering(vector, gate=gate))).row(
        f"generate 16 x {NEW_TOKENS} tokens: gated steering / the same steering ungated", "<= 1.03"))
    rows.append(paired(plain, gen(Steering(vector, gate=gate))).row(
        f"generate 16 x {NEW_TOKENS} tokens: gated steering / unsteered", "<= 1.03"))
    orthogonal = copy.deepcopy(model)  # the edit made permanent in a copy: a checkpoint loaded as it is
    params = dict(orthogonal.named_parameters())
    with torch.no_grad():
        for name, change in orthogonalize(model, direction).deltas.items():
            params[name].add_(change.to(params[name].dtype))
    rows.append(paired(plain, gen(which=orthogonal)).row(
        f"generate 16 x {NEW_TOKENS} tokens: orthogonalised weights / base weights (no hooks)", "1 within noise"))
    header = ("Ablation, conditional steering and orthogonalised weights, embedded default, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d %H:%M')}, "
              f"{REPEATS} alternated pairs; "
              f"half the rows pass the gate ({int(gate.decisions.sum()) if gate.decisions is not None else '?'} of "
              f"16 in the last run)\n\n")
    write_table("beyond_addition", header, rows)


if __name__ == "__main__":
    main()
