"""Parity with the field's reference implementations: steering-vectors 0.12.2 and repeng 0.4.0.

Tier `peers` (./just test-peers; needs ./just peers-env): the peers run in .venv-peers (transformers 4.x, numpy 1.x)
through peers/worker.py, on the same token ids, layers and positions, and hand tensors back by safetensors files.
On the embedded default and tiny Qwen2 and Gemma-3 models:
- our mean_difference equals steering-vectors' mean-aggregated vector within 1e-4 relative error per layer;
- our pca_direction equals repeng's pca_diff direction up to sign (|cos| >= 0.999) wherever both read the same
  activations, and at the last layer repeng reads after the final norm (shown exactly: PCA of our final-normed
  activations reproduces it);
- the same vector and coefficient move the logits as steering-vectors' `apply` does (and repeng's ControlModel):
  steered-minus-unsteered logits within 1e-4, each tool against its own unsteered run.
The layer-index conventions these establish are tabulated in docs/conventions.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.export import import_llamacpp  # noqa: E402
from lib.extract import extract  # noqa: E402
from lib.generation import encode, pad_batch  # noqa: E402
from lib.hooks import record, steer  # noqa: E402
from lib.models import find_layers, hidden_size, load_model  # noqa: E402
from lib.vectors import mean_difference, pca_direction  # noqa: E402
from peers import client  # noqa: E402

pytestmark = [pytest.mark.peers,
              pytest.mark.skipif(not client.available(), reason="needs .venv-peers: ./just peers-env")]

MODELS = ("embedded", "qwen2", "gemma3")
COEFFICIENT = 3.0


def _final_norm(model) -> torch.nn.Module:
    path, _ = find_layers(model)
    owner = model.get_submodule(path.rsplit(".", 1)[0])
    return owner.norm


@pytest.fixture(scope="module", params=MODELS)
def parity(request, tmp_path_factory):
    """Our side and the peers' side of one model, run once per module."""
    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp(request.param)
    model, tokenizer = load_model()
    spec = client.embedded_spec()
    if request.param != "embedded":
        model, spec = client.save_tiny(request.param, tmp / "model", tokenizer, n_layers=3, seed=1)
    n_layers = len(find_layers(model)[1])
    layers = list(range(n_layers))
    pairs = client.contrast_pairs(tokenizer, 8)
    generator = torch.Generator().manual_seed(0)
    steer_layers = [n_layers // 3, n_layers - 1]
    size = hidden_size(model)
    # residual norms of the embedded default run ~75-470; tiny models ~8
    scale = 8.0 if request.param == "embedded" else 0.5
    vector = {layer: torch.randn(size, generator=generator) * scale / size**0.5 * 4 for layer in steer_layers}
    save_file({str(k): v for k, v in vector.items()}, str(tmp / "vector.safetensors"))
    texts = [pairs[0][0], pairs[3][1], pairs[5][0]]
    peer, info = client.run_job(spec, [
        {"name": "hidden_states", "text": pairs[0][0]},
        {"name": "extract", "pairs": pairs, "layers": layers, "batch_size": 1,
         "export_gguf": str(tmp / "repeng.gguf")},
        {"name": "steer_logits", "vector": str(tmp / "vector.safetensors"), "coefficient": COEFFICIENT,
         "texts": texts},
    ])
    positive = extract(model, tokenizer, [p for p, _ in pairs], use_cache=False, progress=False)
    negative = extract(model, tokenizer, [n for _, n in pairs], use_cache=False, progress=False)
    return {"name": request.param, "repeng_gguf": tmp / "repeng.gguf",
            "model": model, "tokenizer": tokenizer, "peer": peer, "info": info,
            "pairs": pairs, "layers": layers, "positive": positive, "negative": negative, "vector": vector,
            "texts": texts}


def test_both_stacks_see_the_same_token_ids(parity):
    tokenizer = parity["tokenizer"]
    ours = [tokenizer(text, add_special_tokens=False)["input_ids"] for pair in parity["pairs"] for text in pair]
    assert ours == parity["info"]["tasks"]["extract"]["ids"]


def test_layer_index_conventions(parity):
    """Ours, output_hidden_states and steering-vectors' decoder_block, as docs/conventions.md tabulates them."""
    model, tokenizer, peer = parity["model"], parity["tokenizer"], parity["peer"]
    n = len(parity["layers"])
    assert parity["info"]["tasks"]["hidden_states"]["n_hidden_states"] == n + 1
    batch = pad_batch(encode(tokenizer, [parity["pairs"][0][0]]), tokenizer.pad_token_id)
    with torch.no_grad(), record(model, None, "all") as acts:
        logits = model(**batch).logits[0]
    # unsteered logits of the two stacks (transformers 5 here, 4.x there): reported, and small
    stack_gap = float((logits - peer["logits"]).abs().max())
    print(f"{parity['name']}: unsteered logits, max |ours - peers' stack| = {stack_gap:.2e}")
    assert stack_gap < 1e-3
    for layer in range(n):
        # steering-vectors' decoder_block L is our block L
        torch.testing.assert_close(acts[layer][0], peer[f"sv_record.{layer}"], atol=1e-4, rtol=1e-5)
    for layer in range(n - 1):
        # output_hidden_states[L + 1] is our block L ...
        torch.testing.assert_close(acts[layer][0], peer[f"hs.{layer + 1}"], atol=1e-4, rtol=1e-5)
    # ... except the last entry, which is after the final norm
    assert (acts[n - 1][0] - peer[f"hs.{n}"]).abs().max() > 1e-2
    with torch.no_grad():
        torch.testing.assert_close(_final_norm(model)(acts[n - 1][0]), peer[f"hs.{n}"], atol=1e-4, rtol=1e-5)


def test_mean_difference_equals_steering_vectors(parity):
    ours = mean_difference(parity["positive"], parity["negative"])
    errors = {}
    for layer in parity["layers"]:
        theirs = parity["peer"][f"sv_mean.{layer}"]
        errors[layer] = float((ours[layer] - theirs).norm() / theirs.norm())
    print(f"{parity['name']}: max relative error vs steering-vectors {max(errors.values()):.2e}")
    assert max(errors.values()) < 1e-4, errors


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def test_pca_direction_equals_repeng_up_to_sign(parity):
    ours = pca_direction(parity["positive"], parity["negative"])
    n = len(parity["layers"])
    cosines = {layer: abs(_cos(ours[layer], parity["peer"][f"repeng_pca.{layer}"])) for layer in range(n - 1)}
    print(f"{parity['name']}: min |cos| vs repeng (layers 0..{n - 2}) {min(cosines.values()):.6f}")
    assert min(cosines.values()) >= 0.999, cosines
    # repeng's layer n-1 reads output_hidden_states[n], after the final norm: PCA of our normed activations matches
    norm = _final_norm(parity["model"])
    with torch.no_grad():
        normed = pca_direction({n - 1: norm(parity["positive"][n - 1])}, {n - 1: norm(parity["negative"][n - 1])})
    last = parity["peer"][f"repeng_pca.{n - 1}"]
    assert abs(_cos(normed[n - 1], last)) >= 0.999
    print(f"{parity['name']}: last layer |cos| ours pre-norm {abs(_cos(ours[n - 1], last)):.4f}, post-norm "
          f"{abs(_cos(normed[n - 1], last)):.6f}")


def test_steering_effect_equals_steering_vectors_and_repeng(parity):
    model, tokenizer, peer = parity["model"], parity["tokenizer"], parity["peer"]
    worst = {"sv": 0.0, "repeng": 0.0}
    for index, text in enumerate(parity["texts"]):
        batch = pad_batch(encode(tokenizer, [text]), tokenizer.pad_token_id)
        with torch.no_grad():
            base = model(**batch).logits[0]
            with steer(model, parity["vector"], COEFFICIENT):
                steered = model(**batch).logits[0]
        effect = steered - base
        assert effect.abs().max() > (1.0 if parity["name"] == "embedded" else 0.05)  # the steering matters
        for tool in worst:
            theirs = peer[f"{tool}.{index}"] - peer[f"base.{index}"]
            worst[tool] = max(worst[tool], float((effect - theirs).abs().max()))
    print(f"{parity['name']}: max |effect ours - effect theirs| {worst}")
    assert worst["sv"] < 1e-4 and worst["repeng"] < 1e-4, worst


def test_imports_repengs_own_gguf_onto_its_layers(parity):
    """A control vector written by repeng's export_gguf imports onto the layers repeng steers (our block indices)."""
    vector = import_llamacpp(parity["repeng_gguf"])
    assert vector.layers == parity["layers"]
    assert vector.meta["model_hint"] == parity["model"].config.model_type
    for layer in parity["layers"]:
        torch.testing.assert_close(vector[layer], parity["peer"][f"repeng_pca.{layer}"], atol=0, rtol=0)
