"""An uncached extraction computes nothing after the deepest layer it reads (what makes it faster than
steering-vectors and repeng in out/bench/peers.md), and gives the same activations as a full pass."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from lib.extract import extract
from lib.generation import render_chat
from lib.models import embedded_model_dir, find_layers, tiny_model


def test_uncached_extract_stops_after_the_deepest_layer_and_matches_the_full_pass(isolated_cache):
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = tiny_model("llama", n_layers=3, hidden=64, vocab=len(tokenizer), seed=0)
    texts = [render_chat(tokenizer, p) for p in ("Hello there", "Why is the sky blue on a clear day?", "Hi")]
    calls = {name: 0 for name in ("block2", "norm", "lm_head")}
    _, blocks = find_layers(model)
    handles = [blocks[2].register_forward_hook(lambda *_: calls.__setitem__("block2", calls["block2"] + 1)),
               model.model.norm.register_forward_hook(lambda *_: calls.__setitem__("norm", calls["norm"] + 1)),
               model.lm_head.register_forward_hook(lambda *_: calls.__setitem__("lm_head", calls["lm_head"] + 1))]
    try:
        partial = extract(model, tokenizer, texts, layers=[0, 1], batch_size=2, use_cache=False, progress=False)
        assert calls == {"block2": 0, "norm": 0, "lm_head": 0}  # two batches, nothing computed after block 1
        full = extract(model, tokenizer, texts, batch_size=2, use_cache=True, progress=False)  # every layer
        assert calls == {"block2": 2, "norm": 0, "lm_head": 0}  # all blocks, still no final norm or unembedding
    finally:
        for handle in handles:
            handle.remove()
    for layer in (0, 1):
        torch.testing.assert_close(partial[layer], full[layer], atol=1e-6, rtol=0)
    # the model works normally afterwards: the stop hook is gone
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, len(tokenizer))
