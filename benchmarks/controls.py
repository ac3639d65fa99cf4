"""The KL-matched random delta's cost on the embedded default; writes out/bench/controls.{md,json}.

Row (issue "Corrections"): the control of one weight delta on a coefficient grid, matched along one curve
(`lib.kits.controls.kl_matched_random_deltas`, the probes shared by `match_kl_along`) vs one `match_kl` search per
coefficient (the route before, 17 of the 21 minutes of a LoRA seed in the Corrections run); target <= 0.5. A weight
edit cannot ride in a batch as rows, so each probe is one pass over the neutral texts: what the curve saves is
probes. The delta is a Gaussian edit of the MLP down projections (every block), the grid the journal runs' points
with |c| <= 1. Alternated pairs, as every timed row of ./just bench (benchmarks/steering.py's `paired`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.steering import REPEATS, paired, write_table  # noqa: E402
from lib.evals import mean_kl, text_logprobs  # noqa: E402
from lib.kits.controls import kl_matched_random_deltas, match_kl  # noqa: E402
from lib.kits.delta_ablation import norm_matched_random  # noqa: E402
from lib.models import load_model  # noqa: E402
from lib.weights import WeightDelta, apply_delta  # noqa: E402

GRID = (-1.0, -0.5, 0.5, 1.0)
TEXTS = ["The weather was mild today.", "She read the map twice before leaving."]


def main() -> None:
    model, tokenizer = load_model()
    generator = torch.Generator().manual_seed(0)
    names = [n for n, _ in model.named_parameters() if n.endswith("mlp.down_proj.weight")]
    delta = WeightDelta({n: 0.01 * torch.randn(model.get_parameter(n).shape, generator=generator) for n in names})
    reference = text_logprobs(model, tokenizer, TEXTS, rendering="chat_reply", progress=False)

    def kl(edit: WeightDelta, scale: float) -> float:
        with apply_delta(model, edit, scale):
            return mean_kl(reference, text_logprobs(model, tokenizer, TEXTS, rendering="chat_reply", progress=False))

    targets = {c: kl(delta, c) for c in GRID}

    def along_the_grid() -> None:
        kl_matched_random_deltas(model, tokenizer, delta, targets, seed=1, texts=TEXTS)

    def one_search_per_coefficient() -> None:
        for c, target in targets.items():
            random = norm_matched_random(delta * c, seed=1).delta
            match_kl(lambda scales, r=random: [kl(r, s) for s in scales], target)

    rows = [paired(one_search_per_coefficient, along_the_grid).row(
        f"KL-matched random delta: a {len(GRID)}-point grid along one curve / one search per coefficient", "<= 0.5")]
    header = (f"Controls, embedded default, torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{time.strftime('%Y-%m-%d %H:%M')}, {REPEATS} alternated pairs; 2 neutral texts, chat_reply\n\n")
    write_table("controls", header, rows)


if __name__ == "__main__":
    main()
