"""Directional ablation (`lib.ablation.ablate`) and its weights (`orthogonalize`), by independent routes:

- the paper's definition by hand: project the direction out of every residual writer's output (the embeddings, the
  attention output and MLP down projections), with hooks on those modules written here;
- a hand projection of what `record` reads inside `ablate`: nothing along the direction at any layer (or exactly
  `value`);
- `orthogonalize`'s weights against the hooks, and the exported checkpoint reloaded from disk;
- per-row directions in a padded batch against each row alone and unpadded; KV-cached generation against a full
  forward per token.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from conftest import hand_greedy

from lib.ablation import ablate, orthogonalize, tied_embeddings, unit_basis, untie_embeddings
from lib.generation import pad_batch
from lib.hooks import record
from lib.models import TINY_ARCHS, hidden_size, tiny_model
from lib.vectors import SteeringVector
from lib.weights import apply_delta, export_checkpoint

# what adds to the residual stream, by module name per architecture (written out here, not read from lib)
LLAMA_LIKE = ("self_attn.o_proj", "mlp.down_proj")
WRITERS = {"llama": LLAMA_LIKE, "qwen2": LLAMA_LIKE, "mistral": LLAMA_LIKE, "phi3": LLAMA_LIKE,
           "gpt2": ("attn.c_proj", "mlp.c_proj"), "gpt_neox": ("attention.dense", "mlp.dense_4h_to_h"),
           "gemma3": ("post_attention_layernorm", "post_feedforward_layernorm")}  # Gemma norms after both
EMBEDDINGS = ("embed_tokens", "wte", "wpe", "embed_in")
IDS = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]


def _direction(model, seed: int = 0) -> torch.Tensor:
    return torch.randn(hidden_size(model), generator=torch.Generator().manual_seed(seed))


@contextmanager
def hand_ablation(model, arch: str, direction: torch.Tensor):
    """Arditi et al.'s ablation by hand: every writer module's output minus its projection on the unit direction."""
    unit = direction / direction.norm()

    def hook(module, args, output):
        return output - (output @ unit)[..., None] * unit

    handles = [module.register_forward_hook(hook) for name, module in model.named_modules()
               if name.endswith(WRITERS[arch]) or name.rsplit(".", 1)[-1] in EMBEDDINGS]
    assert len(handles) == 2 * model.config.num_hidden_layers + (2 if arch == "gpt2" else 1)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_ablate_equals_the_hand_ablation_of_every_writer(arch):
    model = tiny_model(arch, n_layers=3, seed=1)
    with torch.no_grad():  # norm weights away from their init, so a norm is not a plain rescaling
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.add_(0.3 * torch.randn_like(param))
    direction = _direction(model)
    ids = torch.tensor([IDS[0]])
    with torch.no_grad():
        with hand_ablation(model, arch, direction):
            expected = model(input_ids=ids).logits
        with ablate(model, direction):
            got = model(input_ids=ids).logits
        plain = model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (plain - got).abs().max() > 1e-3  # it did something


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_nothing_along_the_direction_is_left_in_the_residual_stream(arch):
    model = tiny_model(arch, n_layers=3, seed=1)
    direction = _direction(model, 2)
    unit = direction / direction.norm()
    n_layers = model.config.num_hidden_layers
    with torch.no_grad():
        with ablate(model, direction), record(model, list(range(n_layers)), reduction="all") as acts:
            model(input_ids=torch.tensor([IDS[0]]))
        with ablate(model, direction, value=3.5), record(model, list(range(n_layers)), reduction="all") as valued:
            model(input_ids=torch.tensor([IDS[0]]))
        with record(model, list(range(n_layers)), reduction="all") as plain:
            model(input_ids=torch.tensor([IDS[0]]))
    for layer in range(n_layers):
        along = acts[layer] @ unit
        assert along.abs().max() < 1e-4 * acts[layer].norm(dim=-1).max(), layer
        torch.testing.assert_close(valued[layer] @ unit, torch.full_like(along, 3.5), atol=1e-4, rtol=1e-4)
        assert (plain[layer] @ unit).abs().max() > 1e-2  # the plain stream does carry it


@pytest.mark.parametrize("arch", [arch for arch in TINY_ARCHS if arch != "gemma3"])  # gemma3: refused, below
def test_orthogonalized_weights_equal_the_hooks(arch):
    model = untie_embeddings(tiny_model(arch, n_layers=3, seed=1))
    direction = _direction(model, 3)
    batch = pad_batch(IDS, 0)
    real = batch["attention_mask"].bool()  # the hooks leave padding alone, the weights do not: compare real tokens
    with torch.no_grad():
        with ablate(model, direction):
            expected = model(**batch).logits[real]
        delta = orthogonalize(model, direction)
        with apply_delta(model, delta):
            got = model(**batch).logits[real]
        for layers, embeddings, value in (([1, 2], False, None), (None, True, -2.0)):
            with ablate(model, direction, layers=layers, embeddings=embeddings, value=value):
                part = model(**batch).logits[real]
            with apply_delta(model, orthogonalize(model, direction, layers=layers, embeddings=embeddings,
                                                  value=value)):
                torch.testing.assert_close(model(**batch).logits[real], part, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_a_norm_after_the_writes_is_refused_and_a_tied_head_needs_untying():
    model = tiny_model("gemma3", n_layers=2, seed=1)
    with torch.no_grad():  # Gemma's post-attention norms scale each unit: no weight edit removes the direction
        for name, param in model.named_parameters():
            if "post_attention_layernorm" in name or "post_feedforward_layernorm" in name:
                param.copy_(torch.randn_like(param))
    with pytest.raises(ValueError, match="no weight edit equals the ablation"):
        orthogonalize(untie_embeddings(model), _direction(model))
    tied = tiny_model("llama", n_layers=2, seed=1)
    tied.lm_head.weight = tied.model.embed_tokens.weight
    assert tied_embeddings(tied)
    with torch.no_grad():
        before = tied(input_ids=torch.tensor([IDS[0]])).logits
    with pytest.raises(ValueError, match="untie_embeddings"):
        orthogonalize(tied, _direction(tied))
    orthogonalize(tied, _direction(tied), embeddings=False, layers=[0, 1])  # the blocks alone need no untying
    untie_embeddings(tied)
    assert not tied_embeddings(tied) and tied.config.tie_word_embeddings is False
    with torch.no_grad():
        torch.testing.assert_close(tied(input_ids=torch.tensor([IDS[0]])).logits, before, atol=0, rtol=0)


def test_per_row_directions_in_a_padded_batch_equal_each_row_alone():
    model = tiny_model("qwen2", n_layers=3, seed=1)
    a, c = _direction(model, 4), _direction(model, 9)
    b = torch.stack([_direction(model, 5), _direction(model, 6)])  # a 2-d subspace
    rows = [IDS[0], IDS[1], IDS[1]]
    batch = pad_batch(rows, 0)  # left padded
    with torch.no_grad():
        with ablate(model, [a, None, c]):
            got = model(**batch).logits[:, -1]
        with ablate(model, a):
            first = model(input_ids=torch.tensor([rows[0]])).logits[:, -1]
        with ablate(model, c):
            third = model(input_ids=torch.tensor([rows[2]])).logits[:, -1]
        second = model(input_ids=torch.tensor([rows[1]])).logits[:, -1]
        with ablate(model, b), record(model, [2], reduction="all") as acts:  # a subspace: both directions leave
            model(input_ids=torch.tensor([rows[0]]))
    torch.testing.assert_close(got, torch.cat([first, second, third]), atol=1e-5, rtol=1e-5)
    basis = unit_basis(b, hidden_size(model))
    assert (acts[2] @ basis.T).abs().max() < 1e-4 * acts[2].norm(dim=-1).max()


def test_kv_cached_generation_under_ablate_equals_a_full_forward_per_token():
    model = tiny_model("llama", n_layers=3, seed=1)
    direction = _direction(model, 7)
    with torch.no_grad(), ablate(model, direction, positions="all"):
        expected = hand_greedy(model, IDS[0], 6)
        tokens = model.generate(input_ids=torch.tensor([IDS[0]]), max_new_tokens=6, do_sample=False,
                                pad_token_id=0)[0, len(IDS[0]):].tolist()
        plain_free = hand_greedy(model, IDS[1], 4)
    assert tokens == expected and len(plain_free) == 4
    # the prompt only: cached generation against a full forward per token ablating the prompt's positions
    prompt = IDS[0]
    with torch.no_grad():
        with ablate(model, direction, positions=slice(0, len(prompt))):
            by_hand = hand_greedy(model, prompt, 6)
        with ablate(model, direction, positions="prompt"):
            cached = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                                    pad_token_id=0)[0, len(prompt):].tolist()
            logits = model(input_ids=torch.tensor([prompt + by_hand])).logits  # a plain forward is all prompt
        with ablate(model, direction):
            everywhere = model(input_ids=torch.tensor([prompt + by_hand])).logits
    assert cached == by_hand
    torch.testing.assert_close(logits, everywhere)


def test_the_exported_checkpoint_is_the_ablated_model(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model("llama", n_layers=2, seed=3)
    direction = _direction(model, 8)
    folder = export_checkpoint(model, None, orthogonalize(model, direction), 1.0, tmp_path / "orthogonal")
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad(), ablate(model, direction):
        expected = model(input_ids=torch.tensor([IDS[0]])).logits
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=torch.tensor([IDS[0]])).logits, expected, atol=1e-4, rtol=1e-4)


def test_bad_directions_are_refused_before_any_forward():
    model = tiny_model("llama", n_layers=2, seed=1)
    size = hidden_size(model)
    cases = [
        (torch.zeros(size), "zero or its"),
        (torch.ones(size + 1), "hidden size"),
        (torch.stack([torch.ones(size), 2 * torch.ones(size)]), "linearly dependent"),
        (torch.full((size,), float("nan")), "NaN"),
        (SteeringVector({0: torch.ones(size), 1: torch.ones(size)}), "one direction"),
    ]
    for direction, message in cases:
        with pytest.raises(ValueError, match=message), ablate(model, direction):
            pass
    with pytest.raises(ValueError, match="spans 2"), ablate(model, torch.randn(2, size), value=1.0):
        pass
    with pytest.raises(ValueError, match="embeddings=True"), ablate(model, torch.randn(size), layers=[1],
                                                                      value=1.0):
        pass
    with pytest.raises(ValueError, match="out of range"), ablate(model, torch.randn(size), layers=[5]):
        pass
    with pytest.raises(ValueError, match="2 rows but the batch has 1"), torch.no_grad(), \
            ablate(model, [torch.randn(size), None]):
        model(input_ids=torch.tensor([IDS[0]]))
    with ablate(model, SteeringVector({1: torch.randn(size)})):  # a vector of one layer is its direction
        pass


def test_the_embedded_default_orthogonalized_equals_ablate(embedded):
    """SmolLM2 ties its head to the embeddings: untied (a copy), its orthogonalized weights equal the hooks over all
    30 blocks; the model the other tests share is left tied."""
    import copy

    model, tokenizer = copy.deepcopy(embedded[0]), embedded[1]
    assert tied_embeddings(model) and tied_embeddings(embedded[0])
    untie_embeddings(model)
    direction = torch.randn(hidden_size(model), generator=torch.Generator().manual_seed(10))
    ids = torch.tensor([tokenizer("The weather today is mild and")["input_ids"]])
    with torch.no_grad():
        with ablate(model, direction):
            expected = model(input_ids=ids).logits
        with apply_delta(model, orthogonalize(model, direction)):
            got = model(input_ids=ids).logits
        plain = model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=1e-3)
    assert (plain - expected).abs().max() > 0.1


def test_a_writer_ablate_does_not_know_is_caught_by_the_probe(monkeypatch):
    """If the writer table missed a module (here the MLP's down projection, hidden from it), the entry probe finds
    the block still writing along the direction and refuses, instead of a silent partial ablation."""
    import lib.ablation as ablation

    known = ablation.residual_writers
    monkeypatch.setattr(ablation, "residual_writers", lambda block, prefix="": {
        name: module for name, module in known(block, prefix).items() if not name.endswith("down_proj")})
    model = tiny_model("llama", n_layers=2, seed=5)
    with pytest.raises(ValueError, match="a module steerlab does not know writes the residual stream"), \
            ablate(model, _direction(model, 11)):
        pass
