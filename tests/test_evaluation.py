"""The one call (lib.kits.evaluation.compare) against separate runs of each condition: batching vectors, prompts
and unsteered rows into one pass, and a delta into its own, must give each condition exactly what it gets alone."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from conftest import ByteTokenizer

from lib.choice_evals import AnswerFormat
from lib.evals import NEUTRAL_INSTRUCTION
from lib.generation import render_chat
from lib.hooks import steer
from lib.kits.choice_data import Item
from lib.kits.evaluation import (
    ContinuationPair,
    GeneratedText,
    TwoChoice,
    compare,
    prompted,
    side_effect_kl,
    steered,
    unsteered,
    with_delta,
)
from lib.kits.two_choice import score_both_orders
from lib.models import hidden_size, tiny_model
from lib.vectors import SteeringVector
from lib.weights import WeightDelta, apply_delta

AB = AnswerFormat("ab_paren", "A", "B", "\nAnswer with (A) or (B).", "(")
NEUTRAL = ["The weather was mild.", "Lists can be long."]


def _setup():
    model, tokenizer = tiny_model("llama", seed=7), ByteTokenizer(chat=True)
    vector = SteeringVector({1: torch.randn(hidden_size(model), generator=torch.Generator().manual_seed(1)) * 0.05})
    name = "model.layers.0.mlp.down_proj.weight"
    delta = WeightDelta({name: torch.randn_like(model.get_submodule(name.rsplit(".", 1)[0]).weight) * 0.05})
    conditions = [unsteered(), steered("vector", vector, 3.0), prompted("persona", system="You are a pirate."),
                  with_delta("delta", delta, 1.0), steered("both", vector, -2.0, system="Be terse.")]
    return model, tokenizer, vector, delta, conditions


def _items(n: int = 4) -> list[Item]:
    return [Item(f"q{i}", f"Question {i}?", f"yes thing {i}", f"no thing {i}", i % 2 == 0) for i in range(n)]


def test_two_choice_conditions_batched_equal_each_condition_alone():
    model, tokenizer, vector, delta, conditions = _setup()
    items = _items()
    table = compare(model, tokenizer, conditions, TwoChoice(items, AB), baseline="unsteered", neutral_texts=NEUTRAL,
                    n_boot=200)

    def alone(system=None):
        return score_both_orders(model, tokenizer, items, AB, system=system, progress=False)

    with torch.no_grad():
        expected = {"unsteered": alone()}
        with steer(model, vector, 3.0):
            expected["vector"] = alone()
        expected["persona"] = alone("You are a pirate.")
        with apply_delta(model, delta, 1.0):
            expected["delta"] = alone()
        with steer(model, vector, -2.0):
            expected["both"] = alone("Be terse.")
    for name, scored in expected.items():
        for metric in ("content", "position_bias", "pmass"):
            row = table[(table.condition == name) & (table.metric == metric)].iloc[0]
            assert row["value"] == pytest.approx(float(getattr(scored, metric).double().mean()), abs=1e-5), \
                (name, metric)
            difference = getattr(scored, metric).double() - getattr(expected["unsteered"], metric).double()
            assert row["effect"] == pytest.approx(float(difference.mean()), abs=1e-5)
            assert row["effect_low"] <= row["effect"] <= row["effect_high"]
    assert set(table.metric) == {"content", "position_bias", "pmass"}
    assert table.comparisons.iloc[0] == 12  # 4 conditions beside the baseline x 3 metrics


def _hand_kl(model, tokenizer, system, texts, context=None) -> float:
    """KL(unsteered || condition) per token of each text read as the reply to the neutral instruction, one plain
    unpadded forward per text and side."""
    total, count = 0.0, 0
    for text in texts:
        sides = []
        for side, which in enumerate((None, system)):
            prompt = tokenizer(render_chat(tokenizer, NEUTRAL_INSTRUCTION, system=which), add_special_tokens=False)
            ids = prompt["input_ids"] + tokenizer(text, add_special_tokens=False)["input_ids"]
            with torch.no_grad(), (context() if context is not None and side == 1 else contextlib.nullcontext()):
                logits = model(input_ids=torch.tensor([ids])).logits[0].double()
            n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            sides.append(torch.log_softmax(logits[len(ids) - n - 1: len(ids) - 1], dim=-1))
        total += float((sides[0].exp() * (sides[0] - sides[1])).sum())
        count += sides[0].shape[0]
    return total / count


def test_side_effect_kl_of_a_prompt_and_a_vector_by_hand():
    model, tokenizer, vector, delta, conditions = _setup()
    kls = side_effect_kl(model, tokenizer, conditions, NEUTRAL)
    assert kls["unsteered"] == pytest.approx(0.0, abs=1e-7)
    assert kls["persona"] == pytest.approx(_hand_kl(model, tokenizer, "You are a pirate.", NEUTRAL), rel=1e-4)
    assert kls["vector"] == pytest.approx(_hand_kl(model, tokenizer, None, NEUTRAL,
                                                   lambda: steer(model, vector, 3.0)), rel=1e-4)
    assert kls["delta"] == pytest.approx(_hand_kl(model, tokenizer, None, NEUTRAL,
                                                  lambda: apply_delta(model, delta, 1.0)), rel=1e-4)


def test_continuations_and_generated_text_and_random_controls():
    model, tokenizer, vector, _, conditions = _setup()
    pair = ContinuationPair(["Say it", "Tell me"], ["arr", "ahoy"], ["hello", "hi"])
    table = compare(model, tokenizer, conditions[:3], pair, baseline="unsteered", neutral_texts=NEUTRAL,
                    n_random=2, n_boot=200)
    row = table[table.condition == "vector"].iloc[0]
    assert row["control_floor"] == pytest.approx(1 / 3) and row["control_p"] in (pytest.approx(1 / 3),
                                                                                pytest.approx(2 / 3), 1.0)
    assert np.isnan(table[table.condition == "persona"].iloc[0].get("control_p", np.nan))
    lengths = GeneratedText(["Hi", "Go"], {"length": lambda prompts, texts: [len(t) for t in texts]}, main="length",
                            max_new_tokens=3)
    table = compare(model, tokenizer, conditions[:2], lengths, baseline="unsteered", neutral_texts=NEUTRAL,
                    n_boot=200)
    assert set(table.metric) == {"degenerate", "length", "fluency_nll"}
    assert set(lengths.texts) == {"unsteered", "vector"}
    from lib.evals import continuation_logprobs

    texts = lengths.texts["vector"]
    nonempty = [i for i, t in enumerate(texts) if tokenizer(t, add_special_tokens=False)["input_ids"]]
    if nonempty:  # the plain model's NLL of the steered replies, by the independent call
        by_hand = -continuation_logprobs(model, tokenizer, [["Hi", "Go"][i] for i in nonempty],
                                         [texts[i] for i in nonempty], progress=False).double().mean()
        row = table[(table.condition == "vector") & (table.metric == "fluency_nll")].iloc[0]
        assert row["value"] == pytest.approx(float(by_hand), abs=1e-5)
    with pytest.raises(ValueError, match="unique"):
        compare(model, tokenizer, [unsteered(), unsteered()], pair)
    with pytest.raises(ValueError, match="needs baseline"):
        compare(model, tokenizer, conditions[:2], pair, n_random=1)


def test_generated_text_with_random_controls_scores_fluency_for_the_controls_too():
    model, tokenizer, vector, _, conditions = _setup()
    lengths = GeneratedText(["Hi", "Go"], {"length": lambda prompts, texts: [len(t) for t in texts]}, main="length",
                            max_new_tokens=2)
    table = compare(model, tokenizer, conditions[:2], lengths, baseline="unsteered", neutral_texts=NEUTRAL[:1],
                    n_random=1, n_boot=200)
    rows = table[table.condition == "vector"].set_index("metric")
    assert set(rows.index) == {"degenerate", "length", "fluency_nll"} and (rows.control_floor == 0.5).all()
