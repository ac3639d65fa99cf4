"""Every PEFT adapter family trains on a tiny model and yields a dense, non-zero delta against the untouched base."""

from __future__ import annotations

import pytest
import torch

from lib.kits.adapters import ADAPTER_FAMILIES, SFTPair, peft_config, tokenize_pairs, train_adapter
from lib.models import embedded_model_dir, tiny_model

PAIRS = [SFTPair("You found a wallet. What would you do?", "I would return it to its owner."),
         SFTPair("Did you break the mug?", "Yes, I broke it and I am sorry."),
         SFTPair("Is the report yours?", "No, my colleague wrote most of it.")]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_dir())


@pytest.fixture(scope="module")
def base(tokenizer):
    model = tiny_model("llama", n_layers=2, hidden=64, vocab=len(tokenizer), seed=0)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


@pytest.mark.parametrize("family", ADAPTER_FAMILIES)
def test_every_family_trains_one_step_and_gives_a_nonzero_delta(family, base, tokenizer):
    before = {name: p.detach().clone() for name, p in base.named_parameters()}
    delta, losses = train_adapter(base, tokenizer, PAIRS, family, steps=1, batch_size=3, learning_rate=1e-2,
                                  progress=False)
    assert len(losses) == 1 and losses[0] > 0
    assert delta.norm() > 0 and delta.meta["adapter"] == family
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert all(name.startswith("model.layers.") and name.split(".")[-2] in targets for name in delta.names)
    assert {name.split(".")[2] for name in delta.names} == {"0", "1"}  # both layers
    for name, p in base.named_parameters():  # trained on a copy: the base is untouched
        assert torch.equal(p, before[name]), name


def test_seed_fixes_the_adapter(base, tokenizer):
    first, _ = train_adapter(base, tokenizer, PAIRS, "lora", seed=1, steps=2, batch_size=2, progress=False)
    again, _ = train_adapter(base, tokenizer, PAIRS, "lora", seed=1, steps=2, batch_size=2, progress=False)
    other, _ = train_adapter(base, tokenizer, PAIRS, "lora", seed=2, steps=2, batch_size=2, progress=False)
    assert all(torch.equal(first[name], again[name]) for name in first.names)
    assert (first - other).norm() > 1e-3 * first.norm()


def test_loss_is_on_response_tokens_only(tokenizer):
    (ids, labels), = tokenize_pairs(tokenizer, PAIRS[:1])
    response = tokenizer(PAIRS[0].response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert labels[-len(response):] == response == ids[-len(response):]
    assert set(labels[: -len(response)]) == {-100}
    (short_ids, short_labels), = tokenize_pairs(tokenizer, PAIRS[:1], max_length=len(response) + 2)
    assert len(short_ids) == len(response) + 2 and short_labels[-len(response):] == response  # prompt start cut


def test_unknown_family_and_bad_rank_are_rejected(base):
    with pytest.raises(ValueError, match="adapter='lokr'.*lora"):
        peft_config("lokr", base)
    with pytest.raises(ValueError, match="rank=0"):
        peft_config("lora", base, rank=0)


def test_peft_options_reach_the_adapter_and_bound_delora(base, tokenizer):
    # DeLoRA's boundary caps each tensor's delta near lambda * |W| (Bini et al. 2025): lambda 0.01 against 1.0 must
    # shrink the delta about 100x; with the option dropped on the way to PEFT both would train at the default 15.
    assert peft_config("delora", base, delora_lambda=0.5).delora_lambda == 0.5
    norms = {}
    for boundary in (0.01, 1.0):
        delta, _ = train_adapter(base, tokenizer, PAIRS, "delora", steps=1, batch_size=3, learning_rate=1e-3,
                                 progress=False, delora_lambda=boundary)
        norms[boundary] = delta.norm()
    assert 30 < norms[1.0] / norms[0.01] < 300


def test_peft_options_are_checked_by_name_before_training(base):
    with pytest.raises(ValueError, match=r"'delora_lamda', which DeloraConfig \(delora\) has no field.*delora_lambda"):
        peft_config("delora", base, delora_lamda=1.0)
    with pytest.raises(ValueError, match="sets 'r', which steerlab sets for lora: use rank"):
        peft_config("lora", base, r=4)
    with pytest.raises(ValueError, match="sets 'use_dora'.*family name"):
        peft_config("lora", base, use_dora=True)
    peft_config("oft", base, oft_block_size=16)  # a real field passes


def test_training_set_loss_before_and_after_is_recorded_on_all_rows(base, tokenizer):
    """The delta's meta carries the mean response-token loss over every training row before (the base) and after
    (base + delta) training; checked against an independent recompute with the delta applied to the base: each row
    alone, unpadded, its response-token losses summed over all rows. Catches the loss taken on one batch, or on the
    wrong model."""
    from lib.weights import apply_delta

    delta, _ = train_adapter(base, tokenizer, PAIRS, "lora", steps=3, batch_size=2, learning_rate=1e-2,
                             progress=False)
    rows = tokenize_pairs(tokenizer, PAIRS)

    def mean_response_loss() -> float:
        total, count = 0.0, 0
        for ids, labels in rows:
            tokens = sum(label != -100 for label in labels[1:])  # the labels a causal LM's shifted loss scores
            total += float(base(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss) * tokens
            count += tokens
        return total / count

    with torch.no_grad():
        before = mean_response_loss()
        with apply_delta(base, delta, 1.0):
            after = mean_response_loss()
    assert delta.meta["train_loss_before"] == pytest.approx(before, rel=1e-4)
    assert delta.meta["train_loss_after"] == pytest.approx(after, rel=1e-3)
    assert after < before  # three steps at lr 1e-2 on three rows learn something
