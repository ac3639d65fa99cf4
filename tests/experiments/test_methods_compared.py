"""methods_compared's steps on hand-made numbers and tiny activations: the directions by hand, the nulls, the
matched-KL verdict, the suppression and gate tables, and the monitor's AUROC."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lib.experiments import methods_compared as steps
from lib.experiments.methods_compared import MethodsComparedConfig
from lib.kits.controls import shuffled_labels
from lib.kits.persona import FOOD_QUESTIONS, QUESTIONS


def _acts(seed: int, n: int = 6, hidden: int = 8) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    shift = torch.randn(hidden, generator=generator)
    neutral = torch.randn(n, hidden, generator=generator)
    return {3: neutral + shift + 0.3 * torch.randn(n, hidden, generator=generator)}, {3: neutral}


def test_every_estimator_is_its_unit_direction_times_the_residual_norm():
    trait, neutral = _acts(0)
    vectors = steps.estimator_vectors(trait, neutral, 3, ["mean_difference", "pca", "lda", "probe"], norm=7.0)
    by_hand = trait[3].mean(0) - neutral[3].mean(0)
    torch.testing.assert_close(vectors["mean_difference"][3], by_hand / by_hand.norm() * 7.0)
    for name, vector in vectors.items():
        assert float(vector[3].norm()) == pytest.approx(7.0, rel=1e-5), name
        assert vector.layers == [3] and vector.meta["method"] == name
        # each estimator points the trait's way (positive projection of the mean difference)
        assert float(vector[3] @ by_hand) > 0, name


def test_shuffled_null_directions_are_mean_differences_of_shuffled_labels_by_hand():
    trait, neutral = _acts(1)
    nulls = steps.shuffled_vectors(trait, neutral, 3, 2, norm=2.0, seed=5)
    pooled = torch.cat([trait[3], neutral[3]])
    labels = shuffled_labels([True] * 6 + [False] * 6, 2, seed=5)
    real = trait[3].mean(0) - neutral[3].mean(0)
    for null, shuffled in zip(nulls, labels, strict=True):
        mask = torch.tensor(shuffled)
        by_hand = pooled[mask].mean(0) - pooled[~mask].mean(0)
        torch.testing.assert_close(null[3], by_hand / by_hand.norm() * 2.0)
        assert not torch.allclose(null[3] / 2.0, real / real.norm())
    assert steps.shuffled_vectors(trait, neutral, 3, 0, norm=2.0) == []


def _curve_rows(family: str, kls: list[float], effects: list[float], half_width: float) -> list[dict]:
    return [{"condition": f"{family}@{c:g}", "family": family, "coefficient": c, "metric": "trait", "kl": kl,
             "value": e, "effect": e, "effect_low": e - half_width, "effect_high": e + half_width}
            for c, kl, e in zip([0.0, 0.5, 1.0], kls, effects, strict=True)]


def test_matched_table_reads_each_curve_at_the_budget_and_judges_it_against_the_largest_null():
    rows = (_curve_rows("mean_difference", [0.0, 0.1, 0.3], [0.0, 0.5, 1.0], 0.1)
            + _curve_rows("probe", [0.0, 0.2, 0.4], [0.0, 0.1, 0.2], 0.02)
            + _curve_rows("lda", [0.0, 0.1, 0.2], [0.0, 0.3, 0.4], 0.3)
            + _curve_rows("pca", [0.0, 0.01, 0.02], [0.0, 0.3, 0.4], 0.3)
            + _curve_rows("random 0", [0.0, 0.1, 0.4], [0.0, 0.1, -0.2], 0.1)
            + _curve_rows("shuffled 0", [0.0, 0.2, 0.3], [0.0, -0.15, 0.0], 0.1))
    table = pd.DataFrame(rows)
    table.attrs["main"] = "trait"
    matched = steps.matched_table(table, [0.1]).set_index("family")
    # nulls at KL 0.1: random 0.1, shuffled -0.075 (interpolated): the largest |effect| is 0.1
    assert matched.null_max_abs.iloc[0] == pytest.approx(0.1)
    assert matched.loc["mean_difference", "effect"] == pytest.approx(0.5)
    assert matched.loc["mean_difference", "beats_nulls (ours)"] == "holds"  # 0.4 > 0.1
    assert matched.loc["probe", "effect"] == pytest.approx(0.05)
    assert matched.loc["probe", "beats_nulls (ours)"] == "fails"  # [0.03, 0.07] lies below 0.1
    assert matched.loc["lda", "beats_nulls (ours)"] == "inconclusive"  # [0.0, 0.6] straddles 0.1
    assert matched.loc["pca", "beats_nulls (ours)"] == "not reached"  # its curve ends at KL 0.02
    assert set(matched.index) == {"mean_difference", "probe", "lda", "pca"}  # nulls are not rows of their own


def test_matched_table_fails_a_curve_whose_interval_lies_below_the_null():
    table = pd.DataFrame(_curve_rows("mean_difference", [0.0, 0.1, 0.3], [0.0, 0.05, 0.1], 0.01)
                         + _curve_rows("random 0", [0.0, 0.1, 0.4], [0.0, 0.3, 0.5], 0.1))
    table.attrs["main"] = "trait"
    assert steps.matched_table(table, [0.1])["beats_nulls (ours)"].tolist() == ["fails"]


def test_paired_effect_drops_missing_rows_and_gives_no_interval_for_one_row():
    estimate = steps.paired_effect([1.0, 2.0, np.nan, 4.0], [0.5, 1.0, 3.0, 1.0], n_boot=1000)
    assert estimate.value == pytest.approx(np.mean([0.5, 1.0, 3.0])) and estimate.n == 3
    assert estimate.low <= estimate.value <= estimate.high
    one = steps.paired_effect([2.0], [0.5], n_boot=1000)
    assert one.value == 1.5 and np.isnan(one.low) and np.isnan(one.high)
    assert np.isnan(steps.paired_effect([], [], n_boot=1000).value)


def _scored_table(scores: dict[str, list[float]], kls: dict[str, float]) -> pd.DataFrame:
    table = pd.DataFrame([{"condition": name, "metric": "trait", "kl": kls[name]} for name in scores])
    table.attrs["scores"] = {name: {"trait": values} for name, values in scores.items()}
    return table


def test_suppression_and_gate_tables_by_hand():
    scores = {"unsteered": [0.0, 0.1, 0.2, 0.3], "system prompt": [1.0, 1.2, 0.8, 1.0],
              "system prompt + ablation": [0.2, 0.4, 0.2, 0.6], "gated": [0.9, 0.1, 0.7, 0.3],
              "ungated": [1.0, 0.6, 0.8, 0.9]}
    table = _scored_table(scores, {name: 0.1 * i for i, name in enumerate(scores)})
    suppression = steps.suppression_table(table, "trait", "system prompt", ["system prompt + ablation"], 1000)
    row = suppression.iloc[0]
    assert row.change_vs_prompt == pytest.approx(np.mean([-0.8, -0.8, -0.6, -0.4])) and row.kl == pytest.approx(0.2)
    assert row.low <= row.change_vs_prompt <= row.high < 0
    food = np.array([True, False, True, False])
    gate = steps.gate_table(table, "trait", "unsteered", "gated", "ungated", food, 1000).set_index(["condition",
                                                                                                    "rows"])
    assert gate.loc[("gated", "food"), "effect"] == pytest.approx(np.mean([0.9, 0.5]))
    assert gate.loc[("gated", "other"), "effect"] == pytest.approx(0.0)
    assert gate.loc[("ungated", "other"), "effect"] == pytest.approx(np.mean([0.5, 0.6]))
    assert (gate.n == 2).all()


def test_reply_monitor_auroc_by_hand_skips_empty_replies_and_marks_nulls():
    monitor = steps.reply_monitor({"mean_difference": [3.0, 2.0, np.nan, 1.0, 2.5],
                                   "random 0": [1.0, 1.0, 1.0, 1.0, 1.0]},
                                  [True, True, True, False, False]).set_index("direction")
    # positives 3, 2 against negatives 1, 2.5: 3>1, 3>2.5, 2>1, 2<2.5 -> 3/4
    assert monitor.loc["mean_difference", "auroc"] == pytest.approx(0.75)
    assert monitor.loc["mean_difference", "n"] == 4 and not monitor.loc["mean_difference", "null"]
    assert monitor.loc["random 0", "auroc"] == pytest.approx(0.5) and monitor.loc["random 0", "null"]


def test_food_rows_follow_the_food_questions_and_the_config_refuses_by_name():
    cfg = MethodsComparedConfig(n_train=16, n_eval=24)
    assert cfg.food_rows.tolist() == [q in FOOD_QUESTIONS for q in QUESTIONS[16:40]]
    assert cfg.food_rows.sum() == 8
    assert cfg.coefficients == [0.125, 0.25, 0.5]


@pytest.mark.parametrize(("overrides", "match"), [
    ({"trait": "angry"}, "trait='angry'"), ({"coefficients": [0.5, -1]}, "coefficients="),
    ({"coefficients": [0.5, 0.5]}, "repeats"), ({"estimators": ["mean_difference", "svm"]}, "estimators="),
    ({"estimators": ["lda"]}, "must include 'mean_difference'"), ({"gate_coefficient": 0.3}, "gate_coefficient=0.3"),
    ({"n_train": 30, "n_eval": 20}, "exceeds the 40 questions"), ({"n_train": 1}, "n_train=1"),
    ({"weight_steps": -1}, "weight_steps"), ({"kl_budgets": []}, "kl_budgets="),
])
def test_config_refuses_by_name(overrides, match):
    with pytest.raises(ValueError, match=match):
        MethodsComparedConfig(**overrides)
