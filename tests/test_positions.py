"""Position scopes in KV-cached generation, checked against a no-cache recompute with our own hook.

transformers 5.24 passes the cache as `cache=`, no `cache_position`, and drops an all-ones attention mask,
so an unpadded batch (one prompt, or prompts of equal length) reaches the decoder stack with nothing but the
cache object to tell a decode step from a new prompt. These tests run `model.generate` itself (whatever
kwargs the installed transformers passes) and compare every step's logits with one full forward over the
generated sequence, steered at hand-chosen positions by a hook that does not use lib.hooks.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from lib.generation import generate, pad_batch, render_chat
from lib.hooks import steer
from lib.models import cache_argument, find_layers, hidden_size, tiny_model
from lib.positions import past_length

LAYER = 1
WEIGHT = 0.75
NEW_TOKENS = 6
ARCHS = ("llama", "gpt2", "gemma3", "qwen2")
SCOPES = ("generated", "prompt", slice(7, 12))  # the slice crosses from prompt into generated


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return {arch: tiny_model(arch, n_layers=3, seed=2) for arch in ARCHS}


def _vector(model: torch.nn.Module, norm: float = 8.0) -> torch.Tensor:
    direction = torch.randn(hidden_size(model), generator=torch.Generator().manual_seed(11))
    return direction / direction.norm() * norm


@contextlib.contextmanager
def _own_hook(model: torch.nn.Module, layer: int, delta: torch.Tensor, where: torch.Tensor):
    """Add `delta` at the [batch, tokens] positions `where` of block `layer`'s output (independent of lib.hooks)."""

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden + where.unsqueeze(-1).to(hidden.dtype) * delta.to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = find_layers(model)[1][layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _in_scope(length: int, prompt_length: int, scope) -> torch.Tensor:
    """Hand computation for one unpadded row: which of its positions the scope covers."""
    index = torch.arange(length)
    if scope == "generated":
        return index >= prompt_length
    if scope == "prompt":
        return index < prompt_length
    return (index >= scope.start) & (index < scope.stop)


def _generate(model, batch, context) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens [B, P + N] and the raw logits of every step [B, N, vocab]."""
    with torch.no_grad(), context:
        out = model.generate(**batch, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.logits, dim=1)


def _reference_logits(model, row_tokens: list[int], prompt_length: int, scope, vector) -> torch.Tensor:
    """No cache, no padding: one forward over prompt + generated tokens, steered at the positions in scope;
    the logits that predicted each generated token [N, vocab]."""
    ids = torch.tensor([row_tokens])
    where = _in_scope(len(row_tokens), prompt_length, scope).unsqueeze(0)
    with torch.no_grad(), _own_hook(model, LAYER, WEIGHT * vector, where):
        logits = model(input_ids=ids, use_cache=False).logits[0]
    return logits[prompt_length - 1: len(row_tokens) - 1]


def _batch(lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, 250, (n,), generator=generator).tolist() for n in lengths]
    return pad_batch(rows, 0, "left", positions=False)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("lengths", [[9], [9, 9], [6, 10]], ids=["one-prompt", "equal-lengths", "left-padded"])
@pytest.mark.parametrize("scope", SCOPES, ids=str)
def test_generation_scopes_equal_a_no_cache_recompute(models, arch, lengths, scope):
    model = models[arch]
    batch = _batch(lengths)
    vector = _vector(model)
    plain_tokens, plain_logits = _generate(model, batch, contextlib.nullcontext())
    tokens, logits = _generate(model, batch, steer(model, {LAYER: vector}, WEIGHT, positions=scope))
    width = batch["input_ids"].shape[1]
    changed = (logits - plain_logits).abs().amax(dim=-1) > 1e-3  # [B, N]
    for row, length in enumerate(lengths):
        row_tokens = batch["input_ids"][row, width - length:].tolist() + tokens[row, width:].tolist()
        expected = _reference_logits(model, row_tokens, length, scope, vector)
        torch.testing.assert_close(logits[row], expected, rtol=1e-4, atol=1e-4)
        # not vacuous: step i's logits change exactly when a position before it is in scope
        in_scope = _in_scope(len(row_tokens), length, scope)
        reached = torch.tensor([bool(in_scope[: length + i].any()) for i in range(NEW_TOKENS)])
        assert torch.equal(changed[row], reached), (changed[row], reached)


def test_generated_scope_through_lib_generate_on_the_embedded_default(embedded):
    """One prompt, no padding, through `lib.generate`: "generated" must change the text, and equal a greedy loop
    that recomputes the whole sequence each step (no cache) with our own hook on the generated positions."""
    model, tokenizer = embedded
    prompt = "Write one sentence about the sea."
    layer, new_tokens = 10, 6
    direction = torch.randn(hidden_size(model), generator=torch.Generator().manual_seed(0))
    vector = direction / direction.norm() * 60.0
    from lib.hooks import Steering
    from lib.vectors import SteeringVector

    steering = Steering(SteeringVector({layer: vector}), positions="generated")
    plain = generate(model, tokenizer, [prompt], max_new_tokens=new_tokens, progress=False)[0]
    steered = generate(model, tokenizer, [prompt], max_new_tokens=new_tokens, steering=steering, progress=False)[0]

    ids = tokenizer(render_chat(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    prompt_length = len(ids)
    with torch.no_grad():
        for _ in range(new_tokens):
            where = (torch.arange(len(ids)) >= prompt_length).unsqueeze(0)
            with _own_hook(model, layer, vector, where):
                token = int(model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].argmax())
            ids.append(token)
            if token == tokenizer.eos_token_id:
                break
    expected = tokenizer.decode(ids[prompt_length:], skip_special_tokens=True)
    assert steered == expected
    assert steered != plain


# ----------------------------------------------------------------------------- past length and its refusals


def test_past_length_reads_every_source_and_refuses_disagreement():
    from transformers import DynamicCache

    from lib.models import tiny_model

    model = tiny_model("llama", n_layers=1)
    cache = DynamicCache()
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6, 7, 8]]), **{cache_argument(model): cache}, use_cache=True)
    assert cache.get_seq_length() == 4
    for name in ("cache", "past_key_values", "my_new_name"):
        assert past_length({name: cache}, 1) == 4  # found by type, not by name
    assert past_length({"attention_mask": torch.ones(2, 5)}, 1) == 4
    assert past_length({"cache_position": torch.tensor([4])}, 1) == 4
    assert past_length({"use_cache": True, "attention_mask": None, "cache": None}, 3) == 0
    with pytest.raises(ValueError, match="disagree"):
        past_length({"cache": cache, "attention_mask": torch.ones(1, 3)}, 1)
    with pytest.raises(TypeError, match="past_key_values=tuple"):
        past_length({"past_key_values": ((torch.zeros(1),),)}, 1)
    with pytest.raises(ValueError, match="2 cache objects"):
        past_length({"cache": cache, "other_cache": DynamicCache()}, 1)


@pytest.mark.parametrize("how", ["keyword", "past_key_values", "positional"])
def test_decode_step_is_recognised_however_the_cache_is_passed(models, how):
    """A prompt call then a one-token call without attention mask: "generated" steers the second call only.
    The cache goes in under the installed transformers' own name (`cache` from 5.24), under the older
    `past_key_values`, or positionally."""
    from transformers import DynamicCache

    model = models["gpt2"]  # GPT2Model takes the cache as its second positional argument
    vector = _vector(model)
    prompt, step = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[9]])
    stack = model.transformer
    name = cache_argument(stack) if how == "keyword" else how

    def run(context) -> torch.Tensor:
        cache = DynamicCache()
        with torch.no_grad(), context:
            stack(prompt, cache, use_cache=True) if how == "positional" else stack(prompt, **{name: cache})
            out = stack(step, cache) if how == "positional" else stack(step, **{name: cache})
        return out.last_hidden_state

    plain = run(contextlib.nullcontext())
    steered = run(steer(model, {LAYER: vector}, positions="generated"))
    assert not torch.allclose(steered, plain)
    full = torch.cat([prompt, step], dim=1)
    where = torch.tensor([[False] * 4 + [True]])
    with torch.no_grad(), _own_hook(model, LAYER, vector, where):
        expected = model.transformer(full).last_hidden_state[:, -1:]
    torch.testing.assert_close(steered, expected, rtol=1e-4, atol=1e-5)


def test_prompt_scopes_refuse_a_context_entered_after_the_prompt(models):
    from transformers import DynamicCache

    model = models["llama"]
    cache = {cache_argument(model): DynamicCache()}
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6, 7]]), **cache, use_cache=True)
        for scope in ("generated", "prompt"):
            with pytest.raises(ValueError, match="needs the prompt's forward call inside the steer block"), \
                    steer(model, {LAYER: _vector(model)}, positions=scope):
                model(input_ids=torch.tensor([[9]]), **cache, use_cache=True)
        with steer(model, {LAYER: _vector(model)}, positions="all"):  # needs no prompt: allowed
            model(input_ids=torch.tensor([[9]]), **cache, use_cache=True)


@pytest.mark.parametrize("scope", [slice(4, 2), slice(3, 3), slice(0, 0), slice(None, 0)])
def test_an_empty_slice_is_refused_before_anything_runs(models, scope):
    """An empty slice steered no token without a word (layers=[] raised); now it is refused at `steer`."""
    model = models["llama"]
    with pytest.raises(ValueError, match="is empty: it would steer no token"), \
            steer(model, {LAYER: _vector(model)}, positions=scope):
        pass


def test_a_cache_cut_back_into_the_prompt_forgets_the_prompt_length(models):
    """Prefix re-use and assisted decoding crop the KV cache back into the prompt; which tokens are prompt is then
    unknown, so prompt/generated scopes raise instead of treating re-fed prompt tokens as generated (a mutation that
    kept the old prompt length survived the suite)."""
    from transformers import DynamicCache

    model = models["llama"]
    cache = DynamicCache()
    arguments = {cache_argument(model): cache, "use_cache": True}
    with torch.no_grad(), steer(model, {LAYER: _vector(model)}, positions="generated"):
        model(input_ids=torch.tensor([[5, 6, 7, 8, 9]]), **arguments)  # the prompt: 5 tokens
        model(input_ids=torch.tensor([[10]]), **arguments)  # a generated token: fine
        cache.crop(-3)  # 6 cached tokens cut to 3: back into the prompt
        with pytest.raises(ValueError, match="cut back"):
            model(input_ids=torch.tensor([[8, 9]]), **arguments)
