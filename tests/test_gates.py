"""Conditional steering (`steer(..., gate=Gate(...))`, Lee et al. 2025): a mixed batch, rows the gate opens for and
rows it keeps shut, equals separate runs (steered alone, plain alone), padded and unpadded, in a plain forward and in
KV-cached generation against a full forward per token; the score against a hand computation from block outputs
read by the test's own hook."""

from __future__ import annotations

import pytest
import torch
from conftest import hand_block_outputs, hand_greedy

from lib.gates import Gate, cast_score
from lib.generation import pad_batch
from lib.hooks import Steering, steer
from lib.models import hidden_size, tiny_model

PROMPTS = [[5, 6, 7, 8, 9, 10], [40, 41, 42], [5, 6, 7], [90, 91, 92, 93, 94], [12, 13]]


def _setup(seed: int = 1):
    model = tiny_model("llama", n_layers=3, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    condition = torch.randn(hidden_size(model), generator=generator)
    vector = {2: torch.randn(hidden_size(model), generator=generator) * 2.0}
    return model, condition, vector


def _hand_scores(model, condition: torch.Tensor, layer: int) -> torch.Tensor:
    """CAST's score by hand: the mean of the block output over the unpadded prompt, cos(h, tanh(P_c h))."""
    out = []
    for ids in PROMPTS:
        h = hand_block_outputs(model, ids)[layer].double().mean(dim=0)
        c = condition.double()
        p = torch.tanh((h @ c) / (c @ c) * c)
        out.append(float(h @ p / (h.norm() * p.norm())))
    return torch.tensor(out)


def _gate(model, condition) -> Gate:
    """A gate at layer 1 with its threshold between the scores, so that some rows open and some do not."""
    ordered = _hand_scores(model, condition, 1).sort().values
    threshold = float(ordered[1] + ordered[2]) / 2  # between two scores: rounding cannot flip a row
    return Gate(condition, layer=1, threshold=threshold, comparison=">")


def test_a_mixed_batch_equals_steered_and_plain_rows_run_alone():
    model, condition, vector = _setup()
    gate = _gate(model, condition)
    batch = pad_batch(PROMPTS, 0)
    with torch.no_grad(), steer(model, vector, 1.5, gate=gate):
        got = model(**batch).logits
    assert gate.decisions is not None and 0 < gate.decisions.sum() < len(PROMPTS)
    torch.testing.assert_close(gate.scores, _hand_scores(model, condition, 1).float(), atol=1e-5, rtol=1e-5)
    for row, ids in enumerate(PROMPTS):
        with torch.no_grad():
            if gate.decisions[row]:
                with steer(model, vector, 1.5):
                    alone = model(input_ids=torch.tensor([ids])).logits[0]
            else:
                alone = model(input_ids=torch.tensor([ids])).logits[0]
        torch.testing.assert_close(got[row, -len(ids):], alone, atol=1e-5, rtol=1e-5)


def test_kv_cached_generation_holds_each_rows_decision():
    model, condition, vector = _setup(2)
    gate = _gate(model, condition)
    batch = pad_batch(PROMPTS, 0)
    with torch.no_grad(), steer(model, vector, 1.5, gate=gate):
        tokens = model.generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=0)[:, batch["input_ids"]
                                                                                            .shape[1]:]
    decisions = gate.decisions.clone()
    assert 0 < decisions.sum() < len(PROMPTS)
    for row, ids in enumerate(PROMPTS):
        with torch.no_grad():
            if decisions[row]:
                with steer(model, vector, 1.5):
                    expected = hand_greedy(model, ids, 5)
            else:
                expected = hand_greedy(model, ids, 5)
        assert tokens[row].tolist() == expected, row


def test_the_gate_reads_its_block_unsteered_and_refuses_what_it_cannot_do():
    model, condition, vector = _setup(3)
    gate = _gate(model, condition)
    hand = _hand_scores(model, condition, 1).float()
    same_layer = {1: vector[2]}  # steering the condition block itself: the gate reads it before the steering
    with torch.no_grad(), steer(model, same_layer, 3.0, gate=gate):
        model(**pad_batch(PROMPTS, 0))
    torch.testing.assert_close(gate.scores, hand, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="below the gate's condition layer"), steer(model, {0: vector[2]}, gate=gate):
        pass
    with steer(model, {0: vector[2]}, gate=gate, positions="generated"):  # generated tokens come after the decision
        pass
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_key_values
        with steer(model, vector, gate=gate), pytest.raises(RuntimeError, match="has not decided"):
            model(input_ids=torch.tensor([[3]]), past_key_values=cache, use_cache=True)
    with pytest.raises(ValueError, match="comparison"):
        Gate(condition, layer=1, threshold=0.1, comparison=">=")
    with pytest.raises(ValueError, match="not layer=2"):
        Gate({1: condition}, layer=2, threshold=0.1)
    with pytest.raises(ValueError, match="hidden size"), steer(model, vector, gate=Gate(torch.ones(3), 1, 0.0)):
        pass


def test_gated_steering_through_run_batches_and_the_score_formula():
    """`Steering(gate=...)` in the batched loop: each batch decides for its own rows. And cast_score by hand."""
    from lib.generation import run_batches

    model, condition, vector = _setup(4)
    gate = _gate(model, condition)
    steering = Steering(vector, gate=gate)

    def forward(part, batch):
        return model(**batch).logits[:, -1], gate.decisions.clone()

    with torch.no_grad():
        out = run_batches(model, PROMPTS, 2, 0, forward, steering=steering, coefficients=[1.5] * len(PROMPTS),
                          progress=False)
        with steer(model, vector, 1.5, gate=Gate(condition, 1, gate.threshold)):
            whole = model(**pad_batch(PROMPTS, 0)).logits[:, -1]
    logits = torch.cat([logits for logits, _ in out])
    torch.testing.assert_close(logits, whole, atol=1e-5, rtol=1e-5)
    assert torch.cat([d for _, d in out]).tolist() == (_hand_scores(model, condition, 1) > gate.threshold).float() \
        .tolist()
    h, c = torch.tensor([[3.0, 4.0]]), torch.tensor([1.0, 0.0])
    p = torch.tanh(torch.tensor([3.0, 0.0]))
    assert float(cast_score(h, c)) == pytest.approx(float(h[0] @ p / (h[0].norm() * p.norm())))


def test_the_grid_search_finds_a_separating_gate_that_opens_for_the_labelled_prompts():
    """Labels planted from the hand score at layer 1 (the three highest): the search reaches F1 = 1, and its gate,
    used in generation on the same prompts, opens exactly for them."""
    from conftest import ByteTokenizer

    from lib.generation import encode, generate, render_chat
    from lib.kits.gate_search import search_gate

    model, condition, vector = _setup(5)
    tokenizer = ByteTokenizer(chat=True)
    prompts = ["the cat sat", "a much longer sentence here", "hi", "numbers 1 2 3", "steer me", "zzz"]
    rows = encode(tokenizer, [render_chat(tokenizer, p) for p in prompts])
    hand = []
    for ids in rows:
        h = hand_block_outputs(model, ids)[1].double().mean(dim=0)
        p = torch.tanh((h @ condition.double()) / (condition.double() @ condition.double()) * condition.double())
        hand.append(float(h @ p / (h.norm() * p.norm())))
    labels = [score >= sorted(hand)[-3] for score in hand]
    found = search_gate(model, tokenizer, prompts, labels, {0: condition, 1: condition, 2: condition})
    assert found.best["f1"] == 1.0 and set(found.table.layer) == {0, 1, 2}
    gate = found.gate
    with torch.no_grad():
        generate(model, tokenizer, prompts, max_new_tokens=2, steering=Steering(vector, gate=gate), progress=False)
    assert [bool(d) for d in gate.decisions] == labels  # F1 = 1 on these prompts, whichever layer won
    with pytest.raises(ValueError, match="one class"):
        search_gate(model, tokenizer, prompts, [True] * len(prompts), {1: condition})


def test_vector_apply_takes_the_gate():
    from lib.vectors import SteeringVector

    model, condition, vector = _setup(6)
    gate = _gate(model, condition)
    batch = pad_batch(PROMPTS, 0)
    with torch.no_grad():
        with SteeringVector(vector).apply(model, coefficient=1.5, gate=gate):
            got = model(**batch).logits
        with steer(model, vector, 1.5, gate=Gate(condition, 1, gate.threshold)):
            expected = model(**batch).logits
    assert 0 < gate.decisions.sum() < len(PROMPTS)
    torch.testing.assert_close(got, expected)
