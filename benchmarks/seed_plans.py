"""The seeds' commands at their models' scale, each with its memory plan on one 80 GB GPU (bf16).

Plans come from the public configs below alone (no weights, no hub): `python benchmarks/seed_plans.py` prints the
markdown table the README's "Larger models and GPUs" section shows, and tests/test_memory.py checks the README
still matches it.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from transformers import AutoConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.experiments import config_class  # noqa: E402
from lib.memory import GB, model_size, plan  # noqa: E402

# config.json fields of the seeds' models (the hub cards' values)
PUBLIC_CONFIGS = {
    "Qwen/Qwen2.5-7B-Instruct": {
        "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False},
    "allenai/Llama-3.1-Tulu-3-8B": {
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128264, "tie_word_embeddings": False},
}
GPU_BYTES = 80 * GB
QWEN, TULU = "Qwen/Qwen2.5-7B-Instruct", "allenai/Llama-3.1-Tulu-3-8B"
GSM8K = {"source": "gsm8k", "max_completion_length": 512}
# (what the seed does, notebook, parameters as typed after `./just run <notebook>`)
SEEDS: list[tuple[str, str, dict]] = [
    ("contrastive steering, Tulu-3-8B", "contrastive_steering", {"model": TULU}),
    ("GRPO, full finetune in bf16 (does not fit)", "grpo_math",
     {"model": QWEN, **GSM8K, "num_chains": 8, "prompts_per_step": 2}),
    ("GRPO, LoRA + gradient checkpointing", "grpo_math",
     {"model": QWEN, **GSM8K, "num_chains": 8, "prompts_per_step": 2, "use_lora": True,
      "gradient_checkpointing": True}),
    ("base-vs-finetuned vectors (one model at a time)", "math_steering",
     {"model": QWEN, **GSM8K, "finetuned": "out/grpo_math/<run>/final_model"}),
    ("BO of layer-group weights (base and finetuned)", "steering_bo",
     {"model": QWEN, **GSM8K, "finetuned": "out/grpo_math/<run>/final_model",
      "vector": "out/math_steering/<run>/vector"}),
    ("correct-vs-wrong directions", "reasoning_direction",
     {"model": QWEN, "source": "gsm8k", "max_new_tokens": 512}),
]


def command(notebook: str, parameters: dict) -> str:
    return " ".join([f"./just run {notebook}"] + [f"{k}={v}" for k, v in parameters.items()])


def table() -> str:
    rows = ["| seed step | command | plan (bf16) | fits one 80 GB GPU |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as folder:
        for what, notebook, parameters in SEEDS:
            model = parameters["model"]
            config_dir = Path(folder) / model.replace("/", "--")
            config_dir.mkdir(exist_ok=True)
            (config_dir / "config.json").write_text(json.dumps(PUBLIC_CONFIGS[model]))
            cfg = config_class(notebook)(**{**parameters, "model": str(config_dir)})
            estimate = plan(model_size(AutoConfig.from_pretrained(config_dir)), cfg.workload(), "bfloat16",
                            "1 GPU", GPU_BYTES)
            verdict = "yes" if estimate.fits else f"no: {estimate.fixes[0]}"
            rows.append(f"| {what} | `{command(notebook, parameters)}` | {estimate.total / GB:.1f} GB | {verdict} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
