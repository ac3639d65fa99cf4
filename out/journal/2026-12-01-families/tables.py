"""Family x seed tables of the weight-steering runs behind the journal entry of 2026-12-01 ("Weight steering over
adapter families"), merged from their run folders (same rows: the fingerprints must agree).

    .venv/bin/python out/journal/2026-12-01-families/tables.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from lib.experiments import weight_steering as ws  # noqa: E402

HERE = Path(__file__).parent
RUNS = {
    "honesty": ["adapters=lora,pissa,delora_behaviours=honesty_contrast_source=written_save_deltas=True",
                "adapters=delora_behaviours=honesty_contrast_source=written_family_peft_options=delora-delora-lambda-1.0"
                "_save_deltas=True",
                "adapters=dora,oft,ia3_behaviours=honesty_contrast_source=written_n_seeds=1_save_deltas=True"],
    "sycophancy": ["adapters=lora,pissa,delora_behaviours=sycophancy_contrast_source=labelled_family_peft_options="
                   "delora-db45ebb5",
                   "adapters=dora,oft,ia3_behaviours=sycophancy_contrast_source=labelled_n_seeds=1_save_deltas=True"],
}


def labelled(entry: dict) -> dict:
    """An adapter trained with PEFT options is another arm (DeLoRA at lambda 15 diverged, at 1 it trains): its
    options go into the adapter's name, e.g. `delora[delora_lambda=1.0]`."""
    options = entry.get("peft_options") or {}
    if not options:
        return entry
    return {**entry, "adapter": entry["adapter"] + "[" + ",".join(f"{k}={v}" for k, v in options.items()) + "]"}


HEADROOM = {"smollm2-135m": "stop_after=headroom",
            "gemma3-270m": "model=gemma3-270m_stop_after=headroom_vector_layers=3,6,9,12,15"}


def headroom_table() -> pd.DataFrame:
    """Per model and behaviour: the answer format chosen, the base score and position bias, and the engineered
    prompt's shift with its paired bootstrap interval (`./just run weight_steering stop_after=headroom`)."""
    rows = []
    for model, folder in HEADROOM.items():
        for behaviour in ("honesty", "sycophancy"):
            partial = ROOT / "out" / "weight_steering" / folder / f"{behaviour}_partial.json"
            if not partial.exists():
                continue
            state = json.loads(partial.read_text())
            base = next(e for e in state["entries"] if e["method"] == "none")
            h = state["headroom"]
            rows.append({"model": model, "behaviour": behaviour, "format": state["format"],
                         "format_pmass": state["format_pmass"][state["format"]]["pmass"], "base_score": base["score"],
                         "base_first_bias": base.get("first_bias"), "engineered_shift": h["mean_shift"],
                         "ci_low": h["ci_low"], "ci_high": h["ci_high"], "frac_rows_up": h["frac_rows_up"],
                         "has_headroom": h["has_headroom"], "n": h["n"]})
    return pd.DataFrame(rows)


def swing_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per behaviour, adapter and c > 0: the swing score(+c) - score(-c) per seed (seeds whose training diverged
    left out, as in the seed table), then mean, std, sign agreement."""
    weights = table[(table.method == "weight") & ~table.diverged]
    rows = []
    for (behaviour, adapter), group in weights.groupby(["behaviour", "adapter"]):
        for c in sorted(x for x in group.coeff.unique() if x > 0):
            per_seed = []
            for _, seed_rows in group.groupby("seed"):
                by = seed_rows.set_index("coeff").score
                if c in by and -c in by:
                    per_seed.append(float(by[c] - by[-c]))
            s = pd.Series(per_seed)
            mean = s.mean()
            rows.append({"behaviour": behaviour, "adapter": adapter, "c": c, "n_seeds": len(s), "swing_mean": mean,
                         "swing_std": s.std(ddof=1) if len(s) > 1 else float("nan"),
                         "sign_agreement": float(((s > 0) == (mean > 0)).mean()) if mean else float("nan")})
    return pd.DataFrame(rows)


def family_table(entries: list[dict]) -> pd.DataFrame:
    """The journal's family tables (2026-12-02 entry): per behaviour and adapter, mean score at c = -1 / +1, the swing
    with its seed std and its row SE (mean over seeds; rows paired across +1 and -1), KL, pmass, |dW| and the mean loss
    over all training rows after training (`train_set_loss`, recorded since the paired divergence check)."""
    import numpy as np

    rows = []
    weights = [e for e in ws.mark_diverged(entries) if e["method"] == "weight" and not e["diverged"]]
    for behaviour, adapter in sorted({(e["behaviour"], e["adapter"]) for e in weights}):
        by_seed: dict[int, dict[float, dict]] = {}
        for e in weights:
            if (e["behaviour"], e["adapter"]) == (behaviour, adapter):
                by_seed.setdefault(e["seed"], {})[e["coeff"]] = e
        seeds = [s for s in by_seed.values() if 1.0 in s and -1.0 in s]
        if not seeds:
            continue
        swings = [s[1.0]["score"] - s[-1.0]["score"] for s in seeds]
        row_se = [float(np.std(np.subtract(s[1.0]["row_scores"], s[-1.0]["row_scores"]), ddof=1)
                        / np.sqrt(len(s[1.0]["row_scores"]))) for s in seeds]
        losses = [s[1.0].get("train_set_loss") for s in seeds]
        rows.append({"behaviour": behaviour, "adapter": adapter, "n_seeds": len(seeds),
                     "delta_norm": np.mean([s[1.0]["delta_norm"] for s in seeds]),
                     "score-1": np.mean([s[-1.0]["score"] for s in seeds]),
                     "score+1": np.mean([s[1.0]["score"] for s in seeds]),
                     "swing": np.mean(swings), "swing_seed_std": np.std(swings, ddof=1) if len(seeds) > 1 else np.nan,
                     "swing_row_se": np.mean(row_se), "kl-1": np.mean([s[-1.0]["kl"] for s in seeds]),
                     "kl+1": np.mean([s[1.0]["kl"] for s in seeds]),
                     "pmass-1": np.mean([s[-1.0]["pmass"] for s in seeds]),
                     "pmass+1": np.mean([s[1.0]["pmass"] for s in seeds]),
                     "train_loss_after_pos": np.mean([x["positive"][1] for x in losses]) if all(losses) else np.nan,
                     "train_loss_after_neg": np.mean([x["negative"][1] for x in losses]) if all(losses) else np.nan})
    return pd.DataFrame(rows)


def main() -> None:
    entries, digests = [], {}
    for behaviour, folders in RUNS.items():
        for folder in folders:
            partial = ROOT / "out" / "weight_steering" / folder / f"{behaviour}_partial.json"
            if not partial.exists():
                print(f"missing (not run yet): {partial}")
                continue
            state = json.loads(partial.read_text())
            digests.setdefault(behaviour, state["rows_digest"])
            if state["rows_digest"] != digests[behaviour]:
                raise ValueError(f"{folder} scored other {behaviour} rows than the first run")
            state = ws.add_first_bias(state, behaviour)
            state["entries"] = [labelled(e) for e in state["entries"]]
            seen = {(e["method"], e["adapter"], e["seed"], e["coeff"]) for e in entries if e["behaviour"] == behaviour}
            entries += [e for e in state["entries"] if (e["method"], e["adapter"], e["seed"], e["coeff"]) not in seen]
            for name in ("headroom", "contrast"):
                if name in state:
                    (HERE / f"{behaviour}_{name}.json").write_text(json.dumps(state[name], indent=1))
    families = family_table(entries)
    families.to_csv(HERE / "families.csv", index=False)
    table = ws.comparison_table(entries)
    table.to_csv(HERE / "comparison.csv", index=False)
    seeds = ws.seed_table(table)
    seeds.to_csv(HERE / "seeds.csv", index=False)
    swings = swing_table(table)
    swings.to_csv(HERE / "swings.csv", index=False)
    ws.matched_table(table, 0.25).to_csv(HERE / "matched.csv", index=False)
    headroom = headroom_table()
    headroom.to_csv(HERE / "headroom.csv", index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(headroom.round(3).to_string(index=False))
        print(seeds.round(3).to_string(index=False))
        print(swings.round(3).to_string(index=False))
        print(families.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
