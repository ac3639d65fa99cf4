"""Each config says once what its seed-workflow parameter names mean in lib (`SEED_NAMES`, issue "The weight wing
and one way in": math_steering's `weights` are coefficients, not steer's per-layer `weight`)."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import NOTEBOOKS

from lib.experiments import config_class


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_seed_names_are_fields_and_their_lib_words_read_them(notebook):
    config = config_class(notebook)
    if config is None or not config.SEED_NAMES:
        pytest.skip(f"{notebook} uses lib's words")
    fields = {field.name for field in dataclasses.fields(config)}
    instance = config()
    for seed, word in config.SEED_NAMES.items():
        assert seed in fields, f"{notebook}: SEED_NAMES names {seed!r}, which is no parameter"
        assert word not in fields, f"{notebook}: {word!r} is a parameter and a lib word at once"
        value, mapped = getattr(instance, seed), getattr(instance, word)
        if isinstance(value, list | tuple):
            assert [float(v) for v in value] == mapped, (notebook, seed)
        else:
            assert float(value) == mapped, (notebook, seed)


def test_math_steering_weights_are_the_coefficients_it_steers_with():
    from lib.experiments.math_steering import MathSteeringConfig

    assert MathSteeringConfig.SEED_NAMES == {"weights": "coefficients"}
    assert MathSteeringConfig(weights=[0.0, 0.5]).coefficients == [0.0, 0.5]
