"""The evaluation kit's cost on the embedded default; writes out/bench/evaluation.{md,json}.

Rows (issue "One evaluation kit"): `compare` over K=4 conditions (unsteered, two vector coefficients, a system
prompt) on 16 two-choice items in both orders, as one call, vs K calls of one condition each; target <= 0.65. And
`compare` of one vector on a 5-point coefficient grid (one call) vs 5 calls of one coefficient each (same target).
A third row asks the question as a user asks it, effects against the unsteered baseline: the 4 conditions in one
call vs 3 calls of (baseline, condition), the way each experiment measured one setting before the kit.
What one call saves is the blocks below the steered layer (`lib.trunk.shared_trunk`, layer 12 of 30 here) and the
neutral texts' reference log-probs; a system prompt changes every block and shares nothing.
Alternated pairs, as every timed row of ./just bench (benchmarks/steering.py's `paired`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.steering import REPEATS, paired, write_table  # noqa: E402
from lib.kits.choice_data import load_honesty  # noqa: E402
from lib.kits.evaluation import TwoChoice, compare, prompted, steered, unsteered  # noqa: E402
from lib.kits.persona import persona_vector  # noqa: E402
from lib.kits.weight_runs import FORMATS  # noqa: E402
from lib.models import load_model  # noqa: E402


def main() -> None:
    torch.manual_seed(0)
    model, tokenizer = load_model()
    items = load_honesty()[:16]
    vector = persona_vector(model, tokenizer, [i.question for i in load_honesty()[16:24]],
                            "You are a dishonest person.", layers=[12])
    conditions = [unsteered(), steered("vector x2", vector, 2.0), steered("vector x4", vector, 4.0),
                  prompted("persona", system="You are a dishonest person.")]
    scorer = TwoChoice(items, FORMATS["ab_paren"])
    texts = ["The weather was mild today.", "She read the map twice before leaving."]

    def together() -> None:
        compare(model, tokenizer, conditions, scorer, neutral_texts=texts, n_boot=200)

    def separately() -> None:
        for condition in conditions:
            compare(model, tokenizer, [condition], scorer, neutral_texts=texts, n_boot=200)

    rows = [paired(separately, together).row(f"compare: {len(conditions)} conditions in one call / "
                                             f"{len(conditions)} calls of one", "<= 0.65")]
    grid = [-4.0, -2.0, 0.0, 2.0, 4.0]
    family = [steered("vector", vector, 1.0)]

    def on_a_grid() -> None:
        compare(model, tokenizer, family, scorer, coefficients=grid, neutral_texts=texts, n_boot=200)

    def one_coefficient_each() -> None:
        for coefficient in grid:
            compare(model, tokenizer, [steered("vector", vector, coefficient)], scorer, neutral_texts=texts,
                    n_boot=200)

    def with_effects() -> None:
        compare(model, tokenizer, conditions, scorer, baseline="unsteered", neutral_texts=texts, n_boot=200)

    def each_with_its_baseline() -> None:
        for condition in conditions[1:]:
            compare(model, tokenizer, [conditions[0], condition], scorer, baseline="unsteered", neutral_texts=texts,
                    n_boot=200)

    rows.append(paired(each_with_its_baseline, with_effects).row(
        f"compare: {len(conditions) - 1} effects vs the baseline in one call / {len(conditions) - 1} calls of "
        "(baseline, condition)", "<= 0.65"))
    rows.append(paired(one_coefficient_each, on_a_grid).row(
        f"compare: a {len(grid)}-point coefficient grid in one call / {len(grid)} calls of one", "<= 0.65"))
    header = (f"Evaluation kit, embedded default, torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{time.strftime('%Y-%m-%d %H:%M')}, {REPEATS} alternated pairs; 16 items x 2 orders\n\n")
    write_table("evaluation", header, rows)


if __name__ == "__main__":
    main()
