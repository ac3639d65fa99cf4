"""The weight-ablation experiment on a tiny model with a hand-built source run: exact retention of a planted
layer-local delta, the run's scores reproduced (and a tampered delta or score refused), resume without re-scoring,
mismatched grids refused, the verdict rules on hand-made tables, and config / source checks naming the fix."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from conftest import ByteTokenizer

from lib.choice_evals import score_rows, summarize
from lib.experiments import weight_ablation as wa
from lib.io import REPO_ROOT, write_json
from lib.kits import delta_ablation as da
from lib.kits import weight_runs as wr
from lib.kits.choice_data import LOADERS, split_items, to_rows
from lib.models import tiny_model
from lib.weights import WeightDelta, apply_delta

PARAMS = {"model": "smollm2-135m", "n_train": 2, "n_val": 2, "n_test": 4, "seed": 0, "contrast_source": "written",
          "weight_coeffs": [-2.0, -1.0, 0.0, 1.0, 2.0], "low_pmass": 0.5, "batch_size": 4}


@pytest.fixture(scope="module")
def small():
    return tiny_model("llama", n_layers=2, hidden=64, vocab=256, seed=8), ByteTokenizer(chat=True)


def _layer1_delta(model, scale: float, seed: int = 0) -> WeightDelta:
    """A delta on block 1 only (attention output, MLP down and up projections)."""
    generator = torch.Generator().manual_seed(seed)
    names = ("model.layers.1.self_attn.o_proj.weight", "model.layers.1.mlp.down_proj.weight",
             "model.layers.1.mlp.up_proj.weight")
    return WeightDelta({n: scale * torch.randn(model.get_parameter(n).shape, generator=generator) for n in names})


def _scored(model, tokenizer, rows, fmt):
    scored = score_rows(model, tokenizer, rows, fmt, batch_size=4, progress=False)
    return {**summarize(scored), "row_scores": scored["score"].tolist()}


def _source(folder, model, tokenizer, deltas):
    """A weight_steering run folder as the notebook writes it, scored here with `score_rows` directly."""
    split = split_items(LOADERS["honesty"](), 2, 2, 4, 0)
    fmt = wr.FORMATS["ab_paren"]
    rows = to_rows(split["test"], fmt)
    entries = [{"method": "none", "adapter": "-", "seed": -1, "coeff": 0.0, **_scored(model, tokenizer, rows, fmt)}]
    for family, by_seed in deltas.items():
        for seed, delta in by_seed.items():
            delta.save(folder / "deltas" / f"honesty_{family}_seed{seed}")
            for c in PARAMS["weight_coeffs"]:
                if c:
                    with apply_delta(model, delta, c):
                        entries.append({"method": "weight", "adapter": family, "seed": seed, "coeff": c,
                                        **_scored(model, tokenizer, rows, fmt)})
    write_json(folder / "run.json", {"notebook": "weight_steering", "parameters": PARAMS, "status": "ok"})
    write_json(folder / "honesty_partial.json", {
        "entries": entries, "format": "ab_paren", "rows_digest": wr.rows_digest("honesty", fmt, split, "written"),
        "split_ids": {part: [i.id for i in items] for part, items in split.items()}})
    return folder


def _cfg(folder, **change):
    values = {"deltas_from": [str(folder)], "coefficients": [-2.0, 2.0], "ks": [2], "base_ranks": [4],
              "n_random": 1, "batch_size": 4, "groups": ["roles", "thirds", "basis", "controls"]}
    return wa.WeightAblationConfig(**{**values, **change})


@pytest.fixture(scope="module")
def planted(small, tmp_path_factory):
    """Two families whose dW lives in block 1 only, three seeds of lora (the noise), ablated once."""
    model, tokenizer = small
    folder = tmp_path_factory.mktemp("source")
    deltas = {"lora": {s: _layer1_delta(model, 0.08, seed=s) for s in range(3)},
              "pissa": {0: _layer1_delta(model, 0.06, seed=10)}}
    _source(folder, model, tokenizer, deltas)
    cfg = _cfg(folder)
    out = folder / "ablation"
    ablation = wa.run_ablation(cfg, model, tokenizer, out, progress=False, log=lambda message: None)
    return model, tokenizer, folder, cfg, out, ablation, ablation.table(cfg), deltas


def test_planted_block_local_delta_is_retained_exactly_where_it_lives(planted):
    """Crops that hold all of dW score it bit for bit (retained 1), crops that hold none score the base (0), and the
    split parts sum back. Catches a variant applied at the wrong coefficient, retained read against the base instead
    of the full swing, and the thirds assigning block 1 to the wrong third."""
    *_, ablation, table, deltas = planted
    by = table.set_index(["family", "variant"])
    for family in ("lora", "pissa"):
        assert by.loc[(family, "full"), "retained"] == 1.0
        assert by.loc[(family, "mid"), "retained"] == 1.0 and by.loc[(family, "mid"), "norm_ratio"] == 1.0
        assert by.loc[(family, "early"), "retained"] == 0.0 and by.loc[(family, "early"), "empty"]
        assert by.loc[(family, "zero"), "retained"] == 0.0
        assert by.loc[(family, "attn_read"), "retained"] == 0.0  # no q/k/v in the delta
        assert abs(by.loc[(family, "full"), "swing"]) > 1e-3  # there is an effect to retain
    writes = by.loc[("lora", "writes"), "retained"]
    assert 0 < by.loc[("lora", "writes"), "norm_ratio"] < 1 and not math.isclose(writes, 1.0)
    assert ablation.reproduced["lora"] < 1e-5 and ablation.reproduced["pissa"] < 1e-5


def test_retained_matches_a_hand_recompute_of_one_variant(planted):
    """The mlp crop re-scored by hand with apply_delta + score_rows: its swing over the full dW's swing."""
    model, tokenizer, folder, cfg, out, ablation, table, deltas = planted
    full = deltas["lora"][0]
    mlp = WeightDelta({n: d for n, d in full.deltas.items() if ".mlp." in n})
    rows, fmt = to_rows(ablation.evals.items, ablation.evals.fmt), ablation.evals.fmt  # a legacy run: one order

    def swing(delta):
        scores = {}
        for c in (2.0, -2.0):
            with apply_delta(model, delta, c):
                scores[c] = _scored(model, tokenizer, rows, fmt)["score"]
        return scores[2.0] - scores[-2.0]

    expected = swing(mlp) / swing(full)
    got = table.set_index(["family", "variant"]).loc[("lora", "mlp"), "retained"]
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_basis_variants_are_also_read_against_the_residual_writes(planted):
    """The basis splits the writes only: its variants' share of the writes' swing sits beside their share of the
    full dW's. Catches dividing by the full swing twice (the two columns would be equal) or by another crop."""
    *_, table, deltas = planted
    by = table.set_index(["family", "variant"])
    writes = by.loc[("lora", "writes"), "swing"]
    keep = by.loc[("lora", "shared2_keep")]
    assert keep.retained_of_writes == pytest.approx(keep.swing / writes)
    assert math.isnan(by.loc[("lora", "mlp"), "retained_of_writes"])  # only basis variants get one


def test_sufficiency_controls_follow_crops_that_retain(planted):
    """Every crop that retains >= sufficient at a smaller norm, on a metric whose full swing is identifiable, gets
    its @norm and ~rand controls, and no other crop does. Here pissa's score swing is identifiable and lora's is not
    (its three seeds are three unrelated planted deltas)."""
    *_, cfg, out, ablation, table, deltas = planted
    effects = wa.full_effects(table, ablation.noise).set_index("family")
    assert effects.loc["pissa", "identifiable"] and not effects.loc["lora", "identifiable"]
    crops = wa.crops_to_control(table, effects.reset_index(), cfg)
    assert len(crops) and set(crops.family) == {"pissa"}
    for _, crop in crops.iterrows():  # the saved names stay as they were
        names = set(table[table.family == crop.family].variant)
        assert {f"{crop.variant}@norm", f"{crop.variant}~rand"} <= names
    randoms, rescaled = (table[(table.kind == kind) & (table.control_of != "")] for kind in ("random", "norm_matched"))
    picked = set(zip(crops.family, crops.variant, strict=True))
    assert set(zip(randoms.family, randoms.control_of, strict=True)) == picked  # and no other crop
    assert set(zip(rescaled.family, rescaled.control_of, strict=True)) == picked
    lora_retaining = table[(table.family == "lora") & (table.retained >= cfg.sufficient) & (table.norm_ratio < 0.95)]
    assert len(lora_retaining)  # lora has crops that retain by ratio, inside noise: they get none
    assert (rescaled.norm_ratio.sub(1).abs() < 1e-5).all()
    for _, control in randoms.iterrows():
        crop = table[(table.family == control.family) & (table.variant == control.control_of)]
        assert control.norm_ratio == pytest.approx(float(crop.norm_ratio.iloc[0]), rel=1e-5)


def test_controls_follow_only_metrics_whose_full_swing_is_identifiable():
    """A crop retaining on the score of a family whose score swing is inside noise gets no controls; one retaining
    on an identifiable preference does; crops at >= 0.95 of the norm, "full", controls and @norm never do. Catches
    the old max over both metrics (the score-only crop would be picked) and the flags read for the wrong family."""
    cfg = wa.WeightAblationConfig()
    rows = [("a", "writes", 0.9, 0.1, 0.5), ("a", "reads", 0.1, 0.8, 0.5), ("a", "big", 0.1, 0.9, 0.97),
            ("a", "full", 1.0, 1.0, 1.0), ("a", "mid@norm", 0.1, 0.9, 1.0), ("b", "writes", 0.9, 0.1, 0.5),
            ("b", "reads", 0.1, 0.8, 0.5)]
    table = _with_fields(pd.DataFrame([{"family": f, "variant": v, "group": "g", "retained": r,
                                        "retained_preference": rp, "norm_ratio": n} for f, v, r, rp, n in rows]))
    effects = pd.DataFrame([{"family": "a", "identifiable": False, "preference_identifiable": True},
                            {"family": "b", "identifiable": True, "preference_identifiable": False}])
    picked = wa.crops_to_control(table, effects, cfg)
    assert sorted(zip(picked.family, picked.variant, strict=True)) == [("a", "reads"), ("b", "writes")]
    neither = effects.assign(identifiable=False, preference_identifiable=False)
    assert wa.crops_to_control(table, neither, cfg).empty


def test_resume_rescores_nothing_and_another_grid_is_refused(planted, monkeypatch):
    model, tokenizer, folder, cfg, out, ablation, table, deltas = planted
    calls = []
    real = wa.measure
    monkeypatch.setattr(wa, "measure", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = wa.run_ablation(cfg, model, tokenizer, out, progress=False, log=lambda message: None)
    assert calls == [] and len(again.store.records) == len(ablation.store.records)
    with pytest.raises(ValueError, match="coefficient grids differ"):
        wa.run_ablation(_cfg(folder, coefficients=[-2.0, -1.0, 1.0, 2.0]), model, tokenizer, out, progress=False)


def test_a_tampered_delta_or_saved_score_is_refused(small, tmp_path):
    """Catches dropping `check_reproduces_run`: the ablation would report retention of another dW."""
    model, tokenizer = small
    folder = _source(tmp_path / "src", model, tokenizer, {"lora": {0: _layer1_delta(model, 0.08)}})
    (_layer1_delta(model, 0.08) * 1.5).save(folder / "deltas" / "honesty_lora_seed0")
    with pytest.raises(ValueError, match="lora: the full dW re-scored here differs from the run's saved scores"):
        wa.run_ablation(_cfg(folder, groups=["controls"]), model, tokenizer, tmp_path / "a", progress=False,
                        log=lambda message: None)
    state = json.loads((folder / "honesty_partial.json").read_text())
    state["entries"][0]["row_scores"][0] += 0.5  # the base row the run saved
    write_json(folder / "honesty_partial.json", state)
    with pytest.raises(ValueError, match="base model scores the rows differently"):
        wa.run_ablation(_cfg(folder, groups=["controls"]), model, tokenizer, tmp_path / "b", progress=False)


def test_bad_config_and_sources_name_the_fix(small, tmp_path):
    model, tokenizer = small
    with pytest.raises(ValueError, match=r"need a pair \+c and -c"):
        wa.WeightAblationConfig(coefficients=[1.0, 2.0])
    with pytest.raises(ValueError, match="distinct and non-zero"):
        wa.WeightAblationConfig(coefficients=[-1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="groups='layers' must be one of"):
        wa.WeightAblationConfig(groups=["layers"])
    with pytest.raises(ValueError, match="removes=0.8 and sufficient=0.7"):
        wa.WeightAblationConfig(removes=0.8)
    with pytest.raises(FileNotFoundError, match="no run.json.*save_deltas=True"):
        _cfg(tmp_path / "nothing").check_inputs()

    folder = _source(tmp_path / "src", model, tokenizer, {"lora": {0: _layer1_delta(model, 0.08)}})
    with pytest.raises(ValueError, match=r"\[-4.0, 4.0\] not in the weight_coeffs"):
        _cfg(folder, coefficients=[-4.0, 4.0]).check_inputs()
    with pytest.raises(ValueError, match=r"no delta for seed=1 .*saved seeds \[0\]"):
        _cfg(folder, seed=1).check_inputs()
    with pytest.raises(ValueError, match=r"families=\['dora'\] have no saved honesty delta"):
        _cfg(folder, families=["dora"]).check_inputs()
    with pytest.raises(ValueError, match="model='other' but"):
        _cfg(folder, model="other").check_inputs()
    with pytest.raises(FileNotFoundError, match=r"no sycophancy results \(it has \['honesty'\]\)"):
        _cfg(folder, behaviour="sycophancy").check_inputs()
    with pytest.raises(ValueError, match=r"groups has 'ia3', which reads ia3 deltas only, but families=\['lora'\]"):
        _cfg(folder, groups=["roles", "ia3"]).check_inputs()
    with pytest.raises(ValueError, match="family 'lora' has deltas in both"):
        _cfg(folder, deltas_from=[str(folder), str(folder)]).check_inputs()
    state = json.loads((folder / "honesty_partial.json").read_text())
    for entry in state["entries"]:
        if entry["method"] == "weight":
            entry |= {"loss_positive": [2.5, 9.0, 6.0, 5.7], "loss_negative": [2.5, 2.0, 1.0, 0.8]}
    write_json(folder / "honesty_partial.json", state)
    with pytest.raises(ValueError, match=r"families \['lora'\]: the adapter training of seed 0 diverged"):
        _cfg(folder).check_inputs()


def _with_fields(table: pd.DataFrame) -> pd.DataFrame:
    """A hand-made table as `retained_table` gives it: each variant's fields beside its name (read from the name,
    as for records scored before fields were saved)."""
    families = set(table.family)
    fields = pd.DataFrame([da.VariantFields.from_name(v, families).as_dict() for v in table.variant], index=table.index)
    return table.join(fields.astype({"k": "Int64", "layer": "Int64"}))


def _table(values: dict[str, dict[str, float]]) -> pd.DataFrame:
    rows = [{"family": f, "group": "g", "variant": v, "retained": r, "swing": 1.0 if v == "full" else r,
             "norm_ratio": 0.5} for f, by in values.items() for v, r in by.items()]
    return _with_fields(pd.DataFrame(rows))


def _effects(families, swing=1.0, noise=0.1):
    return pd.DataFrame([{"family": f, "swing": swing, "swing_se": noise, "seed_swing_std": noise, "n_seeds": 3,
                          "identifiable": abs(swing) > 2 * noise} for f in families])


def test_full_effects_name_the_noise_of_each_metric():
    """The full dW is identifiable only when its swing exceeds twice the larger of its row SE and its seeds' std;
    the preference, with no seeds recorded, against its pairs' SE."""
    table = pd.DataFrame([{"family": f, "variant": "full", "swing": 0.3, "swing_se": se, "preference_swing": 0.5,
                           "preference_se": pse} for f, se, pse in (("a", 0.05, 0.1), ("b", 0.2, 0.3))])
    noise = {"a": {"n_seeds": 3, "swing_std": 0.1, "sign_agreement": 1.0},
             "b": {"n_seeds": 3, "swing_std": 0.01, "sign_agreement": 1.0}}
    effects = wa.full_effects(table, noise).set_index("family")
    assert effects.loc["a", "noise"] == 0.1 and effects.loc["a", "identifiable"]  # 0.3 > 2 x 0.1 (seeds)
    assert effects.loc["b", "noise"] == 0.2 and not effects.loc["b", "identifiable"]  # 0.3 < 2 x 0.2 (rows)
    assert effects.loc["a", "preference_identifiable"] and not effects.loc["b", "preference_identifiable"]


def test_verdict_rules_fire_on_the_numbers_they_name():
    cfg = wa.WeightAblationConfig(ks=[8, 32])
    shared = {f: {"full": 1.0, "shared8_keep": 0.5, "shared8_drop": 0.5, "rand8_keep": 0.1,
                  "shared32_keep": 0.9, "shared32_drop": 0.1, "rand32_keep": 0.05,
                  "early": 0.0, "mid": 0.9, "late": 0.05, "non_block": 0.0,
                  "attention": 0.6, "mlp": 0.55, "other": 0.0, "mid~rand": 0.1} for f in ("lora", "pissa")}
    rules = {r["rule"]: r for r in wa.verdict(_table(shared), _effects(shared), cfg)}
    assert rules["shared subspace K=32"]["fired"] and not rules["shared subspace K=8"]["fired"]
    assert rules["not identifiable with basis K=8"]["fired"]  # keep 0.5 and drop 0.5
    localised = [r for r in wa.verdict(_table(shared), _effects(shared), cfg) if r["rule"].startswith("localised")]
    assert {(r["family"], r["part"]) for r in localised} == {("lora", "mid"), ("pissa", "mid")}
    distributed = [r for r in wa.verdict(_table(shared), _effects(shared), cfg) if r["rule"].startswith("distrib")]
    assert {r["rule"] for r in distributed} == {"distributed (attention/mlp/other)"}
    bare = _table({f: {k: v for k, v in values.items()} for f, values in shared.items()})
    bare = bare[~bare.variant.str.endswith("~rand")]
    unchecked = [r for r in wa.verdict(bare, _effects(shared), cfg) if r["rule"].startswith("localised")]
    assert unchecked and not any(r["fired"] for r in unchecked)  # a crop's claim waits for its ~rand control
    assert "not scored yet" in unchecked[0]["text"]
    shared["pissa"]["rand32_keep"] = 0.5  # the random null retains as much: no shared-subspace claim
    assert not {r["rule"]: r for r in wa.verdict(_table(shared), _effects(shared), cfg)}[
        "shared subspace K=32"]["fired"]
    degenerate = {f: {**values, "shared8_drop": 0.0} for f, values in shared.items()}
    table = _table(degenerate)
    table.loc[table.variant == "shared8_drop", "norm_ratio"] = 0.0  # K at the stack's rank: nothing to drop
    rule = {r["rule"]: r for r in wa.verdict(table, _effects(degenerate), cfg)}["shared subspace K=8"]
    assert not rule["fired"] and "degenerate" in rule["text"]
    crossed = {f: {**values, "rand32_keep": 0.05} for f, values in shared.items()}
    for f, g in (("lora", "pissa"), ("pissa", "lora")):  # each keeps little in the other's own basis
        crossed[f].update({f"in_{g}32_keep": 0.2, f"in_{g}32_drop": 0.8})
    rules = {r["rule"]: r for r in wa.verdict(_table(crossed), _effects(crossed), cfg)}
    assert rules["shared subspace K=32"]["fired"] and "weak" in rules["shared subspace K=32"]["text"]
    assert not rules["cross-family subspace K=32"]["fired"] and "cross-family subspace K=8" not in rules
    crossed["lora"].update({"in_pissa32_keep": 0.95, "in_pissa32_drop": 0.05})
    crossed["pissa"].update({"in_lora32_keep": 0.8, "in_lora32_drop": 0.1})
    rules = {r["rule"]: r for r in wa.verdict(_table(crossed), _effects(crossed), cfg)}
    assert rules["cross-family subspace K=32"]["fired"] and "weak" not in rules["shared subspace K=32"]["text"]
    assert rules["cross-family subspace K=32"]["numbers"]["pissa"] == {"keep_min": 0.8, "drop_max": 0.1}
    table = _table(crossed)
    table.loc[table.variant == "shared32_drop", "norm_ratio"] = 0.0  # shared K=32 degenerate: the cross still reads
    rules = {r["rule"]: r for r in wa.verdict(table, _effects(crossed), cfg)}
    assert "degenerate" in rules["shared subspace K=32"]["text"] and rules["cross-family subspace K=32"]["fired"]
    within_noise = wa.verdict(_table(shared), _effects(shared, swing=0.15, noise=0.1), cfg)
    assert [r["rule"] for r in within_noise] == ["identifiable", "verdict"]
    assert "not identifiable" in within_noise[-1]["text"]


def test_single_layer_rules_read_layer_only_and_layer_out():
    """Single-layer keep is a partition of its own (with non_block), read by the localised and distributed rules;
    leave-one-layer-out gives "necessary layer" (<= removes) and "no layer necessary" (all >= sufficient). Catches
    the layer partition dropped, `L<i>_out` read as `L<i>_only`, the lowest leave-one-out misnamed, or the blocks
    taken in the table's order instead of by their `layer` (the rows below are out of block order)."""
    cfg = wa.WeightAblationConfig(ks=[8])
    one = {"full": 1.0, "L10_only": 0.0, "L2_only": 0.05, "L1_only": 0.9, "L0_only": 0.02, "non_block": 0.0,
           "L0_out": 0.97, "L1_out": 0.1, "L2_out": 0.95, "L10_out": 0.99}
    rules = wa.verdict(_table({"lora": one}), _effects(["lora"]), cfg)
    localised = [r for r in rules if r["rule"] == "localised (single layers)"]
    assert [(r["part"], r["fired"]) for r in localised] == [("L1_only", False)]  # no L1_only~rand: waits
    assert "not scored yet" in localised[0]["text"]
    rules = wa.verdict(_table({"lora": {**one, "L1_only~rand": 0.01}}), _effects(["lora"]), cfg)
    by_rule = {r["rule"]: r for r in rules}
    assert by_rule["localised (single layers)"]["fired"] and by_rule["localised (single layers)"]["part"] == "L1_only"
    assert by_rule["necessary layer"]["fired"] and by_rule["necessary layer"]["parts"] == ["L1_out"]
    assert by_rule["necessary layer"]["lowest"] == {"L1_out": 0.1}
    assert not by_rule["no layer necessary"]["fired"]
    spread = {**one, "L1_only": 0.6, "L2_only": 0.55, "L1_out": 0.8}
    by_rule = {r["rule"]: r for r in wa.verdict(_table({"lora": spread}), _effects(["lora"]), cfg)}
    assert by_rule["distributed (single layers)"]["parts"] == ["L1_only", "L2_only"]
    assert "localised (single layers)" not in by_rule
    assert not by_rule["necessary layer"]["fired"] and by_rule["no layer necessary"]["fired"]
    assert "lowest: L1_out 0.80" in by_rule["necessary layer"]["text"]
    without = {k: v for k, v in one.items() if not k.startswith("L")}
    names = {r["rule"] for r in wa.verdict(_table({"lora": without}), _effects(["lora"]), cfg)}
    assert not any("layer" in n for n in names)  # not scored: no layer rule at all


def test_a_source_is_a_folder_or_a_weight_steering_run_slug(tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.setattr(wa, "repo_path", lambda p: Path(p) if Path(p).is_absolute() else tmp_path / p)
    run = tmp_path / "out" / "weight_steering" / "adapters=lora_behaviours=honesty"
    run.mkdir(parents=True)
    assert wa.source_folder("adapters=lora_behaviours=honesty") == run
    assert wa.source_folder("out/weight_steering/adapters=lora_behaviours=honesty") == run
    assert wa.source_folder(str(run)) == run
    assert wa.source_folder("missing") == tmp_path / "missing"  # reported by read_source as not a run


def _gated_delta(model, scale: float, seed: int = 0) -> WeightDelta:
    """An IA3-shaped delta on block 1: output rows of o_proj and up_proj scaled, input columns of down_proj."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in ("model.layers.1.self_attn.o_proj.weight", "model.layers.1.mlp.up_proj.weight",
                 "model.layers.1.mlp.down_proj.weight"):
        w0 = model.get_parameter(name).detach()
        axis = 0 if "down_proj" in name else 1
        gate = scale * torch.randn(w0.shape[1 - axis], generator=generator)
        tensors[name] = w0 * (gate[None, :] if axis == 0 else gate[:, None])
    return WeightDelta(tensors)


def test_the_ia3_group_scores_the_ia3_family_only_and_says_so(small, tmp_path):
    """Catches the ia3 branch dropped from group_variants (no gate variants scored), run on other families (a
    LoRA delta is not gate-shaped: it would raise), or skipped without a word."""
    model, tokenizer = small
    folder = _source(tmp_path / "src", model, tokenizer, {"ia3": {0: _gated_delta(model, 0.3)},
                                                          "lora": {0: _layer1_delta(model, 0.08)}})
    messages = []
    ablation = wa.run_ablation(_cfg(folder, groups=["ia3"]), model, tokenizer, tmp_path / "out", progress=False,
                            log=messages.append)
    scored = {(r["family"], r["variant"]) for r in ablation.store.records.values()}
    assert {("ia3", "attention_gates"), ("ia3", "mlp_gates")} <= scored
    assert not any(family == "lora" and variant != "full" for family, variant in scored)
    assert any("group ia3 reads ia3 deltas only: skipped for lora" in m for m in messages)


def test_a_variant_built_twice_is_scored_once(small, tmp_path, monkeypatch):
    """IA3's attention/MLP gates are roles' attention/mlp crops under other names: the second of each is not
    re-scored but carries the first's points and says so. Catches the content check dropped (each scored again) or
    matching by something looser than the tensors (a different crop would inherit the wrong scores)."""
    model, tokenizer = small
    folder = _source(tmp_path / "src", model, tokenizer, {"ia3": {0: _gated_delta(model, 0.3)}})
    scored = []
    real = wa.evaluate_variant
    monkeypatch.setattr(wa, "evaluate_variant",
                        lambda m, t, v, *a, **k: scored.append(v.name) or real(m, t, v, *a, **k))
    ablation = wa.run_ablation(_cfg(folder, groups=["roles", "ia3"]), model, tokenizer, tmp_path / "out",
                               progress=False, log=lambda message: None)
    records = ablation.store.records
    for twin, first in (("attention_gates", "attention"), ("mlp_gates", "mlp")):
        assert twin not in scored and first in scored
        assert records[f"ia3/{twin}"]["meta"]["same_as"] == first
        assert records[f"ia3/{twin}"]["points"] == records[f"ia3/{first}"]["points"]
    assert len(scored) == len(set(scored))
    # a crop with other tensors is scored itself, and its own points differ
    assert "same_as" not in records["ia3/writes"]["meta"]
    assert records["ia3/writes"]["points"] != records["ia3/attention"]["points"]


# ----------------------------------------------------------------------------- fields beside names, old runs


def test_records_carry_their_fields_and_records_without_them_read_the_same(planted, tmp_path):
    """Each record saves its variant's fields beside the name; a store whose records lack them (evaluations.json
    written before) reads the same table through the names. Catches `Evaluations.add` saving another variant's
    fields, or the table taking a record's fields from anywhere but the record (or its own name)."""
    *_, cfg, out, ablation, table, deltas = planted
    records = ablation.store.records
    assert records["lora/shared2_keep"]["fields"] == da.VariantFields("shared", k=2, part="keep").as_dict()
    assert records["pissa/in_lora2_drop"]["fields"] == da.VariantFields("cross", k=2, part="drop",
                                                                        basis_family="lora").as_dict()
    data = json.loads((out / "evaluations.json").read_text())
    for record in data["variants"].values():
        record.pop("fields")
    write_json(tmp_path / "evaluations.json", data)
    old = wa.Evaluations(tmp_path / "evaluations.json", ablation.store.grid)
    pd.testing.assert_frame_equal(wa.retained_table(old, ablation.owners, cfg), table)
    assert list(table.columns[-len(wa.FIELD_COLUMNS):]) == list(wa.FIELD_COLUMNS)


def test_results_summarise_the_typed_ablation(planted):
    """Catches `results` reading another attribute than the one it names (e.g. the seconds or the families)."""
    *_, cfg, out, ablation, table, deltas = planted
    effects = wa.full_effects(table, ablation.noise)
    rules = {"retained": wa.verdict(table, effects, cfg)}
    by_seed = {"retained": wa.seed_rules(table, effects, "retained")}
    results = wa.results(cfg, ablation, table, effects, rules, by_seed)
    summary = results["summary"]
    assert results["seed_rules"] == by_seed and summary["seed_rules"]["retained"]["shared core (all)"] == next(
        r["answer"] for r in by_seed["retained"] if r["rule"] == "shared core")
    assert summary["families"] == ["lora", "pissa"] and summary["variants_scored"] == len(ablation.store.records)
    assert summary["reproduced_max_row_gap"] == ablation.reproduced
    assert summary["seconds"] == round(ablation.seconds, 1) and results["kl_rendering"] == "chat_reply"
    full = [ablation.store.records[f"{f}/full"]["points"]["2.0"]["score"] for f in ("lora", "pissa")]
    assert summary["main"] == pytest.approx(sum(full) / 2, rel=1e-12)


JOURNAL_ABLATION = REPO_ROOT / "out" / "journal" / "2026-12-01-ablation"


@pytest.mark.parametrize("folder", [JOURNAL_ABLATION, JOURNAL_ABLATION / "dora_ia3"])
def test_the_journal_ablation_gives_the_table_and_verdict_it_saved(folder):
    """An old run folder still loads: the journal's evaluations.json (records without fields: they come from the
    names) gives the retained table the journal saved, and with its full effects the verdict it saved. Catches a
    field misread from an old name (`in_lora32_keep` under another K, `mid~rand` not the control of mid, an @norm
    counted as a crop), which moves a rule or a control."""
    data = json.loads((folder / "evaluations.json").read_text())
    assert not any("fields" in record for record in data["variants"].values())
    store = wa.Evaluations(folder / "evaluations.json", da.EvalGrid.from_dict(data["grid"]))
    parameters = json.loads((JOURNAL_ABLATION / "run.json").read_text())["parameters"]
    cfg = wa.WeightAblationConfig(**{k: v for k, v in parameters.items() if k in wa.WeightAblationConfig.field_names()})
    table = wa.retained_table(store, {record["family"]: None for record in store.records.values()}, cfg)
    saved = pd.read_csv(folder / "retained.csv")
    assert list(table.columns[: len(saved.columns)]) == list(saved.columns)
    pd.testing.assert_frame_equal(table[list(saved.columns)], saved, check_dtype=False, rtol=0, atol=1e-12)
    if (folder / "verdict.json").exists():
        effects = pd.read_csv(folder / "full_effects.csv")
        rules = {column: wa.verdict(table, effects, cfg, column) for column in ("retained", "retained_preference")}
        for rule in (rule for column in rules.values() for rule in column):
            assert rule.pop("by") == "ours"  # labelled since the journal ran (the seed's own rules: seed_rules)
        for rule in (rule for column in rules.values() for rule in column if "by_interval" in rule):
            # added since the journal ran: each rule's answer from the 95% intervals, beside the point rule
            assert rule.pop("by_interval") in ("holds", "fails", "inconclusive")
            rule["text"] = rule["text"].rsplit("; by the 95% intervals: ", 1)[0]
        assert json.loads(json.dumps(rules, default=str)) == json.loads((folder / "verdict.json").read_text())


def test_layer_figures_place_single_layers_by_their_block():
    """Catches blocks ordered as text (L10 before L2), a single layer's @norm control drawn as a block, or single
    layers left in the heatmap (they have a figure of their own)."""
    import matplotlib

    matplotlib.use("Agg")
    values = {"full": 1.0, "mid": 0.5, "L0_only": 0.1, "L2_only": 0.2, "L10_only": 0.3, "L2_only@norm": 0.9,
              "L0_out": 0.9, "L10_out": 0.7}
    table = _table({"lora": values})
    figure = wa.layer_figure(table)
    only, out = (axis.lines[0] for axis in figure.axes)
    assert list(only.get_xdata()) == [0, 2, 10] and list(only.get_ydata()) == [0.1, 0.2, 0.3]
    assert list(out.get_xdata()) == [0, 10] and list(out.get_ydata()) == [0.9, 0.7]
    heatmap = wa.retained_figure(table)
    labels = [label.get_text() for label in heatmap.axes[0].get_yticklabels()]
    assert sorted(labels) == ["g: L2_only@norm", "g: full", "g: mid"]


def test_a_run_scored_in_both_orders_is_rebuilt_and_reproduced_in_both_orders(small, tmp_path):
    """A weight_steering run since the evaluation kit records orders="both": its items come from the balanced
    split and every score is the content score of both answer orders. The ablation rebuilds those items and
    re-scores in both orders, reproducing the saved rows exactly (catches: the legacy split or one order used
    on such a run: the rows differ and the run is refused)."""
    from lib.kits.two_choice import balanced_split, score_both_orders

    model, tokenizer = small
    split = balanced_split(LOADERS["honesty"](), 2, 2, 4, 0)
    fmt = wr.FORMATS["ab_paren"]

    def scored():
        both = score_both_orders(model, tokenizer, split["test"], fmt, batch_size=4, progress=False).per_item()
        return {**summarize(both), "row_scores": both["score"].tolist()}

    delta = _layer1_delta(model, 0.08)
    folder = tmp_path / "src"
    delta.save(folder / "deltas" / "honesty_lora_seed0")
    entries = [{"method": "none", "adapter": "-", "seed": -1, "coeff": 0.0, **scored()}]
    for c in PARAMS["weight_coeffs"]:
        if c:
            with apply_delta(model, delta, c):
                entries.append({"method": "weight", "adapter": "lora", "seed": 0, "coeff": c, **scored()})
    write_json(folder / "run.json", {"notebook": "weight_steering", "parameters": PARAMS, "status": "ok"})
    write_json(folder / "honesty_partial.json", {
        "entries": entries, "format": "ab_paren", "orders": "both",
        "rows_digest": wr.rows_digest("honesty", fmt, split, "written", "both"),
        "split_ids": {part: [i.id for i in items] for part, items in split.items()}})
    single = score_rows(model, tokenizer, to_rows(split["test"], fmt), fmt, batch_size=4, progress=False)["score"]
    assert max(abs(a - b) for a, b in zip(single.tolist(), entries[0]["row_scores"], strict=True)) > 1e-3  # teeth
    ablation = wa.run_ablation(_cfg(folder, groups=["controls"]), model, tokenizer, tmp_path / "a", progress=False,
                               log=lambda message: None)
    assert ablation.store.base["row_scores"] == pytest.approx(entries[0]["row_scores"], abs=1e-6)


def test_retained_has_a_paired_interval_over_rows(planted):
    """The full dW retains exactly [1, 1] of itself and the zero delta [0, 0]: only a bootstrap that resamples the
    same rows in the variant and the full dW gives that (catches: unpaired resampling); every other interval holds
    its point value, and a variant whose swing is undefined has none."""
    table = planted[-2].set_index(["family", "variant"])
    full, zero = table.loc[("lora", "full")], table.loc[("lora", "zero")]
    assert (full.retained_low, full.retained_high) == (pytest.approx(1.0), pytest.approx(1.0))
    assert (zero.retained_low, zero.retained_high) == (pytest.approx(0.0, abs=1e-9), pytest.approx(0.0, abs=1e-9))
    rows = table[table.retained_low.notna()]
    assert len(rows) > 3 and ((rows.retained_low <= rows.retained + 1e-9) & (rows.retained <= rows.retained_high
                                                                              + 1e-9)).all()


def test_rules_answer_from_intervals_holds_fails_or_inconclusive():
    """`by_interval`: a part retains enough only when its whole interval clears the cut, the others are removed only
    when theirs are under it (catches: the point value used, or low and high swapped)."""
    assert wa.by_interval({"mlp": (0.85, 1.1)}, 0.8, {"attn": (-0.1, 0.15)}, 0.2) == "holds"
    assert wa.by_interval({"mlp": (0.75, 1.1)}, 0.8, {"attn": (-0.1, 0.15)}, 0.2) == "inconclusive"
    assert wa.by_interval({"mlp": (0.85, 1.1)}, 0.8, {"attn": (0.1, 0.5)}, 0.2) == "inconclusive"
    assert wa.by_interval({"mlp": (0.3, 0.7)}, 0.8, {"attn": (-0.1, 0.15)}, 0.2) == "fails"
    assert wa.by_interval({"mlp": (0.85, 1.1)}, 0.8, {"attn": (0.25, 0.5)}, 0.2) == "fails"
    assert wa.by_interval({"a": (0.6, 0.9), "b": (math.nan, math.nan)}, 0.5) == "inconclusive"


def test_shares_table_puts_each_geometric_share_beside_its_chance(small):
    """Each DoRA and base-subspace share of ||dW|| is the hand ratio of the part's norm, with the chance value from
    random deltas of dW's per-tensor norms beside it (catches the table reading the share without its chance, or
    the chance from another split)."""
    model, _ = small
    delta = _layer1_delta(model, 0.01)
    table = wa.shares_table({"lora": delta}, model, ranks=[8], seeds=(1, 2))
    assert set(table.part) == {"dora_magnitude", "dora_direction", "dora_residual", "base_top8", "base_rest8"}
    magnitude = table.set_index("part").loc["dora_magnitude"]
    by_hand = next(v for v in da.dora_variants(delta, model) if v.name == "dora_magnitude").norm() / delta.norm()
    assert magnitude.share == pytest.approx(by_hand, rel=1e-9)
    assert magnitude.chance_min <= magnitude.chance <= magnitude.chance_max
    assert magnitude.ratio_to_chance == pytest.approx(magnitude.share / magnitude.chance)
    top = table.set_index("part").loc["base_top8"]
    assert 0 < top.chance < 1 and top.split == "base_svd"


def _interval_table(values: dict[str, dict[str, tuple[float, float, float]]], norm: dict[str, float] | None = None):
    """A hand-made `retained_table` on the preference: (value, low, high) per family and variant; `norm` overrides a
    variant's norm ratio (an empty drop has 0)."""
    rows = [{"family": f, "group": "g", "variant": v, "retained_preference": r, "retained_preference_low": lo,
             "retained_preference_high": hi, "norm_ratio": (norm or {}).get(v, 0.5)}
            for f, by in values.items() for v, (r, lo, hi) in by.items()]
    return _with_fields(pd.DataFrame(rows))


def _preference_effects(families, identifiable=True):
    return pd.DataFrame([{"family": f, "preference_identifiable": identifiable} for f in families])


SEED_FIVE = ("lora", "dora", "pissa", "delora", "oft")


def _answers(rules, family="all"):
    return {r["rule"]: r["answer"] for r in rules if r.get("family", "all") == family}


def test_seed_shared_core_reads_k32_of_the_full_behaviour_in_all_five_families():
    """The seed's rule 1 as written: shared32_keep >= 0.7 of the *full* behaviour and shared32_drop <= 0.5 in LoRA,
    DoRA, PiSSA, DeLoRA and OFT, from intervals. Catches reading the writes' own swing (`_of_writes`), any K but 32,
    two families sufficing, and point values instead of intervals."""
    good = {f: {"full": (1, 1, 1), "shared32_keep": (0.8, 0.75, 0.85), "shared32_drop": (0.1, 0.05, 0.2),
                "shared8_keep": (0.1, 0.0, 0.2), "shared8_drop": (0.9, 0.8, 1.0)} for f in SEED_FIVE}
    effects = _preference_effects(SEED_FIVE)
    rule = wa.seed_rules(_interval_table(good), effects)[0]
    assert (rule["rule"], rule["by"], rule["answer"]) == ("shared core", "seed", "holds")
    assert "keep_B_shared_K32" in rule["quoted"] and {q["variant"] for q in rule["read"]} == {"shared32_keep",
                                                                                              "shared32_drop"}
    straddles = {**good, "oft": {**good["oft"], "shared32_keep": (0.75, 0.6, 0.9)}}
    assert wa.seed_rules(_interval_table(straddles), effects)[0]["answer"] == "inconclusive"  # point 0.75 >= 0.7
    below = {**good, "oft": {**good["oft"], "shared32_keep": (0.5, 0.4, 0.6)}}
    assert wa.seed_rules(_interval_table(below), effects)[0]["answer"] == "fails"
    table = _interval_table(good)
    table["retained_preference_of_writes"] = 1.0  # the writes' own swing: never what the seed reads
    table.loc[table.variant == "shared32_keep", ["retained_preference", "retained_preference_low",
                                                 "retained_preference_high"]] = (0.4, 0.35, 0.45)
    assert wa.seed_rules(table, effects)[0]["answer"] == "fails"
    two = {f: good[f] for f in ("lora", "pissa")}
    rule = wa.seed_rules(_interval_table(two), _preference_effects(two))[0]
    assert rule["answer"] == "cannot run" and "['dora', 'delora', 'oft']" in rule["why"]
    empty = wa.seed_rules(_interval_table(good, norm={"shared32_drop": 0.0}), effects)[0]
    assert empty["answer"] == "cannot run" and "rank" in empty["why"]
    not_identifiable = wa.seed_rules(_interval_table(good), _preference_effects(SEED_FIVE, identifiable=False))
    assert set(_answers(not_identifiable).values()) <= {"inconclusive", "cannot run"}
    assert {r["answer"] for r in not_identifiable if r["rule"] == "complement/tail/many layers"} == {"inconclusive"}


def test_seed_per_family_rules_answer_from_intervals_and_list_what_they_read():
    """Rules 3-5 per family: any one reading's interval above 0.7 makes "top-k or write-not-read" hold; all below
    make it fail; "MLP up/gate" reads mlp_read alone; "many layers" needs every leave-one-layer-out above 0.7.
    Basin divergence (ours) reads each family's own top-K and the other's. Catches an "or" read as "and", a
    threshold other than 0.7, and a reading left out of `read`."""
    base = {"full": (1, 1, 1), "svd_top25": (0.9, 0.85, 0.95), "writes": (0.4, 0.35, 0.45),
            "own8_keep": (0.8, 0.75, 0.85), "own8_drop": (0.1, 0.05, 0.15), "svd_bottom25": (0.0, -0.01, 0.01),
            "mlp_read": (0.72, 0.6, 0.8), "L0_out": (0.95, 0.9, 1.0), "L1_out": (0.92, 0.9, 0.95)}
    values = {"lora": base, "pissa": {**base, "svd_top25": (0.5, 0.4, 0.6), "own8_keep": (0.3, 0.2, 0.4),
                                      "mlp_read": (0.3, 0.2, 0.4), "L1_out": (0.6, 0.5, 0.65)},
              }
    values["lora"] = {**values["lora"], "in_pissa8_keep": (0.1, 0.05, 0.2)}
    values["pissa"] = {**values["pissa"], "in_lora8_keep": (0.2, 0.1, 0.3)}
    rules = wa.seed_rules(_interval_table(values), _preference_effects(values))
    lora, pissa = _answers(rules, "lora"), _answers(rules, "pissa")
    assert lora["top-k or write-not-read"] == "holds" and pissa["top-k or write-not-read"] == "fails"
    assert lora["MLP up/gate"] == "inconclusive" and pissa["MLP up/gate"] == "fails"
    assert lora["complement/tail/many layers"] == "holds"  # every L<i>_out >= 0.7
    assert pissa["complement/tail/many layers"] == "fails"  # tail ~0, L1_out 0.6
    read = next(r for r in rules if r["rule"] == "top-k or write-not-read" and r["family"] == "lora")["read"]
    assert {q["variant"] for q in read} == {"svd_top25", "writes", "own8_keep"}
    basin = next(r for r in rules if r["rule"] == "basin divergence")
    assert basin["by"].startswith("ours") and basin["k"] == 8 and basin["answer"] == "fails"  # pissa's own 0.3
    values["pissa"]["own8_keep"] = (0.8, 0.75, 0.85)
    assert _answers(wa.seed_rules(_interval_table(values), _preference_effects(values)))["basin divergence"] == "holds"
    table = wa.seed_rules_table(rules)
    assert list(table.columns) == ["rule", "by", "family", "answer", "read", "why"]
    assert "lora svd_top25 0.900 [0.850, 0.950]" in table.read.str.cat(sep=" ")


def test_our_rules_are_labelled_ours():
    cfg = wa.WeightAblationConfig(ks=[8])
    values = {f: {"full": 1.0, "writes": 0.6, "reads": 0.6} for f in ("lora",)}
    assert {r["by"] for r in wa.verdict(_table(values), _effects(["lora"]), cfg)} == {"ours"}
    assert {r["by"] for r in wa.verdict(_table(values), _effects(["lora"], swing=0.1), cfg)} == {"ours"}


def test_row_swings_and_their_se_and_retained_interval_by_hand():
    """Each row's swing is its value at +c minus at -c (catches: the signs or the coefficients swapped), its SE the
    sample standard deviation over sqrt(rows) (catches: ddof 0), and the retained interval resamples the variant's
    and the full dW's row swings together: a variant with half of every row's swing retains exactly 0.5, so its
    interval is [0.5, 0.5] (catches: the rows resampled apart, or one side's swing misread)."""
    plus, minus = [0.9, 0.4, 0.1, 0.6], [0.1, 0.2, 0.3, -0.2]
    full = {repr(1.0): {"row_scores": plus}, repr(-1.0): {"row_scores": minus}}
    half = {repr(1.0): {"row_scores": [p / 2 for p in plus]}, repr(-1.0): {"row_scores": [m / 2 for m in minus]}}
    by_hand = [p - m for p, m in zip(plus, minus, strict=True)]
    assert wa.row_swings(full, 1.0).tolist() == pytest.approx(by_hand, abs=1e-12)
    mean = sum(by_hand) / 4
    se = math.sqrt(sum((x - mean) ** 2 for x in by_hand) / 3) / 2
    assert wa.row_swing_se(full, 1.0) == pytest.approx(se, abs=1e-12)
    assert wa.retained_interval(half, full, 1.0) == pytest.approx((0.5, 0.5), abs=1e-12)
    assert all(math.isnan(x) for x in wa.retained_interval(half, full, 1.0, key="preference_rows"))
