"""The weight-steering experiment's tables (seed statistics, matched side effects) and its side-effect KL."""

from __future__ import annotations

import pytest
import torch

from lib.evals import mean_kl
from lib.experiments import weight_steering as ws
from lib.hooks import Steering
from lib.kits import choice_data
from lib.models import embedded_model_dir, tiny_model
from lib.vectors import SteeringVector
from lib.weights import WeightDelta, apply_delta


def _entry(method, coeff, score, kl, seed=-1, adapter="-", behaviour="honesty"):
    return {"behaviour": behaviour, "method": method, "adapter": adapter, "seed": seed, "coeff": coeff, "score": score,
            "pmass": 0.9, "frac_low_pmass": 0.0, "kl": kl, "n": 10}


def test_tables_on_hand_made_entries():
    entries = [_entry("none", 0.0, 0.1, 0.0), _entry("prompt_simple", 1.0, 0.4, 0.3),
               _entry("prompt_simple", -1.0, 0.0, 0.05)]
    for seed, (up, down) in enumerate([(0.3, 0.0), (0.2, -0.1), (0.0, -0.3)]):
        entries += [_entry("weight", 1.0, up, 0.02, seed, "lora"), _entry("weight", -1.0, down, 0.02, seed, "lora"),
                    _entry("weight", 4.0, 1.1, 0.9, seed, "lora")]
    table = ws.comparison_table(entries)
    assert table[table.method == "prompt_simple"].score_delta.tolist() == pytest.approx([-0.1, 0.3])
    seeds = ws.seed_table(table).set_index("coeff")
    assert seeds.loc[1.0, "delta_mean"] == pytest.approx(0.2 / 3)
    assert seeds.loc[1.0, "delta_std"] == pytest.approx(0.1527525, abs=1e-6)
    assert seeds.loc[1.0, "sign_agreement"] == pytest.approx(2 / 3)  # one seed of three goes the other way
    assert seeds.loc[-1.0, "sign_agreement"] == pytest.approx(1.0) and seeds.loc[1.0, "n_seeds"] == 3
    matched = ws.matched_table(table, kl_budget=0.25).set_index("method")
    assert matched.loc["weight", "up_coeff"] == 1.0  # coeff 4 has the larger delta but KL 0.9 > budget
    assert matched.loc["weight", "up_delta"] == pytest.approx(0.2 / 3)
    assert matched.loc["weight", "down_delta"] == pytest.approx(-0.7 / 3)  # deltas -0.1, -0.2, -0.4
    assert pd_isna(matched.loc["prompt_simple", "up_delta"])  # the positive prompt costs KL 0.3 > budget
    assert matched.loc["prompt_simple", "down_delta"] == pytest.approx(-0.1)


def pd_isna(value):
    import pandas as pd

    return pd.isna(value)


@pytest.fixture(scope="module")
def small():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    tokenizer.padding_side = "left"
    return tiny_model("llama", n_layers=2, hidden=64, vocab=len(tokenizer), seed=8), tokenizer


def test_neutral_kl_is_zero_for_the_base_and_positive_for_every_intervention(small):
    model, tokenizer = small
    texts = ws.NEUTRAL_TEXTS[:3]
    reference = ws.neutral_logprobs(model, tokenizer, texts, batch_size=2)
    assert [len(r) for r in reference] == [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    again = ws.neutral_logprobs(model, tokenizer, texts, batch_size=3)
    assert mean_kl(reference, again) == pytest.approx(0, abs=1e-6)
    prompted = ws.neutral_logprobs(model, tokenizer, texts, system="You are a dishonest person.")
    assert mean_kl(reference, prompted) > 1e-4
    steering = Steering(SteeringVector({1: torch.randn(64, generator=torch.Generator().manual_seed(1))}))
    for coefficient, expect_zero in ((0.0, True), (4.0, False)):
        kl = mean_kl(reference, ws.neutral_logprobs(model, tokenizer, texts, steering=steering,
                                                       coefficient=coefficient))
        assert (kl == pytest.approx(0, abs=1e-6)) if expect_zero else kl > 1e-4
    name = "model.layers.0.mlp.down_proj.weight"
    delta = WeightDelta({name: 0.05 * torch.randn(model.get_parameter(name).shape)})
    with apply_delta(model, delta, 1.0):
        assert mean_kl(reference, ws.neutral_logprobs(model, tokenizer, texts)) > 1e-6


def test_first_bias_is_recovered_from_signed_row_scores():
    items = choice_data.load_honesty()[:4]  # signs +1, -1, +1, -1
    state = {"split_ids": {"test": [item.id for item in items]},
             "entries": [{"row_scores": [0.5, -0.5, 0.5, -0.5]},
                         {"row_scores": [1.0, 1.0, 0.0, 0.0], "first_bias": 7.0}]}
    ws.add_first_bias(state, "honesty")
    assert state["entries"][0]["first_bias"] == pytest.approx(0.5)  # prefers (A) everywhere, signed mean 0
    assert state["entries"][1]["first_bias"] == 7.0  # recorded values are kept


def test_rows_digest_changes_with_any_prompt():
    split = choice_data.split_items(choice_data.load_honesty(), 4, 2, 4, seed=0)
    fmt = ws.FORMATS["ab_paren"]
    digest = ws.rows_digest("honesty", fmt, split)
    again = choice_data.split_items(choice_data.load_honesty(), 4, 2, 4, seed=0)
    assert ws.rows_digest("honesty", fmt, again) == digest
    assert ws.rows_digest("honesty", ws.FORMATS["yesno"], split) != digest
    changed = dict(split, test=[choice_data.Item(i.id, i.question + " ", i.first, i.second, i.first_is_target)
                                for i in split["test"]])
    assert ws.rows_digest("honesty", fmt, changed) != digest
