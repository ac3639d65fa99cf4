"""The steering playground (lib/kits/playground.py, lib/experiments/playground.py): its widget-free computation
against direct lib calls, its input errors, the widget's wiring, and the notebook's config.

Each test names, in its docstring, the one-line mutation of the code it would catch. A tiny Llama with the byte
tokenizer keeps them fast; a vector of norm ~0.08 moves this model's outputs without saturating them, so every
coefficient below gives a different text."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import ByteTokenizer

import lib.experiments.playground as experiment
import lib.kits.playground as kit
from lib.evals import next_token_kl
from lib.experiments.playground import PlaygroundConfig
from lib.generation import generate
from lib.hooks import Steering
from lib.kits.data import NEUTRAL_TEXTS
from lib.kits.playground import (
    POSITIONS,
    Playground,
    load_vector,
    parse_coefficients,
    playground_outputs,
    run_coefficients,
)
from lib.models import tiny_model
from lib.vectors import SteeringVector

PROMPT = "hello there"
NEW = 8
SHORT = ["the cat sat", "numbers 1 2 3"]  # neutral texts where the KL is not what a test checks: faster


@pytest.fixture(scope="module")
def tiny():
    # one thread: a 64-wide model gains nothing from two, and on a busy machine two threads spin (10x slower here)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model, tokenizer = tiny_model("llama", n_layers=3, seed=1), ByteTokenizer(chat=True)
    generator = torch.Generator().manual_seed(0)
    vector = SteeringVector({layer: torch.randn(64, generator=generator) * 0.01 for layer in range(3)},
                            {"model": "tiny-llama"})
    yield model, tokenizer, vector
    torch.set_num_threads(threads)


def _generate(model, tokenizer, **kwargs):
    return generate(model, tokenizer, kwargs.pop("prompts", [PROMPT]), max_new_tokens=NEW, progress=False, **kwargs)


# ----------------------------------------------------------------------------- the computation


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("layers", [[1], [0, 2]])
def test_columns_equal_direct_generate_with_and_without_the_same_steering(tiny, positions, layers):
    """Catches: Steering built without `positions=` or `layers=` (or with all the vector's layers), the unsteered
    column read from a steered row, or texts matched to the wrong coefficient."""
    model, tokenizer, vector = tiny
    outputs = playground_outputs(model, tokenizer, PROMPT, vector, layers, [4.0], positions=positions,
                                 max_new_tokens=NEW, neutral_texts=SHORT)
    steering = Steering(vector, layers=layers, positions=positions)
    steered = _generate(model, tokenizer, steering=steering, coefficients=[4.0])[0]
    unsteered = _generate(model, tokenizer)[0]
    assert outputs.row(4.0).text == steered
    assert outputs.unsteered.text == unsteered and outputs.unsteered.coefficient == 0.0
    assert steered != unsteered  # the comparison is not vacuous
    assert outputs.layers == layers and outputs.positions == positions


def test_sampled_rows_equal_a_direct_sampled_batch(tiny):
    """Catches: temperature or seed not passed on to generate (greedy text, or another seed's sample)."""
    model, tokenizer, vector = tiny
    outputs = playground_outputs(model, tokenizer, PROMPT, vector, [1], [4.0], temperature=0.9, seed=3,
                                 max_new_tokens=NEW, neutral_texts=SHORT)
    direct = _generate(model, tokenizer, prompts=[PROMPT] * 2, temperature=0.9, seed=3, batch_size=2,
                       steering=Steering(vector, layers=[1]), coefficients=[0.0, 4.0])
    assert [row.text for row in outputs.rows] == direct
    greedy = playground_outputs(model, tokenizer, PROMPT, vector, [1], [4.0], max_new_tokens=NEW, neutral_texts=SHORT)
    assert [row.text for row in greedy.rows] != direct


def test_several_coefficients_run_as_one_batch_and_equal_separate_runs(tiny, monkeypatch):
    """Catches: generation split per coefficient (batch_size=1: five generate calls), and rows or KL values
    matched to the wrong coefficient (e.g. a reordered or deduplicated coefficient list beside unsorted texts)."""
    model, tokenizer, vector = tiny
    coefficients = [1.0, 4.0, -4.0, 16.0, 4.0]
    calls = []
    original = model.generate

    def counting(**batch):
        calls.append(batch["input_ids"].shape[0])
        return original(**batch)

    monkeypatch.setattr(model, "generate", counting)
    together = playground_outputs(model, tokenizer, PROMPT, vector, [1], coefficients, max_new_tokens=NEW,
                                  neutral_texts=SHORT)
    assert calls == [5]  # 0 and four distinct coefficients, one forward batch
    monkeypatch.undo()
    assert [row.coefficient for row in together.rows] == [0.0, 1.0, 4.0, -4.0, 16.0]
    assert len({row.text for row in together.rows}) == 5
    for coefficient in (1.0, 4.0, -4.0, 16.0):
        alone = playground_outputs(model, tokenizer, PROMPT, vector, [1], [coefficient], max_new_tokens=NEW,
                                   neutral_texts=SHORT)
        assert together.row(coefficient).text == alone.row(coefficient).text
        assert together.row(coefficient).kl == pytest.approx(alone.row(coefficient).kl, rel=1e-5)


@pytest.mark.parametrize("positions", ["all", "prompt"])
def test_kl_column_equals_next_token_kl_with_the_same_steering(tiny, positions):
    """Catches: KL measured without the layer selection, on other texts, or with the coefficients in another order
    than the rows (the unsteered 0 would then show a KL). The position scope: the next test."""
    model, tokenizer, vector = tiny
    outputs = playground_outputs(model, tokenizer, PROMPT, vector, [0, 2], [2.0, -8.0], positions=positions,
                                 max_new_tokens=NEW)
    expected = next_token_kl(model, tokenizer, NEUTRAL_TEXTS, steering=Steering(vector, layers=[0, 2],
                                                                                positions=positions),
                             coefficients=[0.0, 2.0, -8.0], progress=False)
    assert [row.kl for row in outputs.rows] == expected.tolist()
    assert outputs.unsteered.kl == pytest.approx(0.0, abs=1e-7) and min(row.kl for row in outputs.steered) > 0


def test_fluency_is_the_plain_models_nll_of_each_text_and_degenerate_texts_are_flagged(tiny):
    """Each row's fluency_nll is the unsteered model's mean NLL per token of that row's text after the prompt, one
    unpadded row by hand (catches: the NLL read under steering, or of another row's text); `degenerate` follows
    the text (a looping steered text is flagged, and the HTML says so)."""
    from conftest import hand_reply_logprob

    from lib.generation import render_chat

    model, tokenizer, vector = tiny
    outputs = playground_outputs(model, tokenizer, PROMPT, vector, [1], [6.0], max_new_tokens=NEW)
    prompt_ids = tokenizer(render_chat(tokenizer, PROMPT), add_special_tokens=False)["input_ids"]
    for row in outputs.rows:
        ids = tokenizer(row.text, add_special_tokens=False)["input_ids"]
        if ids:
            assert row.fluency_nll == pytest.approx(-hand_reply_logprob(model, prompt_ids, ids), abs=1e-5)
        else:
            assert math.isnan(row.fluency_nll) and row.degenerate
    looping = kit.PlaygroundOutputs("p", [1], "all", 0.0, 4, 0, [
        kit.PlaygroundRow(0.0, "a fine day", 0.0, 0.0, False, 2.0),
        kit.PlaygroundRow(4.0, "the the the the the the the", 1.0, 0.5, True, 0.7)])
    assert looping.to_html().count("<b>degenerate</b>") == 1


def test_generated_scope_costs_no_kl_on_a_plain_forward_and_says_so(tiny):
    """Catches: the KL computed without the generation's position scope (it would be > 0 here), or the HTML note
    about 'generated' dropped."""
    model, tokenizer, vector = tiny
    outputs = playground_outputs(model, tokenizer, PROMPT, vector, [1], [8.0], positions="generated",
                                 max_new_tokens=NEW, neutral_texts=SHORT)
    assert [row.kl for row in outputs.rows] == pytest.approx([0.0, 0.0], abs=1e-7)  # same logits up to rounding
    assert "leaves it at 0" in outputs.to_html()


def test_changed_fraction_and_the_html_marks_each_text_cell(tiny):
    """Catches: the unsteered cell marked steered (or both), a text cell without its coefficient, or unescaped
    model output in the HTML."""
    assert kit.changed_fraction("a b c d", "a b c d") == 0.0
    assert kit.changed_fraction("a b c d", "a b x y") == pytest.approx(0.5)
    assert kit.changed_fraction("a b", "c d") == 1.0
    outputs = kit.PlaygroundOutputs("p", [1], "all", 0.0, 4, 0, [kit.PlaygroundRow(0.0, "<b>base</b>", 0.0, 0.0),
                                                                  kit.PlaygroundRow(2.5, "other", 1.0, 0.25)])
    page = outputs.to_html()
    assert page.count('class="steerlab-unsteered"') == 1 and page.count('class="steerlab-steered"') == 1
    assert 'class="steerlab-unsteered" data-coefficient="0"' in page
    assert 'class="steerlab-steered" data-coefficient="2.5"' in page
    assert "<b>base</b>" not in page and "&lt;b&gt;base&lt;/b&gt;" in page
    assert "0.250" in page and "100%" in page


@pytest.mark.parametrize(("change", "message"), [
    ({"layers": [5]}, r"^layers=\[5\]: the vector has no layer 5; its layers are \[0, 1, 2\]"),
    ({"layers": [1, 7]}, r"^layers=\[1, 7\]: the vector has no layer 7"),
    ({"layers": []}, r"^layers=\[\] selects no layer"),
    ({"layers": [1.0]}, r"^layers=\[1.0\]"),
    ({"prompt": "  "}, r"^prompt is empty"),
    ({"positions": "middle"}, r"^positions='middle' must be one of"),
    ({"coefficients": []}, r"^coefficients is empty"),
    ({"coefficients": [1.0, math.nan]}, r"^coefficients=.*nan is not a finite number"),
    ({"temperature": -1.0}, r"^temperature=-1.0"),
    ({"max_new_tokens": 0}, r"^max_new_tokens=0"),
    ({"vector": None}, r"^vector is missing"),
])
def test_bad_inputs_are_refused_naming_the_parameter_before_generating(tiny, monkeypatch, change, message):
    """Catches: a check removed (the error would come from deep inside steer or generate, or not at all), or a
    message that no longer names the parameter."""
    model, tokenizer, vector = tiny
    monkeypatch.setattr(kit, "generate", lambda *a, **k: pytest.fail("generated before checking the inputs"))
    arguments = {"prompt": PROMPT, "vector": vector, "layers": [1], "coefficients": [2.0], **change}
    with pytest.raises(ValueError, match=message):
        playground_outputs(model, tokenizer, **arguments)


def test_coefficient_text_and_run_rows():
    """Catches: spaces not accepted as separators, the unsteered 0 not put first or duplicated, a bad item
    silently skipped."""
    assert parse_coefficients("0, 2, 4, 8") == [0.0, 2.0, 4.0, 8.0]
    assert parse_coefficients(" -1 2,3 ") == [-1.0, 2.0, 3.0] and parse_coefficients("") == []
    with pytest.raises(ValueError, match=r"^coefficients='0, two': 'two' is not a number"):
        parse_coefficients("0, two")
    with pytest.raises(ValueError, match=r"^coefficients='1, inf': 'inf' is not finite"):
        parse_coefficients("1, inf")
    assert run_coefficients([4, 0, 4.0, -2]) == [0.0, 4.0, -2.0]


def test_vectors_load_from_a_run_folder_base_path_file_or_plain_json(tiny, tmp_path):
    """Catches: one of the accepted path forms broken (a run folder is what users copy from out/), or a missing
    path reported without naming it."""
    _, _, vector = tiny
    vector.save(tmp_path / "run" / "vector")
    vector.select([1]).to_plain_json(tmp_path / "run" / "steering_vectors.json")
    for path in (tmp_path / "run", tmp_path / "run" / "vector", tmp_path / "run" / "vector.safetensors",
                 str(tmp_path / "run" / "vector.json")):
        loaded = load_vector(path)
        assert loaded.layers == [0, 1, 2] and all(torch.equal(loaded[i], vector[i]) for i in range(3)), path
    plain = load_vector(tmp_path / "run" / "steering_vectors.json")
    assert plain.layers == [1] and torch.equal(plain[1], vector[1])
    with pytest.raises(FileNotFoundError, match=r"^path='.*nowhere': no vector at"):
        load_vector(tmp_path / "nowhere")
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"^vector='.*broken.safetensors': .*not a readable safetensors"):
        load_vector(tmp_path / "broken.safetensors", "vector")


# ----------------------------------------------------------------------------- the widget


def _playground(tiny, **settings):
    model, tokenizer, vector = tiny
    return Playground(model, tokenizer, settings.pop("vector", vector), prompt=PROMPT, max_new_tokens=NEW,
                      neutral_texts=SHORT, **settings)


def test_moving_the_slider_recomputes_and_changes_the_steered_text(tiny):
    """Catches: the slider not observed (or observed on another trait), or the table not re-rendered."""
    playground = _playground(tiny, layers=[1], coefficient=0.0)
    before = playground.output.value
    assert [row.coefficient for row in playground.outputs.rows] == [0.0] and "done" in playground.status.value
    assert playground.coefficient.continuous_update is False  # dragging queues one run, not dozens
    playground.coefficient.value = 16.0
    after = playground.output.value
    assert after != before and 'class="steerlab-steered" data-coefficient="16"' in after
    assert playground.outputs.row(16.0).text != playground.outputs.unsteered.text
    assert playground.outputs.row(16.0).text in after


def test_status_says_running_while_computing(tiny, monkeypatch):
    """Catches: the "running..." status removed, or set only after the computation."""
    playground = _playground(tiny, layers=[1], run=False)
    seen = []
    original = kit.playground_outputs

    def watching(*args, **kwargs):
        seen.append(playground.status.value)
        return original(*args, **kwargs)

    monkeypatch.setattr(kit, "playground_outputs", watching)
    playground.update()
    assert len(seen) == 1 and "running..." in seen[0] and "done" in playground.status.value


def test_several_coefficients_box_adds_rows_to_the_same_batch(tiny):
    """Catches: the text box not observed, its values replacing (not joining) the slider's, or duplicates run."""
    playground = _playground(tiny, layers=[1], coefficient=2.0)
    playground.coefficients.value = "4, 2, -4"
    assert [row.coefficient for row in playground.outputs.rows] == [0.0, 2.0, 4.0, -4.0]
    assert playground.output.value.count('class="steerlab-steered"') == 3
    assert playground.output.value.count('class="steerlab-unsteered"') == 1


def test_invalid_layer_and_bad_text_show_a_message_instead_of_raising(tiny):
    """Catches: the callback's try/except removed (an error would raise out of the widget), stale results left
    on screen after an error, or the message not naming the parameter."""
    playground = _playground(tiny, layers=[99])  # no raise
    assert "layers=[99]: the vector has no layer 99" in playground.status.value
    assert playground.outputs is None and playground.output.value == "" and playground.layers.value == ()
    playground.layers.value = (2,)  # picking a layer recovers
    assert playground.outputs is not None and playground.outputs.layers == [2]
    playground.coefficients.value = "1, x"
    assert "coefficients=&#x27;1, x&#x27;: &#x27;x&#x27; is not a number" in playground.status.value
    assert playground.outputs is None and playground.output.value == ""
    playground.coefficients.value = ""
    playground.layers.value = ()
    assert "layers=[] selects no layer" in playground.status.value
    assert "<details>" not in playground.status.value  # input errors need no traceback


def test_unexpected_errors_are_one_line_with_the_traceback_folded(tiny, monkeypatch):
    """Catches: only ValueError caught in the callback (anything else would raise into the kernel's log)."""
    playground = _playground(tiny, layers=[1], run=False)
    monkeypatch.setattr(kit, "playground_outputs", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    assert playground.update() is None
    assert "error: RuntimeError: boom" in playground.status.value and "<details>" in playground.status.value


def test_sampling_toggle_enables_the_temperature_and_uses_it(tiny):
    """Catches: the toggle not observed, or the temperature box's value used while greedy."""
    playground = _playground(tiny, layers=[1])
    assert playground.temperature.disabled and playground.settings()["temperature"] == 0.0
    playground.sampling.value = "sampled"
    assert not playground.temperature.disabled and playground.outputs.temperature == playground.temperature.value
    assert playground.settings()["temperature"] == playground.temperature.value > 0


def test_loading_a_vector_from_a_path_sets_the_layer_choices(tiny, tmp_path):
    """Catches: the load button not wired, layer options not replaced by the new vector's, or a bad path
    raising instead of showing."""
    model, tokenizer, vector = tiny
    vector.select([0, 2]).save(tmp_path / "run" / "vector")
    playground = Playground(model, tokenizer, prompt=PROMPT, max_new_tokens=NEW, neutral_texts=SHORT)
    assert playground.vector is None and "no vector yet" in playground.status.value
    playground.vector_path.value = str(tmp_path / "nowhere")
    playground.load_button.click()
    assert "no vector at" in playground.status.value and playground.vector is None
    playground.vector_path.value = str(tmp_path / "run")
    playground.load_button.click()
    assert [value for _, value in playground.layers.options] == [0, 2] and playground.layers.value == (0,)
    assert playground.outputs is not None and playground.outputs.layers == [0]


def test_show_renders_precomputed_outputs_only_for_the_current_settings(tiny, monkeypatch):
    """Catches: `show` recomputing (the notebook would pay twice), or accepting a table of other settings, which
    would then sit under controls that say something else."""
    model, tokenizer, vector = tiny
    outputs = playground_outputs(model, tokenizer, PROMPT, vector, [1], [2.0, 0.3], max_new_tokens=NEW,
                                 neutral_texts=SHORT)
    playground = _playground(tiny, layers=[1], coefficient=2.0, coefficients=[0.3], run=False)
    monkeypatch.setattr(kit, "playground_outputs", lambda *a, **k: pytest.fail("show must not recompute"))
    playground.show(outputs)
    assert playground.outputs is outputs and playground.output.value == outputs.to_html()
    monkeypatch.undo()
    playground.coefficient.value = 4.0  # recomputes; the old table no longer fits the controls
    with pytest.raises(ValueError, match=r"other settings.*coefficients=\[0.0, 2.0, 0.3\] vs \[0.0, 4.0, 0.3\]"):
        playground.show(outputs)


def test_every_control_has_its_stable_dom_class(tiny):
    """Catches: a renamed or missing `steerlab-<name>` class, which a browser test would select by."""
    playground = _playground(tiny, layers=[1], run=False)
    controls = {"prompt": playground.prompt, "vector-path": playground.vector_path, "load": playground.load_button,
                "layers": playground.layers, "coefficient": playground.coefficient,
                "coefficients": playground.coefficients, "positions": playground.positions,
                "sampling": playground.sampling, "temperature": playground.temperature, "seed": playground.seed,
                "max-new-tokens": playground.max_new_tokens, "status": playground.status,
                "output": playground.output, "playground": playground.widget}
    for name, control in controls.items():
        assert f"steerlab-{name}" in control._dom_classes, name
    assert "application/vnd.jupyter.widget-view+json" in playground._repr_mimebundle_()


# ----------------------------------------------------------------------------- the notebook's config


def test_config_defaults_and_errors_name_the_parameter():
    """Catches: the unsteered 0 or the headline coefficient missing from the run, or a value check removed."""
    cfg = PlaygroundConfig()
    assert cfg.run_coefficients == [0.0, 2.0, 4.0, 8.0] and cfg.layers == [10]
    assert PlaygroundConfig(layers=5, coefficient=8.0, coefficients=[]).run_coefficients == [0.0, 8.0]
    for change, message in [({"layers": [-1]}, r"^layers="), ({"layers": []}, r"^layers=\[\]"),
                            ({"coefficient": math.inf}, r"^coefficient="), ({"coefficients": ["x"]}, r"^coefficients="),
                            ({"coefficients": 4.0}, r"^coefficients="), ({"positions": "x"}, r"^positions="),
                            ({"prompt": " "}, r"^prompt="), ({"max_new_tokens": 0}, r"^max_new_tokens="),
                            ({"temperature": -1}, r"^temperature=")]:
        with pytest.raises(ValueError, match=message):
            PlaygroundConfig(**change)


def test_check_inputs_reads_the_vector_file_against_layers_model_and_hidden_size(tmp_path, monkeypatch):
    """Catches: a missing non-default vector accepted (the run would fail after loading the model), layers the
    vector lacks accepted, or a vector of another model (hidden size, recorded model) accepted."""
    hidden = 576  # the embedded default's
    SteeringVector({3: torch.ones(hidden)}, {"model": "smollm2-135m"}).save(tmp_path / "good" / "vector")
    SteeringVector({3: torch.ones(hidden)}, {"model": "other/model"}).save(tmp_path / "other" / "vector")
    SteeringVector({3: torch.ones(64)}).save(tmp_path / "small" / "vector")
    PlaygroundConfig(vector=str(tmp_path / "good"), layers=[3]).check_inputs()
    cases = [({"vector": str(tmp_path / "good"), "layers": [10]}, r"^layers=\[10\]: the vector has no layer 10"),
             ({"vector": str(tmp_path / "nowhere")}, r"^vector='.*nowhere': no vector at"),
             ({"vector": str(tmp_path / "other"), "layers": [3]}, r"^vector=.*was built on model='other/model'"),
             ({"vector": str(tmp_path / "small"), "layers": [3]}, r"^vector=.*shape \(64,\).*hidden size 576"),
             ({"layers": [30]}, r"^layers=\[30\] is out of range")]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            PlaygroundConfig(**change).check_inputs()
    # "" builds the demo's vector in the run; so does the default path while the demo has not run
    assert PlaygroundConfig(vector="").builds_vector
    PlaygroundConfig(vector="", layers=[29]).check_inputs()
    monkeypatch.setattr(experiment, "CONTRASTIVE_DEMO_VECTOR", str(tmp_path / "not-run-yet" / "vector"))
    assert PlaygroundConfig(vector=str(tmp_path / "not-run-yet" / "vector")).builds_vector
    assert not PlaygroundConfig(vector=str(tmp_path / "good")).builds_vector


def test_results_summarise_the_configured_coefficient_beside_the_unsteered_zero(tiny, tmp_path):
    """Catches: the summary read from the last row (here 16) instead of the configured coefficient (4)."""
    model, tokenizer, vector = tiny
    vector.save(tmp_path / "run" / "vector")
    cfg = PlaygroundConfig(vector=str(tmp_path / "run"), layers=[1], coefficient=4.0, coefficients=[16.0],
                           prompt=PROMPT, max_new_tokens=NEW)
    outputs = playground_outputs(model, tokenizer, cfg.prompt, vector, cfg.layers, cfg.run_coefficients,
                                 max_new_tokens=NEW, neutral_texts=SHORT)
    results = json.loads(json.dumps(experiment.assemble_results(cfg, vector, outputs)))  # as results.json holds it
    summary = results["summary"]
    assert summary["side_effect"] == outputs.row(4.0).kl != outputs.row(16.0).kl
    assert summary["main"] == outputs.row(4.0).changed and summary["baseline"] == 0.0
    assert results["metadata"]["vector"].endswith("vector.safetensors") and results["metadata"]["layers"] == [1]
    assert [row["coefficient"] for row in results["outputs"]["rows"]] == [0.0, 4.0, 16.0]
    assert summary["fluency_nll"] == outputs.row(4.0).fluency_nll
    assert summary["degenerate"] == outputs.row(4.0).degenerate
    assert summary["baseline_fluency_nll"] == outputs.unsteered.fluency_nll
