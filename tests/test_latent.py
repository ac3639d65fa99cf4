"""The continuous-thought loop: cached loop vs an uncached reference, per-step steering and reading."""

from __future__ import annotations

import pytest
import torch
from conftest import ByteTokenizer

from lib.latent import LatentSteering, latent_generate
from lib.models import find_layers, tiny_model

# The loop must pass its KV cache under the name the installed transformers takes (`lib.models.cache_argument`):
# a deprecated kwarg name is an error here, so the suite fails before the name is removed.
pytestmark = pytest.mark.filterwarnings("error:.*is deprecated:FutureWarning")

PROMPTS = ["what is 2+3", "x", "a longer prompt about adding numbers"]
K = 3




TOKENIZER = ByteTokenizer()


def _run(model, prompts=PROMPTS, **kwargs):
    settings = {"latent_steps": K, "chat": False, "max_new_tokens": 5, "record_layers": [0, 1], "progress": False,
                "start_text": "<", "end_text": ">"}
    return latent_generate(model, TOKENIZER, prompts, **{**settings, **kwargs})


def _reference(model, prompt: str, k: int, projection=None, n_new: int = 5, layers=(0, 1)):
    """No cache, no padding: the whole sequence of embeddings goes through the model at every step."""
    embed = model.get_input_embeddings()
    seq = embed(torch.tensor([TOKENIZER(prompt + "<")["input_ids"]]))
    blocks = find_layers(model)[1]
    latents: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    seen: dict[int, torch.Tensor] = {}

    def keeper(layer):
        def hook(module, args, output):
            seen[layer] = (output if isinstance(output, torch.Tensor) else output[0])[0, -1]
        return hook

    handles = [blocks[layer].register_forward_hook(keeper(layer)) for layer in layers]
    with torch.no_grad():
        for step in range(k + 1):
            out = model(inputs_embeds=seq, output_hidden_states=True)
            if step > 0:
                for layer in layers:
                    latents[layer].append(seen[layer])
            if step == k:
                break
            thought = out.hidden_states[-1][:, -1]
            seq = torch.cat([seq, (projection(thought) if projection else thought).unsqueeze(1)], dim=1)
        seq = torch.cat([seq, embed(torch.tensor([TOKENIZER(">")["input_ids"]]))], dim=1)
        tokens = []
        for _ in range(n_new):
            token = model(inputs_embeds=seq).logits[0, -1].argmax()
            tokens.append(int(token))
            if int(token) == TOKENIZER.eos_token_id:
                break
            seq = torch.cat([seq, embed(token.view(1, 1))], dim=1)
    for handle in handles:
        handle.remove()
    return tokens, {layer: torch.stack(v) for layer, v in latents.items()}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_cached_padded_loop_matches_uncached_reference(arch):
    model = tiny_model(arch, n_layers=2, seed=3)
    projection = torch.nn.Linear(64, 64)
    torch.nn.init.normal_(projection.weight, std=0.1)
    batched = _run(model, projection=projection, batch_size=3)
    for i, prompt in enumerate(PROMPTS):
        tokens, latents = _reference(model, prompt, K, projection)
        assert batched.texts[i] == TOKENIZER.decode(tokens)
        for layer in (0, 1):
            torch.testing.assert_close(batched.latents[layer][i], latents[layer], atol=1e-5, rtol=1e-4)


def test_latent_shapes_and_no_thoughts():
    model = tiny_model("llama", n_layers=2, seed=3)
    out = _run(model)
    assert out.latents[1].shape == (len(PROMPTS), K, 64)
    plain = _run(model, latent_steps=0, record_layers=None)
    assert len(plain.texts) == len(PROMPTS) and plain.latents == {}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_alpha_zero_is_bit_identical_to_the_loop_without_hooks(arch):
    model = tiny_model(arch, n_layers=2, seed=4)
    direction = {1: torch.randn(K, 64) * 10}
    plain = _run(model)
    zero = _run(model, steering=LatentSteering(direction), coefficients=[0.0] * len(PROMPTS))
    assert zero.texts == plain.texts
    for layer in (0, 1):
        assert torch.equal(zero.latents[layer], plain.latents[layer])
    after = _run(model)  # and the hooks are gone afterwards
    assert torch.equal(after.latents[1], plain.latents[1])


def test_each_step_gets_its_own_vector_at_its_own_position_only():
    model = tiny_model("llama", n_layers=2, seed=5)
    direction = torch.zeros(K, 64)
    direction[1] = torch.randn(64)
    plain = _run(model)
    alpha = 2.5
    steered = _run(model, steering=LatentSteering({1: direction}), coefficients=[alpha, 0.0, alpha])
    # step 0 untouched; step 1 at the steered layer is the plain output plus alpha * d[1] (same inputs so far)
    assert torch.equal(steered.latents[1][:, 0], plain.latents[1][:, 0])
    torch.testing.assert_close(steered.latents[1][[0, 2], 1], plain.latents[1][[0, 2], 1] + alpha * direction[1],
                               atol=1e-6, rtol=0)
    # the row with coefficient 0 is exactly the unsteered row; step 2 of steered rows moved (through the thought)
    assert torch.equal(steered.latents[1][1], plain.latents[1][1])
    assert not torch.allclose(steered.latents[0][0, 2], plain.latents[0][0, 2])


def test_step_weights_scale_each_step():
    model = tiny_model("llama", n_layers=2, seed=6)
    direction = torch.randn(K, 64)
    per_step = _run(model, steering=LatentSteering({1: direction}, step_weights=[0.0, 2.0, 0.0]),
                    coefficients=[1.0] * 3)
    only_step_1 = direction.clone()
    only_step_1[[0, 2]] = 0
    reference = _run(model, steering=LatentSteering({1: only_step_1}), coefficients=[2.0] * 3)
    assert torch.equal(per_step.latents[1], reference.latents[1])


def test_bad_latent_steering_is_refused():
    model = tiny_model("llama", n_layers=2, seed=6)
    with pytest.raises(ValueError, match=r"latent_steps=3 and hidden size 64"):
        _run(model, steering=LatentSteering({1: torch.zeros(2, 64)}))
    with pytest.raises(ValueError, match="step_weights has 2 values"):
        _run(model, steering=LatentSteering({1: torch.zeros(K, 64)}, step_weights=[1.0, 1.0]))
    with pytest.raises(ValueError, match="coefficients were given without steering"):
        _run(model, coefficients=[1.0] * 3)
    with pytest.raises(ValueError, match="layers"):
        _run(model, steering=LatentSteering({7: torch.zeros(K, 64)}))
