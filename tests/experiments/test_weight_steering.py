"""The weight-steering experiment's tables (seed statistics, matched side effects, diverged seeds), its contrast
sources and stop points, and the journal's run folder read into the same tables (its run folder's formats, digests
and side-effect reading: tests/test_weight_runs.py)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from lib.experiments import weight_steering as ws
from lib.io import REPO_ROOT
from lib.kits import choice_data
from lib.kits import weight_runs as wr
from lib.models import embedded_model_dir, tiny_model
from lib.weights import WeightDelta


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
    return pd.isna(value)


@pytest.fixture(scope="module")
def small():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    tokenizer.padding_side = "left"
    return tiny_model("llama", n_layers=2, hidden=64, vocab=len(tokenizer), seed=8), tokenizer


def test_first_bias_is_recovered_from_signed_row_scores():
    items = choice_data.load_honesty()[:4]  # signs +1, -1, +1, -1
    state = {"split_ids": {"test": [item.id for item in items]},
             "entries": [{"row_scores": [0.5, -0.5, 0.5, -0.5]},
                         {"row_scores": [1.0, 1.0, 0.0, 0.0], "first_bias": 7.0}]}
    ws.add_first_bias(state, "honesty")
    assert state["entries"][0]["first_bias"] == pytest.approx(0.5)  # prefers (A) everywhere, signed mean 0
    assert state["entries"][1]["first_bias"] == 7.0  # recorded values are kept


# ----------------------------------------------------------------------------- contrast sources (issue 15)


def test_contrast_source_is_validated_with_the_fix_named():
    """Catches dropping `check_contrast_source(...)` from `__post_init__` (a bad source would surface mid-run) and
    its `other` test (written replies asked for sycophancy, which has none)."""
    with pytest.raises(ValueError, match=r"^contrast_source='nope' must be one of "
                                         r"\('persona', 'labelled', 'written'\)"):
        ws.WeightSteeringConfig(contrast_source="nope")
    with pytest.raises(ValueError, match=r"^contrast_source='written' has replies only for behaviours=\['honesty'\].*"
                                         r"not \['sycophancy'\]: set behaviours=\['honesty'\], or use "
                                         r"contrast_source='labelled' or 'persona'"):
        ws.WeightSteeringConfig(contrast_source="written")
    with pytest.raises(ValueError, match="not \\['daily_dilemmas'\\]"):  # the hub dilemmas have other ids
        ws.WeightSteeringConfig(contrast_source="written", behaviours=["daily_dilemmas"])
    assert ws.WeightSteeringConfig(contrast_source="written", behaviours=["honesty"]).contrast_source == "written"
    assert ws.WeightSteeringConfig(contrast_source="labelled").contrast_source == "labelled"


def _fake_persona(cfg, model, tokenizer, behaviour, train):
    prompts = [wr.open_prompt(item, behaviour) for item in train]
    return {"positive": [ws.SFTPair(p, f"persona yes {i}") for i, p in enumerate(prompts)],
            "negative": [ws.SFTPair(p, f"persona no {i}") for i, p in enumerate(prompts)]}


@pytest.mark.parametrize("source", ["persona", "labelled", "written"])
def test_adapters_and_vector_train_on_the_chosen_source(source, small, monkeypatch, tmp_path, isolated_cache):
    """run_behaviour end to end on a tiny model with adapter training captured: both adapters and the activation
    vector see exactly the chosen source's pairs, the headroom comes from the engineered prompt's own rows, and the
    contrast is measured for that source (and the offline ones) before training. Catches `contrast_pairs` ignoring
    `source` (e.g. `if source == "persona"` written `if True`) and the training loop reading the persona pairs."""
    model, tokenizer = small
    persona_calls, trained, vectors, scored = [], [], [], []
    monkeypatch.setattr(ws, "persona_pairs", lambda *a: persona_calls.append(a[3]) or _fake_persona(*a))
    build_vector = ws.activation_vector
    monkeypatch.setattr(ws, "activation_vector", lambda cfg, m, t, pairs: vectors.append(pairs) or
                        build_vector(cfg, m, t, pairs))
    measure = ws.measure_contrast
    monkeypatch.setattr(ws, "measure_contrast", lambda m, t, pairs, **k: scored.append((len(trained), pairs)) or
                        measure(m, t, pairs, **k))
    name = "model.layers.0.mlp.down_proj.weight"

    options = []

    def fake_train(base, tok, pairs, family, *, seed, **kwargs):
        trained.append(list(pairs))
        options.append(kwargs.get("lora_dropout"))
        generator = torch.Generator().manual_seed(len(trained))
        return WeightDelta({name: 0.01 * torch.randn(base.get_parameter(name).shape, generator=generator)}), [1.0]

    monkeypatch.setattr(ws, "train_adapter", fake_train)
    cfg = ws.WeightSteeringConfig(behaviours=["honesty"], contrast_source=source, n_seeds=1, n_train=6, n_val=2,
                                  n_test=4, n_paraphrases=1, weight_coeffs=[-1.0, 0.0, 1.0],
                                  vector_coeffs=[-1.0, 0.0, 1.0], vector_layers=[0, 1], batch_size=8,
                                  family_peft_options={"lora": {"lora_dropout": 0.1}})
    state = ws.run_behaviour(cfg, model, tokenizer, "honesty", tmp_path, log=lambda message: None)
    assert options == [0.1, 0.1]  # both sides train with the family's PEFT options
    assert all(e["peft_options"] == {"lora_dropout": 0.1} for e in state["entries"] if e["method"] == "weight")

    items = {item.id: item for item in choice_data.load_honesty()}
    train = [items[i] for i in state["split_ids"]["train"]]  # in the split's order
    expected = {"persona": lambda: _fake_persona(cfg, model, tokenizer, "honesty", train),
                "labelled": lambda: ws.as_sft_sides(choice_data.load_labelled_pairs("honesty")),
                "written": lambda: ws.as_sft_sides(choice_data.load_written_pairs(train))}[source]()
    assert trained == [expected["positive"], expected["negative"]]
    assert vectors == [expected]
    assert len(persona_calls) == (source == "persona")
    eval_questions = {items[i].question for i in state["split_ids"]["test"] + state["split_ids"]["val"]}
    assert not any(q in pair.prompt for q in eval_questions for side in trained for pair in side)

    assert list(state["contrast"]) == ws.measured_sources(cfg, "honesty")
    assert list(state["contrast"])[0] == source and state["contrast"][source]["trained_on"]
    assert all(n_trained == 0 for n_trained, _ in scored) and scored[0][1] == expected  # measured before training
    assert {"best_layer", "best_auc", "empty", "auc", "cosine_halves", "verdict"} <= set(state["contrast"][source])
    engineered = {e["coeff"]: e["row_scores"] for e in state["entries"] if e["method"] == "prompt_engineered"}
    diff = torch.tensor(engineered[1.0]) - torch.tensor(engineered[-1.0])
    assert state["headroom"]["mean_shift"] == pytest.approx(float(diff.mean()))
    assert (tmp_path / f"honesty_{source}_pairs.json").exists()
    results = ws.results(cfg, {"honesty": state}, 1.0)
    assert results["kl_rendering"] == "chat_reply"  # the rendering its KL column was read in (lib.evals)
    assert results["summary"]["contrast_source"] == source
    assert results["summary"]["contrast"]["honesty"][source]["best_auc"] == state["contrast"][source]["best_auc"]
    assert results["summary"]["headroom"]["honesty"]["has_headroom"] == state["headroom"]["has_headroom"]
    assert set(ws.contrast_table({"honesty": state}).source) == set(state["contrast"])
    # scored in both answer orders on a position-balanced split, each weight entry with its KL-matched control
    assert state["orders"] == "both" and all("row_position_bias" in e for e in state["entries"])
    test_items = [items[i] for i in state["split_ids"]["test"]]
    assert sum(item.first_is_target for item in test_items) == len(test_items) // 2
    controls = [e for e in state["entries"] if e["method"] == ws.RANDOM_DELTA]
    assert len(controls) + len(state.get("random_notes", {})) == 2  # coefficients -1 and +1 of the one seed
    for control in controls:
        assert control["kl"] == pytest.approx(control["target_kl"], rel=0.05)


def test_offline_pairs_that_leak_an_eval_question_are_refused(small, monkeypatch):
    """Catches `contrast_pairs` returning the loaded pairs without `check_disjoint` (a labelled or written prompt
    holding a validation or test question would train)."""
    model, tokenizer = small
    cfg = ws.WeightSteeringConfig(behaviours=["honesty"], contrast_source="labelled")
    items = choice_data.load_honesty()
    leak = choice_data.ContrastPair("leak", choice_data.dilemma_prompt(items[0]), "I would tell.", "I would hide it.")
    monkeypatch.setattr(ws, "load_labelled_pairs", lambda kind: choice_data.load_labelled_pairs(kind) + [leak])
    assert len(ws.contrast_pairs(cfg, model, tokenizer, "honesty", items[1:5], held_out=items[5:9])["positive"]) == 27
    with pytest.raises(ValueError, match="labelled pairs for honesty: training prompts contain eval questions"):
        ws.contrast_pairs(cfg, model, tokenizer, "honesty", items[1:5], held_out=items[:4])
    with pytest.raises(ValueError, match="written pairs for honesty"):  # dilemmas both trained on and held out
        ws.contrast_pairs(cfg, model, tokenizer, "honesty", items[:4], "written", held_out=items[:4])


@pytest.mark.parametrize("stage", ["headroom", "contrast"])
def test_stop_after_runs_the_checks_alone(stage, small, monkeypatch, tmp_path, isolated_cache):
    """stop_after='headroom' scores the baselines and the headroom and generates, measures and trains nothing;
    'contrast' adds the contrast measurement; neither builds a vector or trains. Catches either early return
    removed (the run would go on to train) or placed before its stage's result is saved."""
    model, tokenizer = small
    calls = []
    for name in ("persona_pairs", "activation_vector", "train_adapter", "measure_contrast"):
        real = getattr(ws, name)
        monkeypatch.setattr(ws, name, lambda *a, _n=name, _r=real, **k: calls.append(_n) or _r(*a, **k))
    cfg = ws.WeightSteeringConfig(behaviours=["honesty"], contrast_source="written", n_seeds=1, n_train=6, n_val=2,
                                  n_test=4, weight_coeffs=[-1.0, 0.0, 1.0], vector_coeffs=[-1.0, 0.0, 1.0],
                                  vector_layers=[0, 1], batch_size=8, stop_after=stage)
    state = ws.run_behaviour(cfg, model, tokenizer, "honesty", tmp_path, log=lambda message: None)
    saved = json.loads((tmp_path / "honesty_partial.json").read_text())
    assert "has_headroom" in saved["headroom"] and {e["method"] for e in state["entries"]} == {
        "none", "prompt_simple", "prompt_engineered"}
    assert set(calls) == ({"measure_contrast"} if stage == "contrast" else set())
    assert bool(saved.get("contrast")) == (stage == "contrast")
    results = ws.results(cfg, {"honesty": ws.add_first_bias(state, "honesty")}, 1.0)
    assert results["summary"]["main"] is None and results["seeds"] == []
    with pytest.raises(ValueError, match="stop_after='train' must be one of"):
        ws.WeightSteeringConfig(stop_after="train")


def test_diverged_training_is_flagged_and_left_out_of_the_seed_and_matched_tables():
    """A seed whose loss ends above where it started is flagged (also in entries saved before the flag existed,
    from their loss curves) and does not enter the seed statistics or the matched table. Catches the tables
    averaging a broken adapter in (journal 2026-12-01: DeLoRA at lr 1e-3 went from loss 2.6 to 5.7)."""
    assert wr.training_diverged([2.5, 2.0, 1.0, 0.8]) is False
    assert wr.training_diverged([2.5, 10.0, 6.0, 5.7]) is True
    assert wr.training_diverged([2.56, 10.5, 9.0, 8.0, 7.0, 6.5, 6.1, 5.7]) is True  # the spike must not hide it
    assert wr.training_diverged([2.5, float("nan")]) is True and wr.training_diverged([]) is False
    # the paired check on all training rows decides when recorded: noisy short-row batches (the sycophancy labelled
    # pairs' LoRA seed 0, whose last quarter ends above its lucky first batch) are not divergence
    noisy = [0.57, 0.3, 1.87, 2.39, 2.57, 0.37, 2.42, 0.65, 0.15, 0.12, 1.15, 1.36, 0.27, 1.46, 1.97, 0.2]
    assert wr.training_diverged(noisy) is True  # the per-step fallback trips on it
    assert wr.training_diverged(noisy, 1.9, 0.8) is False and wr.training_diverged([2.0, 1.0], 1.9, 2.4) is True
    assert wr.training_diverged([2.0, 1.0], 1.9, float("inf")) is True
    recorded = {**_entry("weight", 1.0, 0.1, 0.1, 0, "lora"), "loss_positive": noisy, "loss_negative": noisy,
                "train_set_loss": {"positive": [1.9, 0.8], "negative": [2.0, 0.9]}}
    assert wr.mark_diverged([recorded])[0]["diverged"] is False
    entries = [_entry("none", 0.0, 0.0, 0.0)]
    for seed, losses, up in ((0, [2.0, 1.0], 0.2), (1, [2.0, 1.1], 0.4), (2, [2.0, 6.0], 5.0)):
        for coeff, score in ((1.0, up), (-1.0, -up)):
            entries.append({**_entry("weight", coeff, score, 0.1, seed, "lora"), "loss_positive": [2.0, 1.0],
                            "loss_negative": losses})
    table = ws.comparison_table(entries)
    assert table[table.seed == 2].diverged.all() and not table[table.seed < 2].diverged.any()
    seeds = ws.seed_table(table).set_index("coeff")
    assert seeds.loc[1.0, "n_seeds"] == 2 and seeds.loc[1.0, "n_diverged"] == 1
    assert seeds.loc[1.0, "delta_mean"] == pytest.approx(0.3)  # not (0.2 + 0.4 + 5.0) / 3
    matched = ws.matched_table(table, kl_budget=0.25).set_index("method")
    assert matched.loc["weight", "up_delta"] == pytest.approx(0.3)


def test_family_learning_rates_are_checked_and_used():
    cfg = ws.WeightSteeringConfig(adapters=["lora", "delora"], family_learning_rates={"delora": 1e-2})
    assert cfg.learning_rate_of("delora") == 1e-2 and cfg.learning_rate_of("lora") == cfg.learning_rate
    with pytest.raises(ValueError, match="names 'oft', which is not in adapters"):
        ws.WeightSteeringConfig(family_learning_rates={"oft": 1e-2})
    with pytest.raises(ValueError, match=r"family_learning_rates\['lora'\]=0 must be a positive number"):
        ws.WeightSteeringConfig(family_learning_rates={"lora": 0})


def test_family_peft_options_are_checked_against_adapters_and_peft():
    cfg = ws.WeightSteeringConfig(adapters=["lora", "delora"], family_peft_options={"delora": {"delora_lambda": 1.0}})
    assert cfg.peft_options_of("delora") == {"delora_lambda": 1.0} and cfg.peft_options_of("lora") == {}
    with pytest.raises(ValueError, match="family_peft_options names 'delora', which is not in adapters"):
        ws.WeightSteeringConfig(family_peft_options={"delora": {"delora_lambda": 1.0}})
    with pytest.raises(ValueError, match=r"family_peft_options\['delora'\] sets 'lambda'"):
        ws.WeightSteeringConfig(adapters=["delora"], family_peft_options={"delora": {"lambda": 1.0}})


def test_the_journal_run_folder_gives_the_comparison_table_it_saved():
    """An old run folder still loads: the journal's 2026-11-24 states (entries saved before the divergence flag, so
    their loss curves decide it) give the comparison table the journal saved, no seed flagged. Catches the
    divergence fallback misreading old entries (e.g. `<` for `>` in the last-quarter check flags every converged
    seed) or the table built from rewritten entries."""
    folder = REPO_ROOT / "out" / "journal" / "2026-11-24-weight-steering"
    states = {b: json.loads((folder / f"{b}_partial.json").read_text()) for b in ("honesty", "sycophancy")}
    table = ws.comparison_table([e for state in states.values() for e in state["entries"]])
    saved = pd.read_csv(folder / "comparison.csv")
    columns = [c for c in saved.columns if c in table.columns]
    assert len(columns) == 11 and not table.diverged.any()
    pd.testing.assert_frame_equal(table[columns], saved[columns], check_dtype=False, rtol=0, atol=1e-12)



def _rows_entry(method, coeff, rows, kl, seed=-1, adapter="-", diverged=False):
    return {**_entry(method, coeff, sum(rows) / len(rows), kl, seed, adapter), "row_scores": rows,
            **({"diverged": True} if diverged else {})}


def test_matched_kl_table_interpolates_each_curve_at_the_budget_with_an_interval():
    """By hand: the weight curve (seed mean per row) passes KL 0.1 at coefficient 1 and 0.4 at 2, so at the budget
    0.25 its change is halfway between the two coefficients' mean changes; the negative side never reaches the
    budget (NaN, not extrapolated); a diverged seed is left out; the prompts are read at their own KL. Catches:
    the best point within the budget taken instead, extrapolation, the diverged seed averaged in."""
    base = [0.0, 0.0, 0.0, 0.0]
    entries = [_rows_entry("none", 0.0, base, 0.0), _rows_entry("prompt_simple", 1.0, [0.5, 0.5, 0.3, 0.3], 0.3),
               _rows_entry("prompt_simple", -1.0, [0.0, -0.2, 0.0, -0.2], 0.05)]
    for seed, shift in enumerate((0.0, 0.2)):
        entries += [_rows_entry("weight", 1.0, [0.1 + shift, 0.2, 0.3, 0.2], 0.1, seed, "lora"),
                    _rows_entry("weight", 2.0, [0.5 + shift, 0.6, 0.7, 0.6], 0.4, seed, "lora"),
                    _rows_entry("weight", -1.0, [-0.1, -0.1, -0.1, -0.1], 0.05, seed, "lora")]
    entries.append(_rows_entry("weight", 2.0, [9.0, 9.0, 9.0, 9.0], 0.4, 2, "lora", diverged=True))
    table = ws.matched_kl_table(entries, kl_budget=0.25).set_index("method")
    at_one = (0.2 + 0.2 + 0.3 + 0.2) / 4  # seed-mean row changes at coefficient 1 (first row: 0.1 and 0.3)
    at_two = (0.6 + 0.6 + 0.7 + 0.6) / 4
    assert table.loc["weight", "up_delta"] == pytest.approx(at_one + 0.5 * (at_two - at_one))
    assert table.loc["weight", "up_low"] <= table.loc["weight", "up_delta"] <= table.loc["weight", "up_high"]
    assert pd_isna(table.loc["weight", "down_delta"])  # KL 0.05 at -1, the most negative coefficient
    assert table.loc["weight", "n_seeds"] == 2
    assert table.loc["prompt_simple", "up_delta"] == pytest.approx(0.4) and table.loc["prompt_simple", "at_own_kl"]
    assert table.loc["prompt_simple", "up_kl"] == 0.3


def test_a_random_delta_control_is_matched_to_each_coefficients_kl_and_scored_on_the_same_rows(small):
    """Each control entry's KL, measured again with the run's own reading under a hand weight edit, is within 5% of
    the trained dW's KL at that coefficient, and its scores are the rows scored under that edit (catches: the
    control norm-matched only, matched to another coefficient, or scored without its delta)."""
    from lib.evals import mean_kl

    model, tokenizer = small
    name = "model.layers.0.mlp.down_proj.weight"
    generator = torch.Generator().manual_seed(3)
    delta = WeightDelta({name: 0.05 * torch.randn(model.get_parameter(name).shape, generator=generator)})
    cfg = ws.WeightSteeringConfig(behaviours=["honesty"], n_test=4, batch_size=8)
    items = choice_data.load_honesty()[:4]
    fmt = wr.FORMATS["ab_paren"]
    reference = wr.neutral_logprobs(model, tokenizer, batch_size=8)
    kls = {}
    for coeff in (-2.0, 2.0):
        with torch.no_grad():
            model.get_parameter(name).add_(coeff * delta[name])
        kls[coeff] = mean_kl(reference, wr.neutral_logprobs(model, tokenizer, batch_size=8))
        with torch.no_grad():
            model.get_parameter(name).sub_(coeff * delta[name])

    def score():
        return wr.score_items(model, tokenizer, items, fmt, "both", batch_size=8)

    before = model.get_parameter(name).detach().clone()
    out = ws.random_delta_entries(cfg, model, tokenizer, "honesty", delta, kls, "lora", 0, score)
    assert torch.equal(model.get_parameter(name), before)
    assert len(out["entries"]) + len(out) - 1 == 2
    for entry in out["entries"]:
        assert entry["method"] == ws.RANDOM_DELTA and entry["target_kl"] == kls[entry["coeff"]]
        scale = entry["scale_over_norm_matched"]
        from lib.kits.delta_ablation import norm_matched_random

        random = norm_matched_random(delta * entry["coeff"], seed=0).delta * scale
        with torch.no_grad():
            model.get_parameter(name).add_(random[name])
        again = mean_kl(reference, wr.neutral_logprobs(model, tokenizer, batch_size=8))
        rows = score()["score"].tolist()
        with torch.no_grad():
            model.get_parameter(name).copy_(before)
        assert again == pytest.approx(kls[entry["coeff"]], rel=0.05)
        assert entry["row_scores"] == pytest.approx(rows, abs=1e-5)


def test_swap_half_swaps_exactly_half_of_the_pairs_within_each_pair():
    """The label-shuffled null's pairs: half the pairs swapped (each side then holds half positive and half negative
    replies), every reply still after its own prompt, seeded and different per seed. Catches swapping every pair
    (the labels flipped, not shuffled), swapping across pairs, and a seed that is ignored."""
    pairs = {"positive": [ws.SFTPair(f"q{i}", f"good {i}") for i in range(10)],
             "negative": [ws.SFTPair(f"q{i}", f"bad {i}") for i in range(10)]}
    sides, swapped = ws.swap_half(pairs, seed=0)
    assert len(swapped) == 5
    for i in range(10):
        pos, neg = sides["positive"][i], sides["negative"][i]
        assert pos.prompt == neg.prompt == f"q{i}"
        expected = (f"bad {i}", f"good {i}") if i in swapped else (f"good {i}", f"bad {i}")
        assert (pos.response, neg.response) == expected
    assert ws.swap_half(pairs, seed=0) == (sides, swapped)
    assert {tuple(ws.swap_half(pairs, seed=s)[1]) for s in range(4)} != {tuple(swapped)}
    with pytest.raises(ValueError, match="shuffle_labels needs at least 2"):
        ws.swap_half({"positive": pairs["positive"][:1], "negative": pairs["negative"][:1]}, seed=0)


def test_shuffle_labels_trains_each_seed_on_its_own_swapped_pairs(small, monkeypatch, tmp_path, isolated_cache):
    """run_behaviour with shuffle_labels: each adapter seed trains on `swap_half(pairs, seed)` and records the swapped
    indices; the activation vector keeps the true labels. Catches the flag being read nowhere (a null that is the
    real run) and one shuffle shared by all seeds."""
    model, tokenizer = small
    trained, vectors = [], []
    build_vector = ws.activation_vector
    monkeypatch.setattr(ws, "activation_vector", lambda cfg, m, t, pairs: vectors.append(pairs) or
                        build_vector(cfg, m, t, pairs))
    name = "model.layers.0.mlp.down_proj.weight"

    def fake_train(base, tok, pairs, family, *, seed, **kwargs):
        trained.append(list(pairs))
        return WeightDelta({name: 0.01 * torch.randn(base.get_parameter(name).shape)}), [1.0]

    monkeypatch.setattr(ws, "train_adapter", fake_train)
    cfg = ws.WeightSteeringConfig(behaviours=["honesty"], contrast_source="written", n_seeds=2, n_train=6, n_val=2,
                                  n_test=4, weight_coeffs=[-1.0, 0.0, 1.0], vector_coeffs=[-1.0, 0.0, 1.0],
                                  vector_layers=[0], batch_size=8, random_deltas=False, shuffle_labels=True)
    state = ws.run_behaviour(cfg, model, tokenizer, "honesty", tmp_path, log=lambda message: None)
    items = {item.id: item for item in choice_data.load_honesty()}
    true = ws.as_sft_sides(choice_data.load_written_pairs([items[i] for i in state["split_ids"]["train"]]))
    assert vectors == [true]
    for seed in (0, 1):
        sides, swapped = ws.swap_half(true, seed)
        assert trained[2 * seed: 2 * seed + 2] == [sides["positive"], sides["negative"]]
        weights = [e for e in state["entries"] if e["method"] == "weight" and e["seed"] == seed]
        assert weights and all(e["labels"] == "shuffled" and e["swapped_pairs"] == swapped for e in weights)
    assert trained[0] != trained[2]
