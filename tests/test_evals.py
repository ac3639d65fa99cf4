"""Evaluations against independent, unbatched computations on a tiny model."""

from __future__ import annotations

import pytest
import torch
from conftest import ByteTokenizer, hand_steering

from lib.evals import NEUTRAL_INSTRUCTION, continuation_logprobs, next_token_kl, text_logprobs
from lib.hooks import Steering
from lib.models import tiny_model
from lib.vectors import SteeringVector

PROMPTS = ["question one", "a second, longer question", "q3"]
REPLIES = ["answer", "another answer here", "ok"]


def _steering(model) -> Steering:
    generator = torch.Generator().manual_seed(0)
    return Steering(SteeringVector({1: torch.randn(64, generator=generator)}))


def _manual_logprob(model, prompt_ids, reply_ids, context=None) -> float:
    ids = torch.tensor([prompt_ids + reply_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    total = sum(float(logprobs[len(prompt_ids) + i - 1, token]) for i, token in enumerate(reply_ids))
    return total / len(reply_ids)


def test_continuation_logprobs_match_unbatched_computation():
    model, tokenizer = tiny_model("llama", seed=5), ByteTokenizer()
    scores = continuation_logprobs(model, tokenizer, PROMPTS, REPLIES, batch_size=2, chat=False)
    for i, (prompt, reply) in enumerate(zip(PROMPTS, REPLIES, strict=True)):
        expected = _manual_logprob(model, tokenizer(prompt)["input_ids"], tokenizer(reply)["input_ids"])
        assert abs(float(scores[i]) - expected) < 1e-4


def test_steered_logprobs_with_row_coefficients_match_separate_runs():
    model, tokenizer = tiny_model("qwen2", seed=5), ByteTokenizer()
    steering = _steering(model)
    coefficients = [0.0, 3.0, -3.0]
    batched = continuation_logprobs(model, tokenizer, PROMPTS, REPLIES, steering=steering,
                                    coefficients=coefficients, chat=False)
    for i, coefficient in enumerate(coefficients):
        single = continuation_logprobs(model, tokenizer, PROMPTS[i:i + 1], REPLIES[i:i + 1],
                                       steering=Steering(steering.vector, coefficient), chat=False)
        assert abs(float(batched[i]) - float(single[0])) < 1e-5
    unsteered = continuation_logprobs(model, tokenizer, PROMPTS, REPLIES, chat=False)
    assert abs(float(batched[0]) - float(unsteered[0])) < 1e-6
    assert abs(float(batched[1]) - float(unsteered[1])) > 1e-4  # steering moved it


def test_next_token_kl_is_zero_unsteered_and_grows_with_scale():
    model, tokenizer = tiny_model("llama", seed=6), ByteTokenizer()
    kl = next_token_kl(model, tokenizer, ["some neutral text", "more of it"], steering=_steering(model),
                       coefficients=[0.0, 1.0, 4.0], batch_size=2)
    assert float(kl[0]) == 0.0  # the plain model: exactly, not rounding noise of either sign
    assert 0 < float(kl[1]) < float(kl[2])
    # independent route: text by text, unbatched, in float64, KL summed over tokens then averaged
    total, count = 0.0, 0
    for text in ["some neutral text", "more of it"]:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            base = torch.log_softmax(model(input_ids=ids).logits.double(), -1)
            with Steering(_steering(model).vector, 4.0).batch(model):
                steered = torch.log_softmax(model(input_ids=ids).logits.double(), -1)
        total += float((base.exp() * (base - steered)).sum())
        count += ids.shape[1]
    assert abs(float(kl[2]) - total / count) < 1e-4


def _own_steer_hook(model, layer: int, delta: torch.Tensor):
    """Independent of lib.hooks: add `delta` at every position of block `layer`'s output (unpadded rows only)."""
    from lib.models import find_layers

    def hook(module, args, output):
        return (output[0] + delta, *output[1:]) if isinstance(output, tuple) else output + delta

    return find_layers(model)[1][layer].register_forward_hook(hook)


@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_row_coefficients_follow_their_rows_across_batches(batch_size):
    """Per-row coefficients over several batches: each row equals an unbatched, unpadded forward steered by our
    own hook with that row's coefficient (a batch given another batch's coefficients would not)."""
    model, tokenizer = tiny_model("llama", seed=5), ByteTokenizer()
    steering = _steering(model)
    prompts = PROMPTS + ["fourth prompt", "the fifth"]
    replies = REPLIES + ["four", "five five"]
    coefficients = [0.5, -2.0, 3.0, 1.0, -1.0]
    scores = continuation_logprobs(model, tokenizer, prompts, replies, steering=steering, coefficients=coefficients,
                                   batch_size=batch_size, chat=False)
    for i, coefficient in enumerate(coefficients):
        handle = _own_steer_hook(model, 1, coefficient * steering.vector[1])
        try:
            expected = _manual_logprob(model, tokenizer(prompts[i])["input_ids"], tokenizer(replies[i])["input_ids"])
        finally:
            handle.remove()
        assert abs(float(scores[i]) - expected) < 1e-4, (i, float(scores[i]), expected)


def test_empty_inputs_raise_named_errors():
    model, tokenizer = tiny_model("llama", seed=5), ByteTokenizer()
    with pytest.raises(ValueError, match="prompts is empty"):
        continuation_logprobs(model, tokenizer, [], [], chat=False)
    with pytest.raises(ValueError, match="texts is empty"):
        next_token_kl(model, tokenizer, [], steering=_steering(model), coefficients=[1.0])
    with pytest.raises(ValueError, match="coefficients is empty"):
        next_token_kl(model, tokenizer, ["text"], steering=_steering(model), coefficients=[])
    from lib.evals import model_kl

    with pytest.raises(ValueError, match="texts is empty"):
        model_kl(model, model, tokenizer, [])


# ----------------------------------------------------------------------------- the renderings the KL compares
# One definition, `text_logprobs(rendering=...)`, for `next_token_kl` on raw text and weight steering's KL on a chat
# reply (issue "The weight wing and one way in", item 6). The hand route: ByteTokenizer's chat template written out,
# each row forwarded alone (batch_size=1 leaves no padding on the library's route either), KL summed in float32 as
# the library sums it: equal to the bit.

NEUTRAL = ["some neutral text", "more of it", "a third line, longer than the others"]


def _hand_rows(tokenizer, text: str, rendering: str, system: str | None) -> tuple[list[int], slice]:
    """The token row a rendering reads and the positions whose next-token distributions it compares."""
    ids = tokenizer(text)["input_ids"]
    if rendering == "raw":
        return ids, slice(0, len(ids))
    turn = (f"[system]{system}\n" if system else "") + f"[user]{NEUTRAL_INSTRUCTION}\n[assistant]"
    context = tokenizer(turn)["input_ids"]
    return context + ids, slice(len(context) - 1, len(context) + len(ids) - 1)


@torch.no_grad()
def _hand_logprobs(model, row: list[int], span: slice) -> torch.Tensor:
    ids = torch.tensor([row])
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(len(row))[None]).logits
    return torch.log_softmax(logits.float(), dim=-1)[0, span]


@pytest.mark.parametrize(("rendering", "system"), [("raw", None), ("chat_reply", None),
                                                   ("chat_reply", "You are a dishonest person.")])
def test_text_logprobs_are_the_hand_forward_of_each_rendering_to_the_bit(rendering, system):
    """Catches chat_reply reading one position late (`width - len(ids): width`, raw's span) or raw dropping its
    last position, the system prompt left out of the context, and the instruction changed (the KLs saved by
    weight-steering runs were read after it)."""
    model, tokenizer = tiny_model("llama", seed=6), ByteTokenizer(chat=True)
    got = text_logprobs(model, tokenizer, NEUTRAL, rendering=rendering, system=system, batch_size=1, progress=False)
    for text, logprobs in zip(NEUTRAL, got, strict=True):
        assert torch.equal(logprobs, _hand_logprobs(model, *_hand_rows(tokenizer, text, rendering, system)))
    batched = text_logprobs(model, tokenizer, NEUTRAL, rendering=rendering, system=system, batch_size=2,
                            progress=False)  # left padding moves the text: the span must follow it
    for one, padded in zip(got, batched, strict=True):
        assert one.shape == padded.shape and torch.allclose(one, padded, atol=1e-5)
    with pytest.raises(ValueError, match="rendering='chat' must be one of"):
        text_logprobs(model, tokenizer, NEUTRAL, rendering="chat")


@pytest.mark.parametrize("rendering", ["raw", "chat_reply"])
def test_next_token_kl_is_the_hand_kl_of_its_rendering_to_the_bit(rendering):
    """KL(unsteered || steered) per coefficient: summed per text over the rendering's positions, accumulated in
    float32 over texts, divided by their count. Catches the steered rows read in another rendering than the base
    (e.g. `rendering` not passed on), a row's KL charged to another coefficient (`row % k`), or the mean taken per
    text instead of per token."""
    model, tokenizer = tiny_model("llama", seed=6), ByteTokenizer(chat=True)
    steering, coefficients = _steering(model), [0.0, 2.0, -3.0]
    kl = next_token_kl(model, tokenizer, NEUTRAL, steering=steering, coefficients=coefficients, rendering=rendering,
                       batch_size=1, progress=False)
    expected = []
    for coefficient in coefficients:
        total, count = torch.zeros(()), torch.zeros(())
        for text in NEUTRAL:
            row, span = _hand_rows(tokenizer, text, rendering, None)
            base = _hand_logprobs(model, row, span)
            with hand_steering(model, {1: coefficient * steering.vector[1]}):
                steered = _hand_logprobs(model, row, span)
            total += (base.exp() * (base - steered)).sum()
            count += len(base)
        expected.append(total / count)
    assert torch.equal(kl, torch.stack(expected))
    assert float(kl[0]) == 0.0 and float(kl[1]) > 0

