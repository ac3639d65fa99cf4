"""The playground experiment's steps, as nbs/playground.py calls them: the config's rows (the unsteered 0, the
headline `coefficient`, then `coefficients`), `playground_outputs` on them, and `assemble_results`, on a tiny Llama
with the byte tokenizer. Each row is checked against a separate generation and KL through the tests' own hooks (one
unpadded row, no KV cache, the position scope applied by hand); tests/test_playground.py covers the widget and the
kit against lib's own generate. Each test names the one-line mutation it catches."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import ByteTokenizer, hand_greedy, hand_kl, one_thread

from lib.experiments import playground as experiment
from lib.experiments.playground import PlaygroundConfig
from lib.kits.data import NEUTRAL_TEXTS
from lib.kits.playground import load_vector, playground_outputs
from lib.models import tiny_model
from lib.vectors import SteeringVector

TOKENIZER = ByteTokenizer(chat=True)
NEW = 6


@pytest.fixture(scope="module")
def model():
    with one_thread():
        yield tiny_model("llama", n_layers=3, seed=41)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[str, SteeringVector]:
    """A vector saved the way a contrastive run saves it (`<run folder>/vector`), and its run folder."""
    generator = torch.Generator().manual_seed(42)
    vector = SteeringVector({layer: torch.randn(64, generator=generator) * 0.3 for layer in range(3)},
                            {"model": "tiny-llama", "source": "contrastive_steering"})
    folder = tmp_path_factory.mktemp("contrastive-run")
    vector.save(folder / "vector")
    return str(folder), vector


@contextmanager
def scoped(model, layer: int, vector: torch.Tensor, prompt_length: int, positions: str) -> Iterator[None]:
    """The vector added to block `layer`'s output at the positions `positions` names, counted by hand in each full
    (no-cache) forward: the prompt's first `prompt_length` tokens, the tokens after them, or all."""
    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        mask = torch.zeros(hidden.shape[1], 1)
        span = {"all": slice(None), "prompt": slice(None, prompt_length), "generated": slice(prompt_length, None)}
        mask[span[positions]] = 1.0
        hidden = hidden + mask * vector
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = model.model.layers[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_configured_rows_equal_separate_hand_generations_and_kls(model, saved, positions):
    """The run's table, as the notebook computes it from the config: one row per coefficient in the config's order
    (0, coefficient, coefficients), each text a separate greedy generation with coefficient * vector added at the
    configured layer over the configured positions, each KL the hand KL on the neutral texts (0 for "generated",
    which a plain forward does not reach). Catches: the headline coefficient dropped from the rows, rows and
    coefficients misaligned, the position scope not passed on, the KL measured against a steered reference."""
    folder, vector = saved
    cfg = PlaygroundConfig(vector=folder, layers=[1], coefficient=4.0, coefficients=[12.0], positions=positions,
                           prompt="hello there", max_new_tokens=NEW)
    assert cfg.run_coefficients == [0.0, 4.0, 12.0]
    loaded = load_vector(cfg.vector)
    outputs = playground_outputs(model, TOKENIZER, cfg.prompt, loaded, cfg.layers, cfg.run_coefficients,
                                 positions=cfg.positions, temperature=cfg.temperature,
                                 max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    prompt = TOKENIZER(f"[user]{cfg.prompt}\n[assistant]")["input_ids"]
    neutral = [TOKENIZER(text)["input_ids"] for text in NEUTRAL_TEXTS]
    assert [row.coefficient for row in outputs.rows] == cfg.run_coefficients
    for row in outputs.rows:
        with scoped(model, 1, row.coefficient * vector[1], len(prompt), positions):
            assert row.text == TOKENIZER.decode(hand_greedy(model, prompt, NEW, ByteTokenizer.eos_token_id))
        expected_kl = 0.0 if positions == "generated" else hand_kl(model, neutral, {1: row.coefficient * vector[1]})
        assert row.kl == pytest.approx(expected_kl, abs=1e-5)
    assert outputs.unsteered.changed == 0.0 and outputs.rows[2].text != outputs.unsteered.text  # teeth

    results = experiment.assemble_results(cfg, loaded, outputs)
    assert results["summary"]["main"] == outputs.row(4.0).changed
    assert results["summary"]["side_effect"] == pytest.approx(outputs.row(4.0).kl)
    assert results["metadata"]["vector"] == str(Path(folder) / "vector.safetensors")  # outside the repository
    assert results["metadata"]["vector_norms"] == {1: pytest.approx(float(vector[1].norm()))}
    assert results["metadata"]["effective_magnitude"] == {1: pytest.approx(4.0 * float(vector[1].norm()))}


def test_a_vector_to_build_is_recorded_as_built_in_the_run(monkeypatch, tmp_path):
    """vector="" (and the default path before the contrastive demo ran) builds the demo's vector in the run, and
    results.json says so instead of naming a file (catches: vector_source resolving a path that does not exist)."""
    built = "built in this run (the contrastive demo's defaults)"
    assert experiment.vector_source(PlaygroundConfig(vector="")) == built
    monkeypatch.setattr(experiment, "CONTRASTIVE_DEMO_VECTOR", str(tmp_path / "not-run" / "vector"))
    assert experiment.vector_source(PlaygroundConfig(vector=str(tmp_path / "not-run" / "vector"))) == built
