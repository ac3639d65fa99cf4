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
from lib.generation import generate, render_chat
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


def test_continuations_and_generated_replies_batched_equal_each_condition_alone():
    """The unit-major layout (one prompt under every condition, then the next) hands every condition its own rows:
    each condition's replies and continuation log-probs are those of a run of it alone."""
    from lib.evals import continuation_logprobs
    from lib.generation import generate

    model, tokenizer, vector, _, conditions = _setup()
    chosen = [conditions[0], conditions[1], conditions[2], steered("vector x-2", vector, -2.0)]
    prompts = ["Hi", "Go on then", "Why?"]
    replies = GeneratedText(prompts, {}, main="degenerate", max_new_tokens=4)
    compare(model, tokenizer, chosen, replies, neutral_texts=NEUTRAL, n_boot=200)
    pair = ContinuationPair(prompts, ["arr", "ahoy there", "yo"], ["hello", "hi", "hey you"])
    table = compare(model, tokenizer, chosen, pair, neutral_texts=NEUTRAL, n_boot=200)
    for condition in chosen:
        context = steer(model, vector, condition.coefficient) if condition.vector is not None else \
            contextlib.nullcontext()
        with torch.no_grad(), context:
            texts = generate(model, tokenizer, prompts, max_new_tokens=4, system=condition.system, progress=False)
            asked = [p if condition.system is None else [{"role": "system", "content": condition.system},
                                                         {"role": "user", "content": p}] for p in prompts]
            target = continuation_logprobs(model, tokenizer, asked, pair.target, progress=False).double()
            baseline = continuation_logprobs(model, tokenizer, asked, pair.baseline, progress=False).double()
        assert replies.texts[condition.name] == texts, condition.name
        got = table[(table.condition == condition.name) & (table.metric == "logprob_difference")].iloc[0]["value"]
        assert got == pytest.approx(float((target - baseline).mean()), abs=1e-5), condition.name


def _hand_kl(model, tokenizer, system, texts, context=None, prefix="") -> float:
    """KL(unsteered || condition) per token of each text read as the reply to the neutral instruction (with
    `prefix` before it on the condition's side), one plain unpadded forward per text and side."""
    total, count = 0.0, 0
    for text in texts:
        sides = []
        for side, which in enumerate((None, system)):
            instruction = (prefix if side == 1 else "") + NEUTRAL_INSTRUCTION
            prompt = tokenizer(render_chat(tokenizer, instruction, system=which), add_special_tokens=False)
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
    assert kls["both"] == pytest.approx(_hand_kl(model, tokenizer, "Be terse.", NEUTRAL,
                                                 lambda: steer(model, vector, -2.0)), rel=1e-4)
    prefixed = side_effect_kl(model, tokenizer, [prompted("prefix", prefix="Talk like a pirate. ")], NEUTRAL)
    assert prefixed["prefix"] > 1e-4  # a prefix changes the neutral reply's context: never a silent zero
    assert prefixed["prefix"] == pytest.approx(_hand_kl(model, tokenizer, None, NEUTRAL,
                                                        prefix="Talk like a pirate. "), rel=1e-4)
    with pytest.raises(ValueError, match="rendering='raw'"):
        side_effect_kl(model, tokenizer, conditions, NEUTRAL, rendering="raw")


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


# ----------------------------------------------------------------------------- a coefficient grid


def _hand_pair(model, tokenizer, prompts, targets, baseline_prompts, baselines, context) -> np.ndarray:
    """Per unit: mean log p per token of the target after its prompt minus the baseline after its own, one
    unpadded row at a time inside `context` (a hand hook or a hand weight edit)."""
    from conftest import hand_reply_logprob

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    out = []
    with context():
        for p, t, q, b in zip(prompts, targets, baseline_prompts, baselines, strict=True):
            out.append(hand_reply_logprob(model, ids(render_chat(tokenizer, p)), ids(t))
                       - hand_reply_logprob(model, ids(render_chat(tokenizer, q)), ids(b)))
    return np.array(out)


@contextlib.contextmanager
def _hand_edit(model, delta, coefficient):
    """The delta added to the weights by hand and the saved copy put back."""
    saved = {name: model.get_parameter(name).detach().clone() for name in delta.names}
    with torch.no_grad():
        for name in delta.names:
            model.get_parameter(name).add_(coefficient * delta[name])
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                model.get_parameter(name).copy_(value)


def test_a_grid_runs_every_coefficient_and_reads_as_curves_matched_kl_and_slopes_by_hand():
    from conftest import hand_steering

    from lib.kits.evaluation import at_matched_kl, curves, on_grid, slopes

    model, tokenizer, vector, delta, _ = _setup()
    prompts, baseline_prompts = ["Say it", "Tell me", "Go on"], ["Write", "Explain", "Answer"]
    targets, baselines = ["arr matey", "ahoy", "yo ho"], ["hello there", "hi", "good day"]
    pair = ContinuationPair(prompts, targets, baselines, baseline_prompts=baseline_prompts)
    grid = [-2.0, -1.0, 0.0, 1.0, 2.0]
    conditions = [unsteered(), steered("vector", vector, 1.0), with_delta("delta", delta, 1.0),
                  prompted("persona", system="You are a pirate.")]
    table = compare(model, tokenizer, conditions, pair, coefficients=grid, baseline="unsteered",
                    neutral_texts=NEUTRAL, n_boot=200)
    main = table[table.metric == "logprob_difference"]
    assert len(main) == 2 + 2 * len(grid)  # unsteered, persona, and both families at every coefficient
    assert set(table.metric) == {"logprob_difference", "target_logprob", "baseline_logprob"}
    plain = _hand_pair(model, tokenizer, prompts, targets, baseline_prompts, baselines, contextlib.nullcontext)
    by_hand = {}
    for c in grid:
        by_hand[("vector", c)] = _hand_pair(model, tokenizer, prompts, targets, baseline_prompts, baselines,
                                            lambda c=c: hand_steering(model, {1: c * vector[1]}))
        by_hand[("delta", c)] = _hand_pair(model, tokenizer, prompts, targets, baseline_prompts, baselines,
                                           lambda c=c: _hand_edit(model, delta, c))
    for (family, c), values in by_hand.items():
        row = main[main.condition == f"{family}@{c:g}"].iloc[0]
        assert row["family"] == family and row["coefficient"] == c
        assert row["value"] == pytest.approx(values.mean(), abs=1e-5), (family, c)
        assert row["effect"] == pytest.approx((values - plain).mean(), abs=1e-5), (family, c)
    assert table[table.condition == "vector@0"].kl.iloc[0] == pytest.approx(0.0, abs=1e-7)

    curve = curves(table)
    assert list(curve[curve.family == "vector"].coefficient) == grid
    target = float(curve[(curve.family == "vector") & (curve.coefficient == 2.0)].kl.iloc[0]) * 0.6
    matched = at_matched_kl(table, [target]).set_index(["family", "side"])
    positive = curve[(curve.family == "vector") & (curve.coefficient >= 0)]
    assert positive.kl.is_monotonic_increasing
    assert matched.loc[("vector", "+"), "effect"] == pytest.approx(
        np.interp(target, positive.kl, positive.effect), abs=1e-9)
    assert set(matched.index) == {("vector", "+"), ("vector", "-"), ("delta", "+"), ("delta", "-")}
    assert np.isnan(at_matched_kl(table, [1e6]).effect).all()  # no curve reaches it: NaN, never extrapolated

    fitted = slopes(table, linear_up_to=1.0).set_index("family")
    small = [-1.0, 0.0, 1.0]
    units = np.array([by_hand[("vector", c)] for c in small]).T  # [units, coefficients]
    per_unit = np.array([np.polyfit(small, row, 1)[0] for row in units])
    assert fitted.loc["vector", "steerability"] == pytest.approx(per_unit.mean(), abs=1e-5)
    assert fitted.loc["vector", "fraction_anti_steerable"] == pytest.approx(
        np.mean(np.sign(per_unit) == -np.sign(per_unit.mean())))

    names = [c.name for c in on_grid(conditions, [0.5, 1.0])]
    assert names == ["unsteered", "vector@0.5", "vector@1", "delta@0.5", "delta@1", "persona"]
    with pytest.raises(ValueError, match="repeats"):
        on_grid(conditions, [1.0, 1.0])
    with pytest.raises(ValueError, match="empty"):
        on_grid(conditions, [])
    with pytest.raises(ValueError, match="disagree"):
        compare(model, tokenizer, conditions, pair, baseline="unsteered", n_random=3, control_floor=0.5)
    with pytest.raises(ValueError, match="one target and one baseline per unit"):
        ContinuationPair(prompts, targets, baselines[:2])


def test_control_floor_sets_the_number_of_random_controls_and_deltas_get_kl_matched_ones():
    model, tokenizer, vector, delta, _ = _setup()
    pair = ContinuationPair(["Say it", "Tell me"], ["arr", "ahoy"], ["hello", "hi"])
    table = compare(model, tokenizer, [unsteered(), steered("vector", vector, 3.0), with_delta("delta", delta, 4.0)],
                    pair, baseline="unsteered", control_floor=0.5, neutral_texts=NEUTRAL, n_boot=200)
    for name in ("vector", "delta"):
        row = table[table.condition == name].iloc[0]
        assert row["n_random"] == 1 and row["control_floor"] == 0.5
        assert row["random_kl"] == pytest.approx(row["kl"], rel=0.05)  # matched in KL, measured again


def test_a_deltas_grid_is_controlled_along_one_curve_per_seed(monkeypatch):
    """A delta on a grid with 2 controls: one search per seed covers every coefficient (catches: a search per grid
    point again), each control's KL measured anew is within 5% of its point's, and a coefficient no scale reaches is
    noted and warned while the others keep their controls (catches: one failure dropping the grid)."""
    import lib.kits.evaluation as evaluation
    from lib.kits.controls import KLUnreachable

    model, tokenizer, _, delta, _ = _setup()
    pair = ContinuationPair(["Say it", "Tell me"], ["arr", "ahoy"], ["hello", "hi"])
    calls = []
    real = evaluation.kl_matched_random_deltas

    def spy(*args, **kwargs):
        calls.append(dict(args[3]))
        found = real(*args, **kwargs)
        found[-2.0] = KLUnreachable("closest: KL 0.01")
        return found

    monkeypatch.setattr(evaluation, "kl_matched_random_deltas", spy)
    with pytest.warns(UserWarning, match="no KL-matched random control"):
        table = compare(model, tokenizer, [unsteered(), with_delta("delta", delta, 1.0)], pair,
                        coefficients=[-2.0, 0.0, 2.0, 4.0], baseline="unsteered", n_random=2, neutral_texts=NEUTRAL,
                        n_boot=200)
    assert len(calls) == 2 and all(sorted(c) == [-2.0, 2.0, 4.0] for c in calls)
    rows = table[table.metric == table.attrs["main"]].set_index("condition")
    for name in ("delta@2", "delta@4"):
        assert rows.loc[name, "n_random"] == 2
        assert rows.loc[name, "random_kl"] == pytest.approx(rows.loc[name, "kl"], rel=0.05)
    assert "closest: KL 0.01" in rows.loc["delta@-2", "control_note"] and np.isnan(rows.loc["delta@-2", "control_p"])


def test_a_control_that_cannot_reach_the_kl_is_noted_and_warned_never_dropped(monkeypatch):
    """In a small model a random direction's KL can saturate below the vector's (seen on the tiny Llama): the row
    says so in control_note, has no p-value, and a warning is raised (catches: the failure swallowed, or fatal)."""
    import lib.kits.evaluation as evaluation
    from lib.kits.controls import KLUnreachable

    def unreachable(*args, **kwargs):
        raise KLUnreachable("no scale reached KL 0.5 within 5% (closest: KL 0.2)")

    monkeypatch.setattr(evaluation, "kl_matched_randoms", unreachable)
    model, tokenizer, vector, _, conditions = _setup()
    pair = ContinuationPair(["Say it", "Tell me"], ["arr", "ahoy"], ["hello", "hi"])
    with pytest.warns(UserWarning, match="no KL-matched random control"):
        table = compare(model, tokenizer, conditions[:2], pair, baseline="unsteered", n_random=2,
                        neutral_texts=NEUTRAL, n_boot=200)
    row = table[(table.condition == "vector") & (table.metric == "logprob_difference")].iloc[0]
    assert "closest: KL 0.2" in row["control_note"] and np.isnan(row.get("control_p", np.nan))


def test_side_effect_kl_of_vectors_at_different_layers_each_by_hand():
    """Two vector conditions at other layers (and one unsteered) in one call: each gets its own KL, by hand
    (catches: conditions with other layers batched under one placement, or refused)."""
    model, tokenizer, vector, _, _ = _setup()
    wide = SteeringVector({0: vector[1], 1: vector[1]})
    conditions = [unsteered(), steered("layer 0", wide, 3.0, layers=(0,)), steered("layer 1", wide, 3.0, layers=(1,))]
    kls = side_effect_kl(model, tokenizer, conditions, NEUTRAL)
    for name, layer in (("layer 0", 0), ("layer 1", 1)):
        assert kls[name] == pytest.approx(_hand_kl(model, tokenizer, None, NEUTRAL,
                                                   lambda layer=layer: steer(model, {layer: wide[layer]}, 3.0)),
                                          rel=1e-4)
    assert kls["layer 0"] != pytest.approx(kls["layer 1"])


def test_an_ablated_and_a_gated_condition_equal_their_interventions_alone():
    from lib.ablation import ablate
    from lib.gates import Gate
    from lib.kits.evaluation import ablated, gated

    model, tokenizer, vector, _, _ = _setup()
    direction = torch.randn(hidden_size(model), generator=torch.Generator().manual_seed(3))
    gate = Gate(direction, layer=1, threshold=0.0)
    items = _items()
    table = compare(model, tokenizer, [unsteered(), ablated("ablated", direction), gated("gated", vector, 3.0, gate)],
                    TwoChoice(items, AB), neutral_texts=NEUTRAL, n_boot=200)
    with torch.no_grad():
        with ablate(model, direction):
            alone = score_both_orders(model, tokenizer, items, AB, progress=False)
        with steer(model, vector, 3.0, gate=Gate(direction, 1, 0.0)):
            gated_alone = score_both_orders(model, tokenizer, items, AB, progress=False)
    for name, scored in (("ablated", alone), ("gated", gated_alone)):
        row = table[(table.condition == name) & (table.metric == "content")].iloc[0]
        assert row["value"] == pytest.approx(float(scored.content.double().mean()), abs=1e-5), name
        assert row["kl"] > 0


def test_every_coefficient_zero_point_is_the_unsteered_model_scored_once():
    """A grid's 0 point of a vector and of a delta is the plain model: compare scores it once (as the first plain
    condition) and gives every plain condition those scores and replies, never a pass per family."""
    model, tokenizer, vector, delta, _ = _setup()
    prompts = ["Say it", "Tell me"]
    calls: list[list[str]] = []

    class Spy(GeneratedText):
        def write(self, model, tokenizer, conditions, batch_size):
            calls.append([c.name for c in conditions])
            return super().write(model, tokenizer, conditions, batch_size)

    scorer = Spy(prompts, {"length": lambda p, texts: [float(len(t)) for t in texts]}, main="length",
                 max_new_tokens=4)
    conditions = [unsteered(), steered("vector", vector, 1.0), with_delta("delta", delta, 1.0)]
    table = compare(model, tokenizer, conditions, scorer, coefficients=[0.0, 2.0], baseline="unsteered",
                    neutral_texts=NEUTRAL, n_boot=200)
    ran = [name for names in calls for name in names]
    assert "vector@0" not in ran and "delta@0" not in ran and ran.count("unsteered") == 1
    assert "vector@2" in ran and "delta@2" in ran
    for name in ("vector@0", "delta@0"):
        assert scorer.texts[name] == scorer.texts["unsteered"]
        assert table.attrs["scores"][name] == table.attrs["scores"]["unsteered"]
        rows = table[(table.condition == name) & (table.metric == "length")].iloc[0]
        assert rows["effect"] == 0.0 and rows["kl"] == 0.0
    plain = generate(model, tokenizer, prompts, max_new_tokens=4, progress=False)  # the independent route
    assert scorer.texts["delta@0"] == plain


def test_replies_are_written_under_each_condition_and_judged_by_the_plain_model():
    """A judge that reads replies with the model must read every condition's replies with the plain model: the
    delta, the ablation and the gate change what is written, not the reader. Independent route: each intervention
    alone writes the replies, then the plain model scores them. Catches the judge run inside the condition's weights
    or context (the scores of a delta's replies were read by the delta-edited model)."""
    from lib.ablation import ablate
    from lib.gates import Gate
    from lib.kits.evaluation import ablated, fluency_nll, gated

    model, tokenizer, vector, delta, _ = _setup()
    prompts = ["Say it", "Tell me", "Go on"]
    direction = torch.randn(hidden_size(model), generator=torch.Generator().manual_seed(3))

    def judge(texts_prompts, texts):  # reads with whatever weights the model has when called
        return fluency_nll(model, tokenizer, texts_prompts, texts)

    scorer = GeneratedText(prompts, {"nll": judge}, main="nll", max_new_tokens=5)
    conditions = [unsteered(), with_delta("delta", delta, 4.0), ablated("ablated", direction),
                  gated("gated", vector, 30.0, Gate(direction, 1, -1.0))]
    table = compare(model, tokenizer, conditions, scorer, neutral_texts=NEUTRAL, n_boot=200)
    routes = {"delta": lambda: apply_delta(model, delta, 4.0), "ablated": lambda: ablate(model, direction),
              "gated": lambda: steer(model, vector, 30.0, gate=Gate(direction, 1, -1.0))}
    for name, route in routes.items():
        with route():
            texts = generate(model, tokenizer, prompts, max_new_tokens=5, progress=False)
        assert scorer.texts[name] == texts, name
        np.testing.assert_allclose(table.attrs["scores"][name]["nll"], fluency_nll(model, tokenizer, prompts, texts),
                                   rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=name)
        with route():  # what the bug gave: the same replies read by the intervened model, which differs
            inside = fluency_nll(model, tokenizer, prompts, texts)
        assert not np.allclose(inside, table.attrs["scores"][name]["nll"], equal_nan=True), name


def test_compare_shows_a_bar_per_stage_and_none_when_asked_not_to(capsys):
    """A grid of deltas runs for minutes: each stage ticks a bar on stderr (catches: a stage's bar dropped, or
    `progress` not passed down), and progress=False is silent (catches: the flag ignored)."""
    model, tokenizer, _, _, conditions = _setup()
    pair = ContinuationPair(["Say it", "Tell me"], ["arr", "ahoy"], ["hello", "hi"])
    compare(model, tokenizer, conditions, pair, neutral_texts=NEUTRAL, n_boot=200, progress=False)
    assert capsys.readouterr().err == ""
    compare(model, tokenizer, conditions, pair, neutral_texts=NEUTRAL, n_boot=200)
    err = capsys.readouterr().err
    assert "compare: score" in err and "compare: KL" in err
