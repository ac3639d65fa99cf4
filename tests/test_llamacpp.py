"""llama.cpp itself steers with our exported control vector as our hooks do (tier `llamacpp`, ./just test-peers).

Needs the llama-completion binary that ./just build-llamacpp caches outside the clone (never built by the default
run). On the embedded default's own Q4_1 GGUF: with the layer mapping of lib.export, llama.cpp's steered next-token
argmax agrees with our hooked fp32 model on >= 90% of 24 prompts at a scale that changes the unsteered argmax on most
of them, and the same vector written one layer off (either way) falls below 90%: the check has teeth, and it is how
the mapping (our block L = llama.cpp direction.L) was established.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peers import client, serve_check  # noqa: E402

pytestmark = [pytest.mark.llamacpp,
              pytest.mark.skipif(not serve_check.llamacpp_binary().exists(),
                                 reason="needs llama-completion: ./just build-llamacpp")]


def test_llamacpp_steers_like_our_hooks_and_one_layer_off_does_not():
    report = serve_check.run(n_prompts=24, threads=1, with_logprobs=False)
    print(report)
    assert report["unsteered_agreement"] >= 0.9  # Q4_1 llama.cpp and our fp32 model agree before steering
    assert report["steering_changes_argmax"] > 0.5  # the scale matters on most prompts
    assert report["steered_agreement_offset+0"] >= 0.9
    assert report["steered_agreement_offset-1"] < 0.9
    assert report["steered_agreement_offset+1"] < 0.9


@pytest.mark.skipif(not client.available(), reason="needs .venv-peers (llama.cpp's Python bindings run there)")
def test_llamacpp_logprobs_correlate_with_ours():
    """Log-probs read through llama.cpp's own bindings (Q4_1, quantised activations): the full-vocabulary log-probs
    and the steering effect (steered - unsteered) correlate with our fp32 hooked model's; one layer off, less so."""
    report = serve_check.run(n_prompts=12, threads=1, offsets=(0,), with_logprobs=True)
    print({k: v for k, v in report.items() if "correlation" in k})
    assert report["logprob_correlation_unsteered"] > 0.99
    assert report["logprob_correlation_steered"] > 0.99
    assert report["steering_effect_correlation"] > 0.97
    for offset in ("-1", "+1"):
        assert report[f"steering_effect_correlation_offset{offset}"] < report["steering_effect_correlation"] - 0.05


def test_llamacpp_without_the_control_vector_is_unsteered():
    """The steered agreement above is not an accident of the prompts: without the file llama.cpp keeps the
    unsteered argmax, which differs from the steered one on most prompts."""
    from lib.models import embedded_gguf, load_model

    model, tokenizer = load_model()
    texts = serve_check.check_prompts(tokenizer, 8)
    vector = serve_check.probe_vector()
    steered = serve_check.hooked_next_tokens(model, tokenizer, texts, vector, serve_check.SCALE)
    plain = serve_check.llamacpp_next_tokens(serve_check.llamacpp_binary(), embedded_gguf(), texts, None, 0.0)
    assert serve_check.agreement(steered, plain) < 0.9


@pytest.mark.skipif(not serve_check.llamacpp_binary().with_name("llama-cvector-generator").exists(),
                    reason="needs llama-cvector-generator: ./just build-llamacpp")
def test_imports_a_vector_written_by_llamacpps_cvector_generator():
    """llama.cpp's own cvector-generator writes direction.1..29 for the 30-block model; imported onto blocks 1..29 and
    applied by our hooks it steers as llama.cpp applies the file (a smooth 29-layer vector under Q4_1, so the margin
    over one-layer-off imports is smaller than with the probe vector above)."""
    report = serve_check.cvector_generator_check(scale=5.0, n_prompts=24)
    print(report)
    assert report["layers"] == list(range(1, 30))
    assert report["steering_changes_argmax"] > 0.5
    assert report["steered_agreement_offset+0"] >= 0.8
    for offset in ("-1", "+1"):
        assert report[f"steered_agreement_offset{offset}"] <= report["steered_agreement_offset+0"] - 0.1


def test_llamacpp_serves_the_orthogonalised_model_as_our_ablation_hooks():
    """The ablation as weights in a GGUF (no hooks, no control vector): llama.cpp's greedy next token equals our
    hooked fp32 model's where the ablation moved it, and the unedited GGUF does not."""
    report = serve_check.orthogonal_check()
    print(report)
    assert report["orthogonal_agreement"] >= 0.9
    assert report["ablation_changes"] >= 0.15  # the check has teeth: the ablation moves the argmax
    assert report["agreement_where_ablation_changed"] >= 0.9
    assert report["unedited_gguf_vs_ablated"] < report["orthogonal_agreement"] - 0.1
