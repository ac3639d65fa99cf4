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
                               "logits (float32)": 2 * 3 * 5 * 50 * 4}
    generation = plan(size, Workload(batch=3, tokens=5, generated=2, logits="last"), "bfloat16", "test", 1e9)
    assert generation.terms["logits (float32)"] == 2 * 3 * 1 * 50 * 4  # generate keeps the last position only
    lora = plan(size, Workload(batch=3, tokens=5, training="lora", lora_rank=4), "float32", "test", 1e9)
    trained = 2 * (4 * (8 + 8) + 4 * (8 + 16))
    assert lora.terms["optimizer (AdamW)"] == trained * 8
    assert lora.terms["gradients (beyond freed activations)"] == 0  # small gradients fit where activations were
    assert lora.terms["logits (float32)"] == 3 * 3 * 5 * 50 * 4  # logits, log-softmax and a gradient
    full = plan(size, Workload(batch=3, tokens=5, training="full"), "bfloat16", "test", 1e9)
    assert full.terms["optimizer (AdamW)"] == 1000 * 12  # two float32 moments and a float32 master copy
    freed = full.terms["activations kept for backward"] + full.terms["logits (float32)"]
    assert full.terms["gradients (beyond freed activations)"] == 0 and freed > 1000 * 2
    big = plan(ModelSize(**{**size.__dict__, "parameters": 10**6}), Workload(batch=3, tokens=5, training="full"),
               "bfloat16", "test", 1e9)
    assert big.terms["gradients (beyond freed activations)"] == 2 * 10**6 - freed
    block = 3 * 5 * (6 * 8 + 4 * 16) * 2
    assert full.terms["activations kept for backward"] == 2 * block
    checkpointed = plan(size, Workload(batch=3, tokens=5, training="full", gradient_checkpointing=True), "bfloat16",
                        "test", 1e9)
    assert checkpointed.terms["activations kept for backward"] == 2 * 3 * 5 * 8 * 2 + block
    with pytest.raises(ValueError, match="logits="):
        Workload(batch=1, tokens=1, logits="first")


def test_gradient_checkpointing_is_named_as_a_fix_for_training():
    size = ModelSize(parameters=10**6, layers=24, hidden=1024, heads=16, kv_heads=16, head_dim=64,
                     intermediate=4096, vocab=1000, linear_shapes=((1024, 1024),))
    tight = plan(size, Workload(batch=64, tokens=1024, training="lora"), "bfloat16", "test", 1e9)
    assert not tight.fits and any(fix.startswith("gradient_checkpointing=True") for fix in tight.fixes)
    done = plan(size, Workload(batch=64, tokens=1024, training="lora", gradient_checkpointing=True), "bfloat16",
                "test", 1e9)
    assert not any(fix.startswith("gradient_checkpointing") for fix in done.fixes)


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


def test_plan_is_within_ten_percent_of_a_measured_scoring_peak(embedded):
    """The plan against torch's allocator peak of a real scoring forward (logits and float32 log-softmax at every
    position), with the activations and logits larger than the weights so the weights cannot carry the match."""
    import torch

    from lib.memory import measured_peak

    model, _ = embedded
    ids = torch.randint(100, 1000, (8, 256))

    @torch.no_grad()
    def score() -> None:
        torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)

    estimate = plan(model_size(model.config), Workload(batch=8, tokens=256))
    weights = estimate.terms["weights"]
    assert weights == sum(p.numel() * p.element_size() for p in model.parameters())
    run = measured_peak(score)
    assert run > weights  # the run, not the weights, dominates
    assert 0.9 <= estimate.total / (weights + run) <= 1.1
    assert 0.85 <= (estimate.total - weights) / run <= 1.15


def test_readme_gpu_table_is_the_plan_of_the_seed_commands():
    """The README's seed commands and their memory figures are what benchmarks/seed_plans.py computes now."""
    import importlib.util

    from lib.io import REPO_ROOT

    spec = importlib.util.spec_from_file_location("seed_plans", REPO_ROOT / "benchmarks" / "seed_plans.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table = module.table()
    assert table in (REPO_ROOT / "README.md").read_text(), "README is stale: python benchmarks/seed_plans.py"
    assert "| no: gradient_checkpointing=True + use_lora=True (" in table and table.count("| yes |") >= 4


def test_plan_table_keeps_its_columns_aligned_with_long_term_names():
    """Every row's figure ends at the same column, however long a term's name (catches: a fixed name width that
    the training terms overflow, shifting their figures right)."""
    size = ModelSize(parameters=1000, layers=2, hidden=8, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=50,
                     linear_shapes=((8, 8),))
    table = plan(size, Workload(batch=3, tokens=5, training="full"), "float32", "test", 1e9).table()
    ends = {line.index(" GB") for line in table.splitlines()}
    assert len(ends) == 1 and "gradients (beyond freed activations)" in table
