"""Both answer orders separate what a model prefers from where the answer stands (lib.kits.two_choice), checked
with planted logit offsets on a tiny model: a pure position preference moves only the position bias, a planted
preference for the target answer moves only the content score, each by exactly the planted amount."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import ByteTokenizer

from lib.choice_evals import AnswerFormat, answer_token_ids
from lib.kits.choice_data import Item
from lib.kits.two_choice import balanced_split, score_both_orders, with_target
from lib.models import tiny_model

AB = AnswerFormat("ab_paren", "A", "B", "\nAnswer with (A) or (B).", "(")


def _items(n: int = 6) -> list[Item]:
    return [Item(f"q{i}", f"Question {i} about cats?", f"option one {i}", f"option two {i}", i % 3 == 0)
            for i in range(n)]


def _offset(model, tokenizer, per_row):
    """A hook on the unembedding adding `per_row(rows) -> [rows, vocab]` to the last position's logits."""

    def hook(module, args, output):
        output = output.clone()
        output[:, -1] += per_row(output.shape[0])
        return output

    return model.lm_head.register_forward_hook(hook)


def _scores(model, tokenizer, items):
    return score_both_orders(model, tokenizer, items, AB, batch_size=64, progress=False)


def test_planted_position_bias_moves_only_the_bias_and_planted_content_only_the_content():
    model, tokenizer = tiny_model("llama", seed=3), ByteTokenizer(chat=True)
    items = _items()
    a_ids, b_ids = answer_token_ids(tokenizer, "A"), answer_token_ids(tokenizer, "B")
    plain = _scores(model, tokenizer, items)

    def towards_a(rows: int) -> torch.Tensor:  # the model prefers "A" by 1.5 nats, whatever the question
        offset = torch.zeros(rows, model.config.vocab_size)
        offset[:, a_ids] = 1.5
        return offset

    handle = _offset(model, tokenizer, towards_a)
    try:
        biased = _scores(model, tokenizer, items)
    finally:
        handle.remove()
    torch.testing.assert_close(biased.content, plain.content, rtol=0, atol=1e-5)
    torch.testing.assert_close(biased.position_bias - plain.position_bias, torch.full((6,), 1.5), rtol=0, atol=1e-5)

    n = len(items)

    def towards_target(rows: int) -> torch.Tensor:  # rows 0..n-1 have the target as (A), rows n..2n-1 as (B)
        assert rows == 2 * n
        offset = torch.zeros(rows, model.config.vocab_size)
        offset[:n, a_ids] = 0.7
        offset[n:, b_ids] = 0.7
        return offset

    handle = _offset(model, tokenizer, towards_target)
    try:
        content = _scores(model, tokenizer, items)
    finally:
        handle.remove()
    torch.testing.assert_close(content.content - plain.content, torch.full((6,), 0.7), rtol=0, atol=1e-5)
    torch.testing.assert_close(content.position_bias, plain.position_bias, rtol=0, atol=1e-5)
    summary = content.summary(n_boot=500)
    assert summary["content"].value == pytest.approx(float(content.content.double().mean()))
    assert summary["content"].low <= summary["content"].value <= summary["content"].high


def test_each_order_is_the_single_order_score_of_that_arrangement():
    """An independent route: score_rows on the items arranged by hand gives the same signed scores."""
    from lib.choice_evals import score_rows
    from lib.kits.choice_data import to_rows

    model, tokenizer = tiny_model("qwen2", seed=2), ByteTokenizer(chat=True)
    items = _items(4)
    both = _scores(model, tokenizer, items)
    for first, got in ((True, both.target_first), (False, both.target_second)):
        arranged = [Item(i.id, i.question, *( (i.first, i.second) if i.first_is_target == first
                                             else (i.second, i.first)), first) for i in items]
        alone = score_rows(model, tokenizer, to_rows(arranged, AB), AB, progress=False)["score"]
        torch.testing.assert_close(got, alone, rtol=0, atol=1e-6)


def test_balanced_split_puts_the_target_first_in_half_of_every_part_and_keeps_groups_together():
    items = [Item(f"q{i}-{k}", f"question {i}", f"a{i}{k}", f"b{i}{k}", True) for i in range(12) for k in range(2)]
    parts = balanced_split(items, n_train=8, n_val=6, n_test=10, seed=0)
    where: dict[str, set[str]] = {}
    for name, part in parts.items():
        assert len(part) == {"train": 8, "val": 6, "test": 10}[name]
        assert sum(item.first_is_target for item in part) == len(part) // 2
        for question, count in Counter(item.question for item in part).items():
            assert count == 2, (name, question)  # both rows of a question in this part
            where.setdefault(question, set()).add(name)
    assert all(len(names) == 1 for names in where.values())
    assert parts == balanced_split(items, n_train=8, n_val=6, n_test=10, seed=0)
    with pytest.raises(ValueError, match="not enough items"):
        balanced_split(items, n_train=20, n_val=6, n_test=10, seed=0)


def test_with_target_and_refusals():
    item = Item("q", "Q?", "lie", "tell the truth", False)
    first = with_target(item, True)
    assert (first.first, first.second, first.first_is_target) == ("tell the truth", "lie", True)
    assert with_target(item, False) is item
    model, tokenizer = tiny_model("llama", seed=1), ByteTokenizer(chat=True)
    with pytest.raises(ValueError, match="items is empty"):
        score_both_orders(model, tokenizer, [], AB)
    with pytest.raises(ValueError, match="one per item"):
        score_both_orders(model, tokenizer, _items(2), AB, coefficients=[1.0, 2.0, 3.0, 4.0])


def test_the_answer_format_is_chosen_on_pmass_then_headroom_and_every_format_is_reported():
    """Planted logits: (X)/(Y) has the most pmass but is saturated (X by 12 nats whatever the order), (P)/(Q) is
    undecided but the model gives neither answer, (A)/(B) is answered and can still move: it is chosen. pmass alone
    would pick X/Y, headroom alone P/Q."""
    from lib.kits.two_choice import choose_answer_format

    model, tokenizer = tiny_model("llama", seed=3), ByteTokenizer(chat=True)
    formats = {name: AnswerFormat(name, first, second, f"\nAnswer with ({first}) or ({second}).", "(")
               for name, first, second in (("ab", "A", "B"), ("xy", "X", "Y"), ("pq", "P", "Q"))}
    boosts = {"ab": {"A": 6.5, "B": 6.0}, "xy": {"X": 12.0}, "pq": {}}  # by the format the prompt asks for
    seen: list[str] = []

    def remember(module, args, kwargs):  # which format each row's prompt names
        seen[:] = [tokenizer.decode(row.tolist()) for row in kwargs["input_ids"]]

    def planted(rows: int) -> torch.Tensor:
        offset = torch.zeros(rows, model.config.vocab_size)
        for row, text in enumerate(seen):
            name = next(name for name, fmt in formats.items() if fmt.suffix in text)
            for letter, value in boosts[name].items():
                offset[row, answer_token_ids(tokenizer, letter)] = value
        return offset

    handles = [model.register_forward_pre_hook(remember, with_kwargs=True), _offset(model, tokenizer, planted)]
    try:
        choice = choose_answer_format(model, tokenizer, _items(4), formats)
        with pytest.raises(ValueError, match="min_pmass=0.999"):
            choose_answer_format(model, tokenizer, _items(4), {"pq": formats["pq"]}, min_pmass=0.999)
        weak = choose_answer_format(model, tokenizer, _items(4), formats, min_pmass=0.999, fallback=True)
    finally:
        for handle in handles:
            handle.remove()
    readings = choice.formats
    assert set(readings) == {"ab", "xy", "pq"}
    assert readings["xy"]["pmass"] > readings["ab"]["pmass"] > 0.5 > readings["pq"]["pmass"]
    assert readings["pq"]["headroom"] > readings["ab"]["headroom"] > readings["xy"]["headroom"]
    assert readings["xy"]["headroom"] < 0.01  # saturated
    assert choice.chosen == "ab" and choice.as_dict()["chosen"] == "ab" and choice.eligible
    assert weak.chosen == "xy" and not weak.eligible and "no format reached" in weak.as_dict()["criterion"]


def test_a_batched_sweep_splits_into_each_coefficients_own_scores():
    """Items x 2 coefficients in one job, cut with `split(2)`: each block equals that coefficient scored alone, and
    `per_item` renames content to "score" (catches: blocks cut in the wrong order, or the orders interleaved)."""
    from lib.hooks import Steering
    from lib.models import hidden_size
    from lib.vectors import SteeringVector

    model, tokenizer = tiny_model("llama", seed=3), ByteTokenizer(chat=True)
    items = _items(4)
    vector = SteeringVector({1: torch.randn(hidden_size(model), generator=torch.Generator().manual_seed(2)) * 0.5})
    both = score_both_orders(model, tokenizer, items * 2, AB, steering=Steering(vector),
                             coefficients=[0.0] * 4 + [3.0] * 4, batch_size=5, progress=False)
    plain, steered = both.split(2)
    alone = score_both_orders(model, tokenizer, items, AB, steering=Steering(vector), coefficients=[3.0] * 4,
                              progress=False)
    torch.testing.assert_close(steered.content, alone.content, rtol=0, atol=1e-5)
    torch.testing.assert_close(plain.content, _scores(model, tokenizer, items).content, rtol=0, atol=1e-5)
    assert not torch.allclose(plain.content, steered.content)
    assert set(steered.per_item()) == {"score", "position_bias", "pmass"}
    torch.testing.assert_close(steered.per_item()["score"], steered.content)
    with pytest.raises(ValueError, match="equal parts"):
        both.split(3)
