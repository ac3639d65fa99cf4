"""Validation against what a config names outside itself, before anything launches: layer indices against the
model's config (no weights), data-set keys, model ids and input folders; one-line errors naming the parameter."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import NOTEBOOKS

import lib.config
import lib.models
import lib.runner
from lib.config import EMBEDDED_N_LAYERS, hub_unreachable, model_layer_count
from lib.experiments import config_class
from lib.experiments.reasoning_direction import ReasoningDirectionConfig
from lib.runner import main, run_notebook, sweep, validate

LAST = EMBEDDED_N_LAYERS - 1


@pytest.fixture(autouse=True)
def no_launch_and_fresh_caches(monkeypatch):
    """Nothing may load weights, convert the embedded GGUF or execute a notebook while validating."""
    def refuse(*args, **kwargs):
        raise AssertionError("validation must not load a model or launch a notebook")

    for target in ("lib.models.load_model", "lib.load_model", "lib.models.embedded_model_dir", "lib.runner._execute",
                   "lib.runner._run_here", "lib.runner.execute_shipped"):
        monkeypatch.setattr(target, refuse)
    model_layer_count.cache_clear()
    hub_unreachable.cache_clear()
    yield
    model_layer_count.cache_clear()
    hub_unreachable.cache_clear()


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_out_of_range_layer_is_rejected_by_check_and_run_before_anything_runs(capsys, tmp_path):
    assert main(["check", "contrastive_steering", "layer=99"]) == 2
    err = _one_line_error(capsys)
    assert "layer=99" in err and f"0..{LAST}" in err and "smollm2-135m" in err
    with pytest.raises(ValueError, match="layer=99"):
        run_notebook("contrastive_steering", {"layer": 99}, out_root=tmp_path)
    assert not any(tmp_path.iterdir())  # no run folder made
    assert main(["check", "contrastive_steering", f"layer=0,{LAST}"]) == 0  # both ends are valid


def test_sweep_with_one_bad_grid_value_launches_nothing(capsys, tmp_path):
    with pytest.raises(ValueError, match=f"layer={EMBEDDED_N_LAYERS} is out of range"):
        sweep("contrastive_steering", {"layer": [4, EMBEDDED_N_LAYERS], "scale": [1.0, 2.0]}, out_root=tmp_path)
    assert not any(tmp_path.iterdir())
    assert main(["sweep", "contrastive_steering", "layer=4,8", "target=math,nonexistent"]) == 2
    assert "target='nonexistent'" in _one_line_error(capsys)


@pytest.mark.parametrize(("notebook", "overrides", "parameter"), [
    ("reasoning_direction", {"layers": [-1]}, "layers"),
    ("weight_steering", {"vector_layers": [3, -2]}, "vector_layers"),
    ("contrastive_steering", {"layer": -1}, "layer"),
    ("toy_sweep", {"layer": -1}, "layer"),
])
def test_negative_layer_is_rejected_naming_the_parameter(notebook, overrides, parameter):
    with pytest.raises(ValueError, match=f"^{parameter}="):
        validate(notebook, overrides)


def test_weight_steering_contrast_source_is_checked_before_launch(capsys):
    """Catches dropping `check_contrast_source` from WeightSteeringConfig (a 'written' run on sycophancy would fail
    only after the prompt baselines, when its pairs are built)."""
    with pytest.raises(ValueError, match=r"^contrast_source='written' .*set behaviours=\['honesty'\]"):
        validate("weight_steering", {"contrast_source": "written"})
    assert main(["check", "weight_steering", "contrast_source=labeled"]) == 2
    assert "contrast_source='labeled' must be one of ('persona', 'labelled', 'written')" in _one_line_error(capsys)
    validate("weight_steering", {"contrast_source": "written", "behaviours": ["honesty"]})
    validate("weight_steering", {"contrast_source": "labelled"})


def _fake_vector(tmp_path) -> str:
    (tmp_path / "vector.safetensors").write_bytes(b"")
    return str(tmp_path / "vector")


# Every layer field of every config, with a value just past the embedded default's last layer.
LAYER_CASES = {
    ("contrastive_steering", "layer"): {"layer": EMBEDDED_N_LAYERS},
    ("reasoning_direction", "layers"): {"layers": [15, EMBEDDED_N_LAYERS]},
    ("weight_steering", "vector_layers"): {"vector_layers": [3, EMBEDDED_N_LAYERS]},
    ("steering_bo", "boundaries"): {"boundaries": [10, EMBEDDED_N_LAYERS], "objective": "contrastive_gap"},
    ("toy_sweep", "layer"): {"layer": 4},  # the toy stream's own 4 layers
    ("playground", "layers"): {"layers": [10, EMBEDDED_N_LAYERS]},
    ("persona_compare", "layer"): {"layer": EMBEDDED_N_LAYERS},
    ("methods_compared", "layer"): {"layer": EMBEDDED_N_LAYERS},
}


def test_every_layer_field_of_every_config_has_a_range_case():
    fields = {(name, f.name) for name, cls in ((n, config_class(n)) for n in NOTEBOOKS) for f in dataclasses.fields(cls)
              if f.name.endswith(("layer", "layers")) or f.name == "boundaries"}
    assert fields == set(LAYER_CASES)


@pytest.mark.parametrize(("notebook", "parameter"), sorted(LAYER_CASES))
def test_layers_are_checked_against_the_model(notebook, parameter, tmp_path):
    overrides = dict(LAYER_CASES[notebook, parameter])
    if notebook == "steering_bo":
        overrides["vector"] = _fake_vector(tmp_path)
        validate(notebook, {**overrides, "boundaries": [10, LAST]})  # the last layer can start a group
    with pytest.raises(ValueError, match=rf"^{parameter}=.*(out of range|must be an int in)"):
        validate(notebook, overrides)


def test_bo_groups_cannot_outnumber_the_layers(tmp_path):
    vector = _fake_vector(tmp_path)
    with pytest.raises(ValueError, match=f"n_groups={EMBEDDED_N_LAYERS + 1} exceeds the {EMBEDDED_N_LAYERS}"):
        validate("steering_bo", {"vector": vector, "objective": "contrastive_gap", "n_groups": EMBEDDED_N_LAYERS + 1})
    with pytest.raises(ValueError, match="group_names"):
        validate("steering_bo", {"vector": vector, "objective": "contrastive_gap", "group_names": ["a", "b"]})


def test_missing_subset_key_is_rejected_naming_the_valid_keys(capsys):
    assert main(["check", "contrastive_steering", "target=nonexistent"]) == 2
    err = _one_line_error(capsys)
    assert "target='nonexistent'" in err and "'math'" in err and "'howto'" in err and "'18'" in err
    with pytest.raises(ValueError, match="^inference_set='nope'"):
        validate("contrastive_steering", {"inference_set": "nope"})
    validate("contrastive_steering", {"target": 0, "baseline": "5"})  # Tulu keys are valid (they need the hub later)
    with pytest.raises(ValueError, match="^source='nope'.*arithmetic"):
        validate("grpo_math", {"source": "nope"})


def test_unresolvable_model_id_is_one_line_naming_the_embedded_default(capsys):
    """Offline (here, on CI) the hub is unreachable; online the repository does not exist: either way one line."""
    assert main(["check", "contrastive_steering", "model=steerlab-tests/no-such-model"]) == 2
    err = _one_line_error(capsys)
    assert "model='steerlab-tests/no-such-model' could not be resolved" in err
    assert "model=smollm2-135m (the embedded default)" in err and len(err) < 400


def test_offline_reason_and_missing_local_folder(capsys, monkeypatch):
    monkeypatch.setattr(lib.config, "hub_unreachable", lambda: "HF_HUB_OFFLINE is set")
    with pytest.raises(ValueError, match=r"hub is unreachable: HF_HUB_OFFLINE is set\); use model=smollm2-135m"):
        validate("weight_steering", {"model": "some/missing-model"})
    assert main(["check", "reasoning_direction", "model=out/no/such/folder"]) == 2
    assert "model='out/no/such/folder' does not exist" in _one_line_error(capsys)


def test_local_model_folder_is_read_once_per_process(tmp_path):
    """The folder's config.json is read once: rewritten after the first check to say 5 layers, the count stays 3
    (catches: the cache on model_layer_count dropped, which re-reads the folder for every run of a sweep)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 3}))
    validate("contrastive_steering", {"model": str(folder), "layer": 0})
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 5}))
    for layer in (1, 2):
        validate("contrastive_steering", {"model": str(folder), "layer": layer})
    with pytest.raises(ValueError, match=r"^layer=3 is out of range: .* 3 decoder layers, so valid values are 0\.\.2$"):
        validate("contrastive_steering", {"model": str(folder), "layer": 3})
    (folder / "config.json").write_text("{not json")
    model_layer_count.cache_clear()
    with pytest.raises(ValueError, match=r"^model=.*cannot read .*config\.json"):
        validate("contrastive_steering", {"model": str(folder)})
    (folder / "config.json").unlink()
    with pytest.raises(ValueError, match="no config.json"):
        validate("contrastive_steering", {"model": str(folder)})


@pytest.mark.parametrize(("config", "layers"), [
    ({"model_type": "unknown", "text_config": {"num_hidden_layers": 34}, "vision_config": {}}, 34),  # the text model's
    ({"model_type": "unknown", "n_layer": 12}, 12),  # GPT-2's key
    ({"model_type": "llama"}, 32),  # unstated: the config class's default, read by transformers from the folder
])
def test_layer_count_of_multimodal_gpt2_and_default_configs(tmp_path, config, layers):
    """Through the public route, a saved folder's config.json. A model_type transformers does not know leaves the
    count to config.json's own keys (catches: a key left out of the search, the text config not looked into); an
    unstated count falls back to the config class's default (catches: that fallback removed)."""
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert model_layer_count(str(tmp_path)) == layers


def test_missing_input_folders_name_the_command_that_makes_them(tmp_path):
    with pytest.raises(ValueError, match=r"^finetuned='out/grpo_math/nope/final_model' does not exist.*"
                                         r"\./just run grpo_math"):
        validate("math_steering", {"finetuned": "out/grpo_math/nope/final_model"})
    with pytest.raises(ValueError, match=r"^vector='out/math_steering/nope/vector'.*\./just run math_steering"):
        validate("steering_bo", {"vector": "out/math_steering/nope/vector"})
    with pytest.raises(ValueError, match=r"^finetuned="):  # pass1 scores the finetuned model too
        validate("steering_bo", {"vector": _fake_vector(tmp_path), "finetuned": "out/grpo_math/nope/final_model"})
    with pytest.raises(ValueError, match=r"^resume_from="):
        validate("steering_bo", {"vector": _fake_vector(tmp_path), "objective": "contrastive_gap",
                                 "resume_from": str(tmp_path / "bo_history.json")})


def test_config_without_a_model_reads_no_model_config(monkeypatch):
    monkeypatch.setattr(lib.config, "model_layer_count", lambda *a, **k: pytest.fail("toy_sweep has no model"))
    validate("toy_sweep", {"layer": 3})


def test_embedded_layer_constant_matches_the_loaded_model(embedded):
    """The constant validation uses for the embedded default (to skip the GGUF conversion) is its real depth."""
    model, _ = embedded
    assert model.config.num_hidden_layers == len(lib.models.find_layers(model)[1]) == EMBEDDED_N_LAYERS


def test_reasoning_direction_accepts_one_layer_as_an_int():
    assert ReasoningDirectionConfig(layers=15).layers == [15]
