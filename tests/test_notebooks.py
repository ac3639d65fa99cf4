"""Notebooks end to end through papermill on the embedded default (quick presets)."""

from __future__ import annotations

import csv
import json

import pytest

from lib.runner import run_notebook, sweep

CONTRASTIVE_QUICK = {"n_samples": 8, "n_eval": 4, "inference_n": 2, "max_tokens": 8, "curve_scales": [0.0, 2.0],
                     "batch_size": 8}


def test_contrastive_notebook_runs_and_writes_results(tmp_path):
    run_dir = run_notebook("contrastive_steering", CONTRASTIVE_QUICK, out_root=tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    metadata = results["metadata"]
    for key in ("target_subset", "baseline_subset", "n_samples", "layer", "scale", "vector_norm",
                "effective_magnitude", "inference_set", "inference_size", "model"):
        assert key in metadata, key
    assert metadata["target_subset"] == {"key": "math", "name": metadata["target_subset"]["name"]}
    assert metadata["effective_magnitude"] == pytest.approx(metadata["vector_norm"] * metadata["scale"])
    assert metadata["inference_size"] == 2 and len(results["results"]) == 2
    assert set(results["results"][0]) == {"prompt_index", "prompt", "baseline", "steered"}
    summary = results["summary"]
    assert summary["side_effect"] > 0 and summary["main"] != summary["baseline"]
    assert results["curves"]["steering"]["kl"][0] == pytest.approx(0.0, abs=1e-6)
    assert (run_dir / "effect_curve.png").stat().st_size > 10_000
    assert (run_dir / "vector.safetensors").exists() and (run_dir / "steering_vectors.json").exists()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "ok" and record["parameters"]["n_samples"] == 8 and "torch" in record["versions"]
    assert run_notebook("contrastive_steering", CONTRASTIVE_QUICK, out_root=tmp_path) == run_dir  # kept, not re-run
    assert json.loads((run_dir / "run.json").read_text())["started"] == record["started"]


@pytest.mark.slow
def test_contrastive_notebook_in_bf16_with_device_map_auto(tmp_path, tiny_folder):
    """The seed-scale loading path (bf16 weights, accelerate's device_map) end to end through a notebook."""
    overrides = {**CONTRASTIVE_QUICK, "model": str(tiny_folder), "layer": 1, "dtype": "bfloat16", "device_map": "auto",
                 "attn_implementation": "sdpa", "random_control": False}
    run_dir = run_notebook("contrastive_steering", overrides, out_root=tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["summary"]["side_effect"] > 0
    record = json.loads((run_dir / "run.json").read_text())
    assert {k: record["parameters"][k] for k in ("dtype", "device_map", "attn_implementation")} == \
        {"dtype": "bfloat16", "device_map": "auto", "attn_implementation": "sdpa"}


@pytest.mark.slow
def test_contrastive_sweep_resumes_and_writes_summary_and_heatmap(tmp_path):
    grid = {"layer": [6, 12], "scale": [1.0, 4.0]}
    first = run_notebook("contrastive_steering", {**CONTRASTIVE_QUICK, "layer": 6, "scale": 1.0}, out_root=tmp_path)
    started = json.loads((first / "run.json").read_text())["started"]
    sweep_dir = sweep("contrastive_steering", grid, fixed=CONTRASTIVE_QUICK, out_root=tmp_path)
    assert json.loads((first / "run.json").read_text())["started"] == started  # resumed, not re-run
    with open(sweep_dir / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and {"layer", "scale", "main", "baseline", "side_effect"} <= set(rows[0])
    assert (sweep_dir / "heatmap_delta.png").exists() and (sweep_dir / "heatmap_side_effect.png").exists()


@pytest.mark.slow
def test_math_chain_grpo_then_steering_then_bo(tmp_path):
    """The quick presets of the three math notebooks, each feeding the next (about 5-8 min on 2 cores)."""
    grpo_dir = run_notebook("grpo_math", {}, out_root=tmp_path)
    grpo = json.loads((grpo_dir / "results.json").read_text())
    assert {"main", "baseline", "side_effect", "n_eval_problems"} <= set(grpo["summary"])
    for name in ("run_log.json", "eval_summary.json", "training_curve.png"):
        assert (grpo_dir / name).exists(), name
    assert any((grpo_dir / "checkpoints").glob("checkpoint-*"))

    steering_dir = run_notebook("math_steering", {"finetuned": str(grpo_dir / "final_model")}, out_root=tmp_path)
    steering = json.loads((steering_dir / "results.json").read_text())
    assert len(steering["steered"]) == len(steering["weights"]) == 7
    assert steering["steered"][0] == steering["base"]  # weight 0 is the unsteered base, same batch
    assert len(steering["kl_steered"]) == 7 and steering["kl_steered"][0] == pytest.approx(0.0, abs=1e-6)
    assert (steering_dir / "steering_vectors.json").exists() and (steering_dir / "weight_curve.png").exists()

    bo_dir = run_notebook("steering_bo", {"finetuned": str(grpo_dir / "final_model"),
                                          "vector": str(steering_dir / "vector")}, out_root=tmp_path)
    final = json.loads((bo_dir / "results.json").read_text())
    assert set(final["best_weights"]) == {"early", "mid_early", "mid_late", "late"}
    assert len(final["optimization_history"]) == 5 and len(final["random_search"]["history"]) == 5
    assert {"score", "ci", "base", "finetuned", "kl"} <= set(final["confirmed"])
    for name in ("gp_1d.gif", "gp_2d.gif", "gp_2d.png", "parallel_coordinates.png", "bo_vs_random.png"):
        assert (bo_dir / name).stat().st_size > 1000, name


@pytest.mark.slow
def test_bo_notebook_optimises_the_contrastive_objective(tmp_path):
    """The optimiser is not tied to math: the contrastive log-prob gap as objective, vector from the contrastive run."""
    contrastive_dir = run_notebook("contrastive_steering", CONTRASTIVE_QUICK, out_root=tmp_path)
    bo_dir = run_notebook("steering_bo", {"objective": "contrastive_gap", "vector": str(contrastive_dir / "vector"),
                                          "eval_size": 4, "n_initial_points": 2, "n_iterations": 3,
                                          "random_search": False}, out_root=tmp_path)
    final = json.loads((bo_dir / "results.json").read_text())
    assert final["finetuned_score"] is None and final["random_search"] is None
    assert len(final["optimization_history"]) == 3
    assert final["confirmed"]["score"] == pytest.approx(final["best_score"], abs=1e-4)  # deterministic objective


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["token", "latent"])
def test_reasoning_direction_notebook_quick_preset(tmp_path, mode):
    """Both modes end to end on the embedded default: split, direction, per-alpha evals, controls, figures."""
    # untrained latent thoughts solve ~7% (journal): the latent preset needs more problems for both classes
    overrides = {"mode": mode} if mode == "token" else {"mode": mode, "latent_steps": 2, "max_new_tokens": 8,
                                                       "n_problems": 96}
    run_dir = run_notebook("reasoning_direction", overrides, out_root=tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    split = json.loads((run_dir / "split.json").read_text())
    ids = [i for key in ("train_correct", "train_wrong", "test_correct", "test_wrong") for i in split[key]]
    assert len(ids) == len(set(ids)) and len(split["train_correct"]) == len(split["train_wrong"])
    table = {row["alpha"]: row for row in results["alpha_table"]}
    assert set(table) == {-3.0, 0.0, 3.0} and table[0.0]["p_mcnemar"] == 1.0
    assert {row["direction"] for row in results["random_control"]} >= {"random_0", "random_1", "random mean"}
    # KL-matched random controls: each within 5% of the direction's KL at its alpha, or a note saying why none is
    randoms = [row for row in results["random_control"] if row["direction"].startswith("random_")]
    unmatched = [row for row in randoms if isinstance(row.get("note"), str)]
    assert len(randoms) == 2 * 2 and all(abs(row["kl"] - row["target_kl"]) <= 0.05 * row["target_kl"]
                                         for row in randoms if row not in unmatched)
    assert len(list((run_dir / "evals").rglob("alpha=*.json"))) == 3 + len(randoms) - len(unmatched)
    ranks = [row for row in results["random_control"] if row["direction"] == "direction" and row["n_random"]]
    assert all(row["p_floor"] == pytest.approx(1 / (row["n_random"] + 1)) and row["p_rank"] >= row["p_floor"]
               for row in ranks) and ranks
    norms = results["direction_norms"]
    assert len(norms) == 30 and all(len(steps) == (1 if mode == "token" else 2) for steps in norms.values())
    for name in ("accuracy_vs_alpha.png", "transitions.png", "direction_heatmaps.png"):
        assert (run_dir / name).stat().st_size > 10_000, name
    summary = results["summary"]
    assert summary["baseline"] == table[0.0]["accuracy"] and summary["side_effect_metric"]
    assert summary["unmatched_random_controls"] == len(unmatched) and summary["comparisons"] == 2
    assert summary["best_delta_low"] <= summary["best_delta_points"] <= summary["best_delta_high"]


WEIGHT_STEERING_QUICK = {"n_seeds": 2, "n_train": 4, "n_val": 4, "n_test": 6, "n_paraphrases": 1, "max_new_tokens": 12,
                         "sft_steps": 2, "sft_batch_size": 2, "max_length": 128, "weight_coeffs": [-1.0, 0.0, 1.0],
                         "vector_coeffs": [-2.0, 0.0, 2.0], "vector_layers": [6, 12]}


@pytest.mark.slow
def test_weight_steering_notebook_quick_preset(tmp_path):
    """Both behaviours, every method on identical rows, two adapter seeds, then a resume that re-scores nothing."""
    run_dir = run_notebook("weight_steering", WEIGHT_STEERING_QUICK, out_root=tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    table = results["table"]
    methods = {(row["behaviour"], row["method"]) for row in table}
    for behaviour in ("honesty", "sycophancy"):
        for method in ("none", "prompt_simple", "prompt_engineered", "activation_mean_difference", "weight"):
            assert (behaviour, method) in methods, (behaviour, method)
    assert all(row["n"] == 6 for row in table)  # identical test rows for every method
    entries = {(e["behaviour"], e["method"], e["seed"], e["coeff"]): e for e in results["entries"]}
    for behaviour in ("honesty", "sycophancy"):
        ids = json.loads((run_dir / f"{behaviour}_partial.json").read_text())["split_ids"]
        assert not set(ids["test"]) & (set(ids["train"]) | set(ids["val"]))
        assert entries[(behaviour, "none", -1, 0.0)]["kl"] == 0.0
        for seed in (0, 1):
            assert entries[(behaviour, "weight", seed, 1.0)]["kl"] > 0
            assert entries[(behaviour, "weight", seed, 1.0)]["row_scores"] != entries[(behaviour, "none", -1, 0.0)][
                "row_scores"]
        assert 0 < entries[(behaviour, "none", -1, 0.0)]["pmass"] <= 1
    seeds = results["seeds"]
    ws_random = "random_delta"
    assert {row["n_seeds"] for row in seeds} == {2} and all("sign_agreement" in row for row in seeds)
    assert {"up_delta", "down_delta", "max_kl_tested"} <= set(results["matched"][0])
    assert results["summary"]["baseline"] is not None and set(results["summary"]["formats"]) == {"honesty",
                                                                                                  "sycophancy"}
    # the evaluation kit: both answer orders, KL-matched random deltas, each curve read at the KL budget
    assert results["summary"]["orders"] == {"honesty": "both", "sycophancy": "both"}
    assert any(e["method"] == ws_random for e in results["entries"]) or any(results["random_notes"].values())
    assert {"up_delta", "up_low", "up_high", "at_own_kl"} <= set(results["matched_at_kl"][0])
    for name in ("comparison.csv", "seeds.csv", "matched.csv", "matched_at_kl.csv", "comparison.png",
                 "honesty_persona_pairs.json"):
        assert (run_dir / name).stat().st_size > 100, name
    stamps = {path.name: path.stat().st_mtime_ns for path in run_dir.glob("*_partial.json")}
    record = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**record, "status": "failed"}))  # as if interrupted at the end
    run_notebook("weight_steering", WEIGHT_STEERING_QUICK, out_root=tmp_path)  # resumes: nothing re-trained
    assert {path.name: path.stat().st_mtime_ns for path in run_dir.glob("*_partial.json")} == stamps
    assert json.loads((run_dir / "results.json").read_text())["table"] == table


@pytest.mark.slow
def test_weight_ablation_notebook_on_a_quick_weight_steering_run(tmp_path):
    """The chain: a quick weight_steering run that saves its deltas, then the ablation notebook on them: the full
    dW reproduces the run's scores, every asked group is scored, and the summary and verdict are written."""
    source = run_notebook("weight_steering", {**WEIGHT_STEERING_QUICK, "behaviours": ["honesty"], "n_seeds": 1,
                                              "contrast_source": "written", "save_deltas": True}, out_root=tmp_path)
    run_dir = run_notebook("weight_ablation", {"deltas_from": [str(source)], "groups": ["roles", "controls"],
                                               "n_random": 1}, out_root=tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["summary"]["reproduced_max_row_gap"]["lora"] < 1e-3
    assert {row["variant"] for row in results["table"]} >= {"full", "writes", "mlp", "zero", "random_s0"}
    assert results["summary"]["baseline"] is not None and "verdict_score" in results["summary"]
    assert any(row["rule"] == "identifiable" for row in results["verdict"]["retained"])
    assert {r["rule"] for r in results["seed_rules"]["retained"]} >= {"shared core", "MLP up/gate"}
    assert results["summary"]["seed_rules"]["retained"]["shared core (all)"] == "cannot run"  # one family, no K=32
    for name in ("retained.csv", "full_effects.csv", "retained_score.png", "evaluations.json"):
        assert (run_dir / name).stat().st_size > 100, name


@pytest.mark.slow
def test_toy_sweep_notebook_steers_its_readout_both_ways(tmp_path):
    """The executor check notebook (no model): results a sweep summarises, and a sign that follows the scale."""
    summaries = {}
    for scale in (2.0, -2.0):
        run_dir = run_notebook("toy_sweep", {"scale": scale, "work": 10}, out_root=tmp_path)
        results = json.loads((run_dir / "results.json").read_text())
        summaries[scale] = results["summary"]
        assert (run_dir / "effect_curve.png").stat().st_size > 5000 and results["metadata"]["vector_norm"] > 0
    assert summaries[2.0]["main"] > summaries[2.0]["baseline"] > summaries[-2.0]["main"]
    assert summaries[2.0]["side_effect"] > 0 and summaries[2.0]["baseline"] == summaries[-2.0]["baseline"]


@pytest.mark.slow
def test_playground_notebook_shows_the_widget_and_writes_one_table(tmp_path):
    """The default run (quick): the contrastive demo's vector (built in the run when that demo has not run), the
    widget, the configured table at 0, 2, 4, 8 in one batch and a summary at the configured coefficient."""
    run_dir = run_notebook("playground", {}, out_root=tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    rows = results["outputs"]["rows"]
    assert [row["coefficient"] for row in rows] == [0.0, 2.0, 4.0, 8.0]
    assert rows[0]["changed"] == 0.0 and rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert all(row["kl"] > 0 for row in rows[1:]) and rows[-1]["text"] != rows[0]["text"]
    summary = results["summary"]
    assert summary["baseline"] == 0.0 and summary["main"] == rows[1]["changed"]
    assert summary["side_effect"] == rows[1]["kl"] and results["metadata"]["layers"] == [10]
    executed = (run_dir / "playground.ipynb").read_text()
    assert "application/vnd.jupyter.widget-view+json" in executed and "steerlab-steered" in executed


PERSONA_QUICK = {"n_eval": 4, "max_new_tokens": 16, "n_random": 1, "n_boot": 200}


@pytest.mark.slow
def test_persona_compare_notebook_quick_preset(tmp_path):
    """The evaluation kit's worked example end to end: every condition in the table with intervals, the random
    control's floor stated, replies kept, the frontier figure, and a summary a sweep can collect."""
    run_dir = run_notebook("persona_compare", PERSONA_QUICK, out_root=tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    table = results["table"]
    assert {row["condition"] for row in table} == {"unsteered", "vector x0.25", "vector x0.5", "system prompt"}
    assert {row["metric"] for row in table} == {"trait", "degenerate", "fluency_nll"}
    vector_rows = [row for row in table if row["condition"].startswith("vector")]
    assert all(row["control_floor"] == pytest.approx(0.5) and row["low"] <= row["value"] <= row["high"]
               for row in vector_rows)
    assert all(len(texts) == 4 for texts in results["replies"].values())
    assert (run_dir / "frontier.png").stat().st_size > 10_000
    summary = results["summary"]
    assert summary["side_effect"] > 0 and set(summary) >= {"main", "baseline", "prompt"}


@pytest.mark.slow
def test_methods_compared_notebook_quick_preset(tmp_path):
    """Every method on identical rows end to end: each family a curve with its shared 0 point, the matched-KL table
    with a verdict per method and the nulls beside it, the suppression, the gate on both row subsets, the monitor
    with chance, and a summary a sweep can collect."""
    run_dir = run_notebook("methods_compared", {}, out_root=tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    trait = [row for row in results["table"] if row["metric"] == "trait"]
    families = {row["family"] for row in trait}
    assert {"mean_difference", "pca", "lda", "probe", "random 0", "shuffled 0", "weight (LoRA difference)",
            "system prompt", "system prompt + ablation", "gated on food x0.5"} <= families
    zero = [row for row in trait if row["coefficient"] == 0.0]
    assert len(zero) == 7 and all(row["effect"] == 0.0 and row["kl"] == 0.0 for row in zero)
    matched = results["matched"]
    assert {row["family"] for row in matched} == {"mean_difference", "pca", "lda", "probe", "weight (LoRA difference)"}
    assert all(row["beats_nulls (ours)"] in {"holds", "fails", "inconclusive", "not reached"} for row in matched)
    assert [row["condition"] for row in results["suppression"]] == ["system prompt + ablation",
                                                                    "system prompt + random ablation 0"]
    gate_rows = {(row["condition"], row["rows"]): row for row in results["gate"]["rows"]}
    assert abs(gate_rows["gated on food x0.5", "other"]["effect"]) < 1e-3 or results["gate"]["eval_accuracy"] < 1
    assert {row["direction"] for row in results["monitor"]} == {"mean_difference", "pca", "lda", "probe", "random 0",
                                                                "shuffled 0"}
    assert (run_dir / "frontier.png").stat().st_size > 10_000
    summary = results["summary"]
    assert summary["side_effect"] > 0 and set(summary) >= {"main", "baseline", "prompt", "best_at_kl"}
    assert set(results["scores"]) == set(results["replies"])  # per-question scores kept for re-scoring
