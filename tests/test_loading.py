"""Model loading at the seeds' scale, checked on CPU: dtype "auto", bf16 weights, device_map="auto" (accelerate),
and steering, recording and extraction working on such a model."""

from __future__ import annotations

import pytest
import torch
from conftest import TEXTS

from lib.extract import extract
from lib.generation import generate
from lib.hooks import Steering, record, steer
from lib.models import load_model, resolve_dtype


def test_dtype_auto_is_float32_on_cpu_and_names_are_checked():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16 and resolve_dtype(torch.float16, "cpu") == torch.float16
    with pytest.raises(ValueError, match="dtype='bf16' must be one of"):
        resolve_dtype("bf16", "cpu")
    with pytest.raises(ValueError, match="give one"):
        load_model("smollm2-135m", device="cpu", device_map="auto")


@pytest.mark.parametrize("device_map", ["", "auto"])
def test_bf16_and_device_map_loads_steer_record_extract_and_generate(tiny_folder, device_map, isolated_cache):
    model, tokenizer = load_model(str(tiny_folder), dtype="bfloat16", device_map=device_map,
                                  attn_implementation="eager")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    vector = {1: torch.randn(64, generator=torch.Generator().manual_seed(0))}
    batch = tokenizer(["hello there", "hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        with record(model, [1]) as plain:
            model(**batch)
        with steer(model, vector, 2.0), record(model, [1]) as steered:
            model(**batch)
    real = batch["attention_mask"].bool()
    # the bf16 block output plus the float32 delta cast to bf16 once (record hands back float32 copies)
    expected = (plain[1].to(torch.bfloat16) + (2.0 * vector[1]).to(torch.bfloat16)).float()
    assert torch.equal(steered[1][real], expected[real])
    assert torch.equal(steered[1][~real], plain[1][~real])  # padding untouched
    acts = extract(model, tokenizer, TEXTS, layers=[0, 1], chat=False, progress=False)
    assert acts[1].dtype == torch.float32 and acts[1].shape == (len(TEXTS), 64)
    texts = generate(model, tokenizer, ["hi", "hello"], max_new_tokens=3, chat=False, progress=False,
                     steering=Steering(vector, positions="generated"))
    assert len(texts) == 2
