"""The memory plan: exact parameter counts of public configs, the plan's terms by hand, and a run that cannot
fit refused before anything loads, with the cheapest fixes named."""

from __future__ import annotations

import json

import pytest
import transformers as tf

import lib.config
from lib.config import model_size_of
from lib.memory import GB, ModelSize, Workload, model_size, plan
from lib.runner import main, validate

QWEN_7B = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
           "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False,
           "max_position_embeddings": 32768}
LLAMA_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False}


@pytest.mark.parametrize(("config", "published"), [
    (tf.Qwen2Config(**{k: v for k, v in QWEN_7B.items() if k != "model_type"}), 7_615_616_512),  # Qwen2.5-7B card
    (tf.LlamaConfig(**LLAMA_8B), 8_030_261_248),  # Llama-3.1-8B
    (tf.GPT2Config(), 124_439_808),  # GPT-2 small
])
def test_parameter_counts_of_public_configs_are_exact(config, published):
    size = model_size(config)
    assert size.parameters == published
    assert (size.layers, size.hidden) == (config.get_text_config().num_hidden_layers,
                                          config.get_text_config().hidden_size)


def test_embedded_default_config_matches_the_loaded_model(embedded):
    model, _ = embedded
    size = model_size_of("smollm2-135m")
    assert size.parameters == sum(p.numel() for p in model.parameters())
    for key, value in lib.config.EMBEDDED_CONFIG.items():
        if key != "model_type":
            assert getattr(model.config, key) == value, key


def test_plan_terms_by_hand():
    size = ModelSize(parameters=1000, layers=2, hidden=8, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=50,
                     linear_shapes=((8, 8), (8, 16)))
    inference = plan(size, Workload(batch=3, tokens=5, generated=2), "bfloat16", "test", 1e9)
    assert inference.terms == {"weights": 2000, "kv cache": 2 * 2 * 1 * 4 * 3 * 5 * 2,
                               "activations (one layer)": 3 * 5 * (4 * 8 + 2 * 16) * 2 + 3 * 2 * 5 * 5 * 2,
                               "logits (float32)": 3 * 5 * 50 * 4 * 2}
    lora = plan(size, Workload(batch=3, tokens=5, training="lora", lora_rank=4), "float32", "test", 1e9)
    trained = 2 * (4 * (8 + 8) + 4 * (8 + 16))
    assert lora.terms["gradients"] == trained * 4 and lora.terms["optimizer (AdamW)"] == trained * 8
    full = plan(size, Workload(batch=3, tokens=5, training="full"), "bfloat16", "test", 1e9)
    assert full.terms["optimizer (AdamW)"] == 1000 * 12  # two float32 moments and a float32 master copy
    assert full.terms["activations kept for backward"] == 2 * full.terms["activations (one layer)"]


def test_a_7b_full_finetune_in_fp32_is_refused_before_loading_with_fixes(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "qwen7b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(QWEN_7B))  # a config alone: nothing can load, and nothing tries
    monkeypatch.setattr("lib.memory.available_memory", lambda device_map="": ("1 GPU", 80 * GB))
    monkeypatch.setattr("lib.models.load_model", lambda *a, **k: pytest.fail("the plan must refuse before loading"))
    with pytest.raises(ValueError, match="will not fit") as refused:
        validate("grpo_math", {"model": str(folder), "dtype": "float32"})
    message = str(refused.value)
    assert "use_lora=True" in message and "device_map=\"auto\"" in message
    assert "(num_chains x prompts_per_step)" in message
    assert "optimizer (AdamW)" in message and "1 GPU has 80.0 GB free" in message
    # the cheapest fix first, and it fits
    first = message.split("Cheapest fixes: ")[1].split(";")[0]
    assert first.startswith("use_lora=True") and float(first.split("(")[1].split(" GB")[0]) < 80
    assert main(["check", "grpo_math", f"model={folder}", "use_lora=True", "dtype=bfloat16"]) == 0
    assert "memory plan for model=" in capsys.readouterr().out
