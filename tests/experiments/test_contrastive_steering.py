"""The contrastive-steering experiment's steps, as nbs/contrastive_steering.py calls them, on a tiny Llama with the
byte tokenizer, each against the tests' own route (conftest's plain hooks, one unpadded row at a time): the vector is
a hand mean difference, the side-by-side rows are hand greedy generations, the curves are hand log-probs and KLs.
Each test names the one-line mutation it catches."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    ByteTokenizer,
    hand_block_outputs,
    hand_greedy,
    hand_kl,
    hand_reply_logprob,
    hand_steering,
    one_thread,
)

from lib.experiments import contrastive_steering as cs
from lib.experiments.contrastive_steering import ContrastiveConfig, ContrastiveData
from lib.kits.data import DEFAULT_PROMPTS, NEUTRAL_TEXTS, Example
from lib.models import tiny_model
from lib.vectors import SteeringVector

TOKENIZER = ByteTokenizer(chat=True)
EOS = ByteTokenizer.eos_token_id
N_LAYERS = 3


@pytest.fixture(scope="module")
def model():
    with one_thread():
        yield tiny_model("llama", n_layers=N_LAYERS, seed=21)


def _cfg(**overrides) -> ContrastiveConfig:
    settings = {"layer": 1, "scale": 4.0, "n_samples": 3, "n_eval": 2, "inference_n": 2, "max_tokens": 5,
                "curve_scales": [0.0, 2.0], "batch_size": 3}
    return ContrastiveConfig(**{**settings, **overrides})


def _data() -> ContrastiveData:
    """Short examples of two styles: a few bytes each keeps the tiny model fast."""
    target = [Example(f"add {a} and {b}", f"{a} + {b} = {a + b}") for a, b in [(1, 2), (3, 4), (5, 6), (7, 1), (2, 2)]]
    baseline = [Example(q, a) for q, a in [("how do I boil an egg", "Put it in boiling water."),
                                           ("how do I tie a knot", "Loop it, then pull."),
                                           ("how do I plant a seed", "Push it into soil."),
                                           ("how do I fold a shirt", "Sleeves in, then halve it."),
                                           ("how do I wash a cup", "Soap, rinse, dry.")]]
    return ContrastiveData(target[:3], target[3:], baseline[:3], baseline[3:], ["hello there", "tell me a story"])


def _chat(prompt: str) -> list[int]:
    """The byte tokenizer's chat template, written out here rather than through lib.generation.render_chat."""
    return TOKENIZER(f"[user]{prompt}\n[assistant]")["input_ids"]


def _ids(text: str) -> list[int]:
    return TOKENIZER(text)["input_ids"]


@pytest.mark.parametrize("include_response", [False, True])
def test_vector_is_the_hand_mean_difference_at_the_last_token(model, isolated_cache, include_response):
    """Every layer's vector is mean(target) - mean(baseline) of block outputs at the last token of the chat-rendered
    prompt (after the reply with include_response). Catches: target and baseline swapped, a mean over all tokens
    for the last one, include_response ignored, the eval split read instead of the training one."""
    cfg, data = _cfg(include_response=include_response), _data()
    vector = cs.build_vector(model, TOKENIZER, cfg, data)

    def last_tokens(examples: list[Example]) -> dict[int, torch.Tensor]:
        rows = [hand_block_outputs(model, _chat(e.prompt) + (_ids(e.response) if include_response else []))
                for e in examples]
        return {layer: torch.stack([row[layer][-1] for row in rows]).mean(0) for layer in range(N_LAYERS)}

    target, baseline = last_tokens(data.target_train), last_tokens(data.baseline_train)
    assert vector.layers == list(range(N_LAYERS))
    for layer in range(N_LAYERS):
        torch.testing.assert_close(vector[layer], target[layer] - baseline[layer], atol=1e-5, rtol=1e-4)
    assert vector.meta["position"] == "last prompt token" + (" after the reply" if include_response else "")


def test_side_by_side_rows_are_hand_generations_at_zero_and_at_scale(model):
    """`baseline` is the unsteered greedy text and `steered` the text with scale * vector added at `layer` (own
    hook, no KV cache), one row per prompt. Catches: the two halves of the batch swapped, the vector added at every
    layer it has instead of `layer`, the scale not applied."""
    cfg = _cfg(scale=6.0)
    generator = torch.Generator().manual_seed(3)
    vector = SteeringVector({layer: torch.randn(64, generator=generator) * 0.5 for layer in range(N_LAYERS)})
    prompts = ["hello there", "tell me a story"]
    rows = cs.side_by_side(model, TOKENIZER, cfg, vector, prompts)
    assert [(r["prompt_index"], r["prompt"]) for r in rows] == list(enumerate(prompts))
    for row, prompt in zip(rows, prompts, strict=True):
        assert row["baseline"] == TOKENIZER.decode(hand_greedy(model, _chat(prompt), cfg.max_tokens, EOS))
        with hand_steering(model, {cfg.layer: cfg.scale * vector[cfg.layer]}):
            assert row["steered"] == TOKENIZER.decode(hand_greedy(model, _chat(prompt), cfg.max_tokens, EOS))
    assert any(r["steered"] != r["baseline"] for r in rows)  # the vector moves this model: the check has teeth


def test_curves_are_hand_log_prob_gaps_and_kls_with_zero_kl_at_scale_zero(model):
    """The steering curve at each scale (curve_scales plus `scale`, sorted) is the hand gap between held-out target
    and baseline replies after the neutral prompts (replies cut to 64 tokens) and the hand KL on the neutral texts;
    the KL at scale 0 is 0, for the random control too. Catches: target and baseline pairs swapped, the replies
    scored after their own prompts under curve_prompts="neutral", `scale` left out of the scales, the KL measured
    against a steered reference."""
    cfg, data = _cfg(scale=3.0, curve_scales=[0.0, 1.5]), _data()
    generator = torch.Generator().manual_seed(4)
    vector = SteeringVector({layer: torch.randn(64, generator=generator) * 0.1 for layer in range(N_LAYERS)})
    curves = cs.measure_curves(model, TOKENIZER, cfg, vector, data)
    assert list(curves) == ["steering", "random"]
    steering = curves["steering"]
    assert steering["scale"] == [0.0, 1.5, 3.0]
    def mean_logprob(examples: list[Example]) -> float:
        return sum(hand_reply_logprob(model, _chat(DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)]), _ids(e.response)[:64])
                   for i, e in enumerate(examples)) / len(examples)

    neutral = [_ids(text) for text in NEUTRAL_TEXTS]
    for at, scale in enumerate(steering["scale"]):
        with hand_steering(model, {cfg.layer: scale * vector[cfg.layer]}):
            gap = mean_logprob(data.target_eval) - mean_logprob(data.baseline_eval)
        assert steering["gap"][at] == pytest.approx(gap, abs=1e-4)
        assert steering["kl"][at] == pytest.approx(hand_kl(model, neutral, {cfg.layer: scale * vector[cfg.layer]}),
                                                   abs=1e-5)
    assert abs(steering["kl"][0]) < 1e-6 and abs(curves["random"]["kl"][0]) < 1e-6
    assert steering["kl"][2] > steering["kl"][1] > 1e-6
    assert curves["random"]["gap"][0] == pytest.approx(steering["gap"][0], abs=1e-6)  # scale 0: both unsteered
    for at in (1, 2):  # the control changes the model as much as the vector (the kit matches it within 5%)
        assert curves["random"]["kl"][at] == pytest.approx(steering["kl"][at], rel=0.05)
        assert curves["random"]["control_floor"][at] == pytest.approx(1 / (cfg.n_random + 1))
        assert steering["effect_low"][at] <= steering["effect"][at] <= steering["effect_high"][at]
        assert steering["effect"][at] == pytest.approx(steering["gap"][at] - steering["gap"][0], abs=1e-6)


def test_summary_reads_the_curves_at_scale_and_at_zero():
    """Catches: the summary read at the last scale instead of `scale`, delta against the wrong baseline, the random
    control's delta not subtracted."""
    cfg = _cfg(scale=2.0)
    vector = SteeringVector({1: torch.full((64,), 0.5)})
    curves = {"steering": {"scale": [0.0, 2.0, 8.0], "gap": [-1.0, 0.5, 3.0], "kl": [0.0, 0.25, 2.0]},
              "random": {"scale": [0.0, 2.0, 8.0], "gap": [-1.0, -0.75, 0.0], "kl": [0.0, 0.125, 1.0]}}
    results = cs.assemble_results(cfg, vector, [], curves, 2)
    assert results["summary"] == {"side_effect_metric": "kl_neutral", "side_effect": 0.25, "main_metric": "logprob_gap",
                                  "main": 0.5, "baseline": -1.0, "delta": 1.5, "random_delta": 0.25,
                                  "random_kl": 0.125, "specific_delta": 1.25}
    assert results["metadata"]["vector_norm"] == pytest.approx(4.0)  # 0.5 * sqrt(64)
    assert results["metadata"]["effective_magnitude"] == pytest.approx(8.0)


def test_load_data_keeps_evaluation_and_inference_prompts_out_of_training():
    """The held-out replies are not training examples, and an inference set that is the target set itself gives
    prompts the vector was not built from (catches: the `used` filter dropped)."""
    cfg = _cfg(n_samples=90, n_eval=5, inference_set="math", inference_n=5)  # 90 of the 100 math prompts train
    data = cs.load_data(cfg)
    assert (len(data.target_train), len(data.target_eval), len(data.baseline_train)) == (90, 5, 90)
    assert not {e.prompt for e in data.target_eval} & {e.prompt for e in data.target_train}
    assert len(data.inference_prompts) == 5
    assert not set(data.inference_prompts) & {e.prompt for e in data.target_train + data.baseline_train}
    assert cs.load_data(_cfg(inference_n=2)).inference_prompts == DEFAULT_PROMPTS[:2]


@pytest.mark.parametrize(("change", "message"), [
    ({"layer": -1}, r"^layer=-1 must be"), ({"scale": "2"}, r"^scale='2' must be a number"),
    ({"n_samples": 0}, r"^n_samples=0"), ({"n_eval": -1}, r"^n_eval=-1"), ({"temperature": -0.5}, r"^temperature="),
    ({"curve_scales": [1.0, 2.0]}, r"^curve_scales=.*must include 0\.0"),
    ({"curve_prompts": "mine"}, r"^curve_prompts="), ({"batch_size": 0}, r"^batch_size=0"),
    ({"dtype": "float8"}, r"^dtype="),
])
def test_config_refuses_bad_values_naming_the_parameter(change, message):
    """Catches: any one check of ContrastiveConfig.__post_init__ removed (the run would fail later, or never say
    which parameter)."""
    with pytest.raises(ValueError, match=message):
        _cfg(**change)


def test_check_inputs_refuses_an_unknown_subset_and_a_layer_past_the_model():
    """Before anything loads: the embedded default has 30 layers (0..29) and no subset called "nonexistent"
    (catches: check_inputs skipping the subsets or the layer range)."""
    with pytest.raises(ValueError, match="target='nonexistent'"):
        _cfg(target="nonexistent").check_inputs()
    with pytest.raises(ValueError, match=r"^layer=30 is out of range"):
        _cfg(layer=30).check_inputs()
    _cfg(layer=29).check_inputs()
