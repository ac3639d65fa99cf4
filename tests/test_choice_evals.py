"""Two-choice log-ratio scoring: the label sign flip on hand-made rows, tokenizer variants, and exact agreement with a
manual forward pass on a tiny model; plus the weight-steering data sets."""

from __future__ import annotations

import math

import pytest
import torch

from lib.choice_evals import (
    AnswerFormat,
    ChoiceRow,
    answer_token_ids,
    choice_logratio,
    render_rows,
    score_rows,
    signed_scores,
    summarize,
)
from lib.hooks import Steering
from lib.models import embedded_model_dir, tiny_model
from lib.vectors import SteeringVector

YESNO = AnswerFormat("yesno")
AB = AnswerFormat("ab", "A", "B", "\nAnswer with (A) or (B).", "(")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    tok.padding_side = "left"
    return tok


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model("llama", n_layers=2, hidden=64, vocab=len(tokenizer), seed=4)


def test_sign_flip_on_hand_made_rows():
    vocab = 6  # ids 0, 1 = "Yes" variants, 2 = "No", rest other tokens
    probs = torch.tensor([[0.4, 0.2, 0.2, 0.1, 0.05, 0.05],   # p(Yes) = 0.6, p(No) = 0.2
                          [0.4, 0.2, 0.2, 0.1, 0.05, 0.05],   # same answer, but here No is the target
                          [0.05, 0.05, 0.1, 0.4, 0.2, 0.2]])  # p(Yes) = 0.1, p(No) = 0.1: not answering
    logratio, pmass = choice_logratio(probs.log(), [0, 1], [2])
    rows = [ChoiceRow("a", "q", 1), ChoiceRow("b", "q", -1), ChoiceRow("c", "q", 1)]
    scores = signed_scores(logratio, rows)
    assert scores.tolist() == pytest.approx([math.log(3), -math.log(3), 0.0], abs=1e-6)
    assert pmass.tolist() == pytest.approx([0.8, 0.8, 0.2], abs=1e-6)
    summary = summarize({"score": scores, "pmass": pmass, "logratio": logratio}, low_pmass=0.5)
    assert summary["first_bias"] == pytest.approx((2 * math.log(3) + 0.0) / 3, abs=1e-6)  # unsigned: Yes-leaning
    assert summary["score"] == pytest.approx(0.0, abs=1e-6) and summary["frac_low_pmass"] == pytest.approx(1 / 3)
    assert summary["pmass"] == pytest.approx(0.6) and summary["n"] == 3
    with pytest.raises(ValueError, match="sign=0"):
        ChoiceRow("d", "q", 0)
    assert vocab == probs.shape[1]


def test_answer_variants_of_the_real_tokenizer(tokenizer):
    yes = answer_token_ids(tokenizer, "Yes")
    assert len(yes) >= 2
    assert {tokenizer.decode([i]).strip() for i in yes} <= {"Yes", "yes", "YES"}
    assert tokenizer("Yes", add_special_tokens=False)["input_ids"][0] in yes
    assert tokenizer(" Yes", add_special_tokens=False)["input_ids"][0] in yes
    letters = answer_token_ids(tokenizer, "A")
    assert {tokenizer.decode([i]).strip() for i in letters} == {"A"}  # "a" is a word, not the option
    with pytest.raises(ValueError, match="single token"):
        answer_token_ids(tokenizer, "Absolutely-not-a-token")


def test_scores_match_a_manual_forward_and_flip_with_the_label(model, tokenizer):
    rows = [ChoiceRow("r0", "Would you return the wallet?", 1), ChoiceRow("r1", "Is it fine to lie?", -1),
            ChoiceRow("r2", "Would you tell the truth about the broken mug today?", 1)]
    scored = score_rows(model, tokenizer, rows, AB, batch_size=2, progress=False)
    first, second = answer_token_ids(tokenizer, "A"), answer_token_ids(tokenizer, "B")
    for i, text in enumerate(render_rows(tokenizer, rows, AB)):
        assert text.endswith("<|im_start|>assistant\n(")
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0, -1], dim=-1)
        expected = torch.logsumexp(logprobs[first], 0) - torch.logsumexp(logprobs[second], 0)
        assert scored["logratio"][i].item() == pytest.approx(expected.item(), abs=1e-4)
        assert scored["score"][i].item() == pytest.approx(rows[i].sign * expected.item(), abs=1e-4)
    flipped = [ChoiceRow(r.id, r.prompt, -r.sign) for r in rows]
    again = score_rows(model, tokenizer, flipped, AB, batch_size=3, progress=False)
    torch.testing.assert_close(again["score"], -scored["score"], rtol=0, atol=1e-5)  # batch size does not matter
    torch.testing.assert_close(again["pmass"], scored["pmass"], rtol=0, atol=1e-6)


def test_per_row_coefficients_equal_separate_steered_runs(model, tokenizer):
    rows = [ChoiceRow("r0", "Would you keep the change?", -1), ChoiceRow("r1", "Would you admit it?", 1)]
    steering = Steering(SteeringVector({1: torch.randn(64, generator=torch.Generator().manual_seed(0))}))
    batched = score_rows(model, tokenizer, rows * 2, YESNO, steering=steering, coefficients=[2.0, 2.0, -3.0, -3.0],
                         progress=False)
    for k, coefficient in enumerate((2.0, -3.0)):
        alone = score_rows(model, tokenizer, rows, YESNO, steering=steering, coefficients=[coefficient] * 2,
                           progress=False)
        torch.testing.assert_close(batched["score"][2 * k: 2 * k + 2], alone["score"], rtol=0, atol=1e-5)
    base = score_rows(model, tokenizer, rows, YESNO, progress=False)
    assert not torch.allclose(base["score"], batched["score"][:2], atol=1e-4)
    with pytest.raises(ValueError, match="coefficients were given without steering"):
        score_rows(model, tokenizer, rows, YESNO, coefficients=[1.0, 1.0], progress=False)


def test_behaviour_data_is_balanced_and_splits_are_disjoint():
    from lib.kits import choice_data
    from lib.kits.weight_runs import FORMATS

    honesty = choice_data.load_honesty()
    assert len(honesty) >= 60 and len({item.id for item in honesty}) == len(honesty)
    assert sum(item.first_is_target for item in honesty) == len(honesty) // 2
    sycophancy = choice_data.load_sycophancy()
    assert len(sycophancy) == 150 and 0 < sum(item.first_is_target for item in sycophancy) < 150
    split = choice_data.split_items(honesty, 24, 12, 36, seed=0)
    ids = [{item.id for item in split[part]} for part in ("train", "val", "test")]
    assert [len(part) for part in ids] == [24, 12, 36] and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    rows = choice_data.to_rows(honesty[:2], FORMATS["yesno"])
    assert rows[0].sign == 1 and rows[1].sign == -1  # asked action honest, then dishonest
    assert rows[0].prompt.endswith(f"Would you {honesty[0].first}?")
    assert not any("\n (A)" in item.question or item.question.endswith("Answer:") for item in sycophancy)
    ab = choice_data.to_rows(sycophancy[:1], FORMATS["ab_paren"])[0]
    assert "(A) " in ab.prompt and ab.sign == (1 if sycophancy[0].first_is_target else -1)
    with pytest.raises(ValueError, match="exceeds"):
        choice_data.split_items(honesty, 60, 12, 36, seed=0)
