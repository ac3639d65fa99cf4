"""BO against random search on a synthetic 4-group objective; writes out/bench/optimize.{md,json}.

The objective stands in for "score of a steering run as a function of four per-layer-group weights":
a smooth Gaussian bump on [0, 1]^4 with a known maximum of 1.0, so "evaluations to reach within 5%
of the optimum" is exact. Each seed runs both arms; random search gets a much larger budget so that it
usually gets there too (a run that never does is reported as ">budget" and counted as budget + 1).
The claim under test: BO needs several times fewer evaluations (Snoek et al. 2012).

    .venv/bin/python benchmarks/optimize.py        # BENCH_SEEDS=8 by default
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from lib.io import REPO_ROOT
from lib.kits.optimize import SearchSpace, evaluations_to_reach, gaussian_bump, run_search

SEEDS = int(os.environ.get("BENCH_SEEDS", "8"))
TOLERANCE = 0.05
OPTIMUM = 1.0
BO_BUDGET, BO_INITIAL = 40, 8
RANDOM_BUDGET = 800
SPACE = SearchSpace(["early", "mid_early", "mid_late", "late"], [(0.0, 1.0)] * 4)
CENTER = {"early": 0.27, "mid_early": 0.71, "mid_late": 0.55, "late": 0.38}
WIDTH = 0.5  # the 5% region is a ball of radius 0.16: about 1 in 310 uniform points lands in it


def main() -> None:
    objective = gaussian_bump(CENTER, WIDTH, height=OPTIMUM)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(SEEDS):
            row: dict[str, object] = {"seed": seed}
            for method, budget in (("bo", BO_BUDGET), ("random", RANDOM_BUDGET)):
                start = time.perf_counter()
                result = run_search(objective, SPACE, method=method, n_iterations=budget, n_initial_points=BO_INITIAL,
                                    seed=seed, history_path=Path(tmp) / f"{method}-{seed}.json", progress=False)
                reached = evaluations_to_reach(result.history, OPTIMUM, TOLERANCE)
                row[f"{method}_evaluations"] = reached
                row[f"{method}_budget"] = budget
                row[f"{method}_best_at_{BO_BUDGET}"] = max(r["score"] for r in result.history[:BO_BUDGET])
                row[f"{method}_seconds"] = time.perf_counter() - start
            bo = row["bo_evaluations"] or BO_BUDGET + 1
            random = row["random_evaluations"] or RANDOM_BUDGET + 1
            row["ratio_random_over_bo"] = random / bo
            rows.append(row)
            print(seed, row, flush=True)

    def shown(value: object, budget: int) -> str:
        return f">{budget}" if value is None else str(value)

    median_ratio = statistics.median(r["ratio_random_over_bo"] for r in rows)
    lines = [f"| seed | BO evaluations to 5% | random evaluations to 5% | random / BO | best after {BO_BUDGET}: BO "
             f"| best after {BO_BUDGET}: random |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {shown(r['bo_evaluations'], BO_BUDGET)} "
              f"| {shown(r['random_evaluations'], RANDOM_BUDGET)} | {'>' if r['random_evaluations'] is None else ''}"
              f"{r['ratio_random_over_bo']:.1f} "
              f"| {r[f'bo_best_at_{BO_BUDGET}']:.3f} | {r[f'random_best_at_{BO_BUDGET}']:.3f} |" for r in rows]
    header = (f"BO (GP Matern 5/2, EI, {BO_INITIAL} random initial points, budget {BO_BUDGET}) vs random search "
              f"(budget {RANDOM_BUDGET}) on a 4-D Gaussian bump (width {WIDTH}, optimum {OPTIMUM}), "
              f"{time.strftime('%Y-%m-%d %H:%M')}. Evaluations until the running best is within "
              f"{TOLERANCE:.0%} of the optimum; '>N' = not within the budget (counted as N + 1, so the ratio is a "
              "lower bound).\n\n")
    footer = f"\nMedian ratio random / BO: {median_ratio:.1f}x over {SEEDS} seeds\n"
    out = REPO_ROOT / "out" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "optimize.md").write_text(header + "\n".join(lines) + "\n" + footer)
    (out / "optimize.json").write_text(json.dumps(
        {"settings": {"seeds": SEEDS, "tolerance": TOLERANCE, "optimum": OPTIMUM, "bo_budget": BO_BUDGET,
                      "bo_initial_points": BO_INITIAL, "random_budget": RANDOM_BUDGET, "center": CENTER,
                      "width": WIDTH, "space": {"names": SPACE.names, "bounds": SPACE.bounds}},
         "rows": rows, "median_ratio_random_over_bo": median_ratio}, indent=2))
    print(header + "\n".join(lines) + "\n" + footer)


if __name__ == "__main__":
    main()
