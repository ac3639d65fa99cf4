"""lib.kits.weight_runs: the run folder weight steering writes and the ablation reads. The journal's own run folders
(out/journal) read as they were written; the row digest keeps old persona digests; the neutral KL is zero for the
base and positive for every intervention; the folder's file names invert."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from lib.evals import mean_kl
from lib.hooks import Steering
from lib.io import REPO_ROOT
from lib.kits import choice_data
from lib.kits import weight_runs as wr
from lib.kits.data import NEUTRAL_TEXTS
from lib.models import embedded_model_dir, tiny_model
from lib.vectors import SteeringVector
from lib.weights import WeightDelta, apply_delta

JOURNAL = REPO_ROOT / "out" / "journal"
JOURNAL_STATES = sorted([*JOURNAL.glob("2026-11-24-weight-steering/*_partial.json"),
                         *JOURNAL.glob("2026-12-02-sycophancy/*_partial.json")])


def test_the_journal_run_folders_read_as_they_were_written():
    """Old run folders still load: every entry of the journal's weight-steering states (written before the kit)
    reads into a SavedEntry whose fields are the saved keys, the saved object itself kept and unchanged. Catches a
    field read from the wrong key (the seed from "coeff"), a reader that rewrites or drops keys, or the unit (what a
    resumed run skips) built from other fields."""
    assert len(JOURNAL_STATES) == 4
    for path in JOURNAL_STATES:
        text = path.read_text()
        state = json.loads(text)
        entries = wr.saved_entries(state)
        assert len(entries) == len(state["entries"]) > 10
        for raw, entry in zip(state["entries"], entries, strict=True):
            assert entry.saved is raw
            assert (entry.method, entry.adapter, entry.seed, entry.coeff) == (raw["method"], raw["adapter"],
                                                                            raw["seed"], raw["coeff"])
            assert entry.unit == (raw["method"], raw["adapter"], raw["seed"])
            assert entry.score == raw["score"] and entry.row_scores == raw["row_scores"]
            assert entry.is_weight(raw["adapter"]) == (raw["method"] == "weight")
        assert json.loads(text) == state  # reading wrote nothing into the entries
        weights = [e for e in entries if e.method == wr.WEIGHT]
        assert weights and not any(e.diverged for e in weights)  # the journal flagged no divergence in these runs
        assert {(e.adapter, e.seed) for e in entries if e.method != wr.WEIGHT} == {(wr.NO_ADAPTER, wr.NO_SEED)}


def test_a_saved_entry_reads_back_what_entry_record_wrote_and_its_divergence():
    """Catches `is_weight` ignoring the seed or the family, and `diverged` preferring the loss curves over the run's
    own flag (the flag is the paired check; the curves are the fallback for entries saved before it) or calling a
    prompt entry diverged."""
    scored = {"score": torch.tensor([0.5, -0.25]), "pmass": torch.tensor([0.9, 0.3])}
    record = wr.entry_record("honesty", wr.WEIGHT, 2, scored, 0.125, 0.5, adapter="lora", seed=1, extra="kept")
    assert list(record)[:5] == ["behaviour", "method", "adapter", "seed", "coeff"] and record["extra"] == "kept"
    assert record["coeff"] == 2.0 and record["row_scores"] == [0.5, -0.25] and record["frac_low_pmass"] == 0.5
    entry = wr.SavedEntry.read(record)
    assert (entry.coeff, entry.score, entry.unit) == (2.0, 0.125, ("weight", "lora", 1))
    assert entry.is_weight("lora") and entry.is_weight("lora", 1) and not entry.is_weight("lora", 0)
    assert not entry.is_weight("pissa") and not entry.diverged  # no losses, no flag
    climbing = {**record, "loss_positive": [2.0, 6.0, 5.0, 5.5], "loss_negative": [2.0, 1.0]}
    assert wr.SavedEntry.read(climbing).diverged  # from the curves: the last quarter ends above the first step
    assert not wr.SavedEntry.read({**climbing, "diverged": False}).diverged  # the run's paired check decided
    prompt = wr.entry_record("honesty", "prompt_simple", 1.0, scored, 0.1, 0.5, system="s")
    assert not wr.SavedEntry.read({**prompt, "loss_positive": [1.0, 9.0]}).diverged
    assert wr.mark_diverged([dict(climbing)])[0]["diverged"] is True


def test_delta_files_and_behaviours_are_found_by_the_names_they_were_saved_under(tmp_path):
    """Catches `saved_deltas` splitting a family name at its first underscore or a seed of two digits wrongly: it
    must invert `delta_file` for any family name."""
    for family, seed in (("lora", 0), ("lora", 12), ("ia3", 1), ("my_family", 3)):
        path = wr.delta_file(tmp_path, "honesty", family, seed)
        path.parent.mkdir(exist_ok=True)
        path.with_suffix(".safetensors").write_bytes(b"")
    wr.delta_file(tmp_path, "sycophancy", "lora", 0).with_suffix(".safetensors").write_bytes(b"")
    assert wr.saved_deltas(tmp_path, "honesty") == {
        "ia3": {1: wr.delta_file(tmp_path, "honesty", "ia3", 1)},
        "lora": {0: wr.delta_file(tmp_path, "honesty", "lora", 0), 12: wr.delta_file(tmp_path, "honesty", "lora", 12)},
        "my_family": {3: wr.delta_file(tmp_path, "honesty", "my_family", 3)}}
    for behaviour in ("sycophancy", "honesty"):
        wr.partial_file(tmp_path, behaviour).write_text("{}")
    assert wr.saved_behaviours(tmp_path) == ["honesty", "sycophancy"]


# ----------------------------------------------------------------------------- the rows


def test_rows_digest_changes_with_any_prompt():
    split = choice_data.split_items(choice_data.load_honesty(), 4, 2, 4, seed=0)
    fmt = wr.FORMATS["ab_paren"]
    digest = wr.rows_digest("honesty", fmt, split)
    again = choice_data.split_items(choice_data.load_honesty(), 4, 2, 4, seed=0)
    assert wr.rows_digest("honesty", fmt, again) == digest
    assert wr.rows_digest("honesty", wr.FORMATS["yesno"], split) != digest
    changed = dict(split, test=[choice_data.Item(i.id, i.question + " ", i.first, i.second, i.first_is_target)
                                for i in split["test"]])
    assert wr.rows_digest("honesty", fmt, changed) != digest


def test_rows_digest_keeps_persona_digests_and_separates_sources():
    """Catches adding the source to the digest unconditionally (the journal's persona partial files would no longer
    resume) and leaving it out (a labelled run could resume a persona run's adapters)."""
    split = choice_data.split_items(choice_data.load_honesty(), 4, 2, 4, seed=0)
    fmt = wr.FORMATS["ab_paren"]
    persona = wr.rows_digest("honesty", fmt, split)
    before = {"format": fmt.name, "test": [r.prompt for r in choice_data.to_rows(split["test"], fmt)],
              "val": [r.prompt for r in choice_data.to_rows(split["val"], fmt)],
              "train": [wr.open_prompt(item, "honesty") for item in split["train"]]}  # the digest before sources
    assert persona == wr.rows_digest("honesty", fmt, split, "persona") == \
        hashlib.sha1(json.dumps(before).encode()).hexdigest()[:16]
    assert len({persona, wr.rows_digest("honesty", fmt, split, "labelled"),
                wr.rows_digest("honesty", fmt, split, "written")}) == 3


# ----------------------------------------------------------------------------- the side effect


@pytest.fixture(scope="module")
def small():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    tokenizer.padding_side = "left"
    return tiny_model("llama", n_layers=2, hidden=64, vocab=len(tokenizer), seed=8), tokenizer


def test_neutral_kl_is_zero_for_the_base_and_positive_for_every_intervention(small):
    model, tokenizer = small
    texts = NEUTRAL_TEXTS[:3]
    reference = wr.neutral_logprobs(model, tokenizer, texts, batch_size=2)
    assert [len(r) for r in reference] == [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    again = wr.neutral_logprobs(model, tokenizer, texts, batch_size=3)
    assert mean_kl(reference, again) == pytest.approx(0, abs=1e-6)
    prompted = wr.neutral_logprobs(model, tokenizer, texts, system="You are a dishonest person.")
    assert mean_kl(reference, prompted) > 1e-4
    steering = Steering(SteeringVector({1: torch.randn(64, generator=torch.Generator().manual_seed(1))}))
    for coefficient, expect_zero in ((0.0, True), (4.0, False)):
        kl = mean_kl(reference, wr.neutral_logprobs(model, tokenizer, texts, steering=steering,
                                                       coefficient=coefficient))
        assert (kl == pytest.approx(0, abs=1e-6)) if expect_zero else kl > 1e-4
    name = "model.layers.0.mlp.down_proj.weight"
    delta = WeightDelta({name: 0.05 * torch.randn(model.get_parameter(name).shape)})
    with apply_delta(model, delta, 1.0):
        assert mean_kl(reference, wr.neutral_logprobs(model, tokenizer, texts)) > 1e-6


def test_the_split_and_the_scores_follow_the_orders_a_run_recorded(small):
    """"both": the balanced split (target first in half of each part) and content scores from both orders, with
    first_bias the mean position bias; "single" (a state without the field): the plain shuffle and one order, as
    the journal's runs were scored. The digest separates the two (catches: a legacy state rebuilt with the new
    split, which would pass the digest and mix rows)."""
    from lib.kits.two_choice import score_both_orders

    assert wr.orders_of({}) == "single" and wr.orders_of({"orders": "both"}) == "both"
    with pytest.raises(ValueError, match="orders='sideways'"):
        wr.orders_of({"orders": "sideways"})
    both = wr.run_split("honesty", 4, 2, 6, 0, "both")
    single = wr.run_split("honesty", 4, 2, 6, 0, "single")
    assert single == choice_data.split_items(choice_data.load_honesty(), 4, 2, 6, seed=0)
    assert sum(item.first_is_target for item in both["test"]) == 3
    fmt = wr.FORMATS["ab_paren"]
    assert wr.rows_digest("honesty", fmt, single) == wr.rows_digest("honesty", fmt, single, orders="single")
    assert wr.rows_digest("honesty", fmt, both, orders="both") != wr.rows_digest("honesty", fmt, both)
    model, tokenizer = small
    scored = wr.score_items(model, tokenizer, both["test"], fmt, "both", batch_size=8)
    by_hand = score_both_orders(model, tokenizer, both["test"], fmt, batch_size=3, progress=False)
    torch.testing.assert_close(scored["score"], by_hand.content, rtol=0, atol=1e-5)
    entry = wr.entry_record("honesty", "none", 0.0, scored, 0.0, 0.5)
    assert entry["first_bias"] == pytest.approx(float(by_hand.position_bias.double().mean()), abs=1e-6)
    assert entry["row_position_bias"] == pytest.approx(by_hand.position_bias.tolist(), abs=1e-5)
    assert "position_bias" not in wr.score_items(model, tokenizer, single["test"], fmt, "single", batch_size=8)
