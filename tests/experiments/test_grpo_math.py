"""A real 2-step GRPO run (TRL GRPOTrainer) on a tiny model, its logs, checkpoints and resume."""

from __future__ import annotations

import json

import pytest
import torch

from lib.experiments.grpo_math import GRPOMathConfig, last_checkpoint, train_grpo
from lib.kits.mathdata import train_eval_split
from lib.models import embedded_model_dir, tiny_model


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A 2-layer Llama with SmolLM2's tokenizer (and chat template), saved like a real checkpoint."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    model = tiny_model("llama", n_layers=2, hidden=64, vocab=len(tokenizer), seed=0)
    model.config.pad_token_id = tokenizer.pad_token_id
    folder = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_two_grpo_steps_log_evaluate_checkpoint_and_resume(tiny_folder, tmp_path):
    torch.manual_seed(0)
    settings = {"model": str(tiny_folder), "train_size": 4, "eval_size": 2, "num_chains": 2, "prompts_per_step": 2,
                "max_completion_length": 8, "save_every": 1, "eval_every": 1, "batch_size": 4,
                "out_dir": str(tmp_path)}
    cfg = GRPOMathConfig(num_train_iters=2, **settings)
    train, held_out = train_eval_split(cfg.source, cfg.train_size, cfg.eval_size, cfg.seed)
    final = train_grpo(cfg, tmp_path, train, held_out)
    run_log = json.loads((tmp_path / "run_log.json").read_text())
    evals = json.loads((tmp_path / "eval_summary.json").read_text())
    assert [e["step"] for e in run_log] == [1, 2]
    assert {"reward", "rewards/trl_correctness_reward/mean", "rewards/trl_format_reward/mean"} <= set(run_log[0])
    assert all(isinstance(t, str) for t in run_log[0]["sample_completions"])
    assert [e["step"] for e in evals] == [0, 1, 2] and evals[0]["n_problems"] == 2
    assert last_checkpoint(tmp_path / "checkpoints")[1] == 2
    assert (final / "config.json").exists()

    # resume: one more step continues from checkpoint-2, keeping the finished steps and evaluations
    import shutil

    shutil.rmtree(final)
    train_grpo(GRPOMathConfig(num_train_iters=3, **settings), tmp_path, train, held_out)
    run_log = json.loads((tmp_path / "run_log.json").read_text())
    evals = json.loads((tmp_path / "eval_summary.json").read_text())
    assert [e["step"] for e in run_log] == [1, 2, 3]
    assert [e["step"] for e in evals] == [0, 1, 2, 3]


def test_lora_grpo_step_saves_a_merged_model(tiny_folder, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = GRPOMathConfig(model=str(tiny_folder), train_size=2, eval_size=1, num_chains=2, prompts_per_step=1,
                         max_completion_length=6, num_train_iters=1, eval_every=1, save_every=1, batch_size=2,
                         use_lora=True, lora_r=4, learning_rate=1e-3, out_dir=str(tmp_path))
    train, held_out = train_eval_split(cfg.source, cfg.train_size, cfg.eval_size, cfg.seed)
    final = train_grpo(cfg, tmp_path, train, held_out)
    assert (tmp_path / "checkpoints" / "checkpoint-1" / "adapter_config.json").exists()  # trained as LoRA
    merged = AutoModelForCausalLM.from_pretrained(final)
    assert not any("lora" in name for name, _ in merged.named_parameters())  # merged: loads as a plain model
    # (a random tiny model earns equal rewards in a group, so the update itself may be zero: not asserted)


def test_lora_with_gradient_checkpointing_trains_and_the_config_reaches_trl(tiny_folder, tmp_path, monkeypatch):
    from lib.experiments.grpo_math import MathLogCallback, grpo_config

    seen = {}
    original = MathLogCallback.on_train_begin

    def spy(self, args, state, control, model=None, **kwargs):
        seen["checkpointing"] = model.is_gradient_checkpointing
        seen["lora"] = any("lora_" in name for name, _ in model.named_parameters())
        return original(self, args, state, control, model=model, **kwargs)

    monkeypatch.setattr(MathLogCallback, "on_train_begin", spy)
    cfg = GRPOMathConfig(model=str(tiny_folder), train_size=2, eval_size=1, num_chains=2, prompts_per_step=1,
                         max_completion_length=6, num_train_iters=1, eval_every=1, save_every=1, batch_size=2,
                         use_lora=True, lora_r=4, gradient_checkpointing=True, out_dir=str(tmp_path))
    args = grpo_config(cfg, tmp_path / "checkpoints")
    assert args.gradient_checkpointing and args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert args.vllm_mode == "colocate" and not args.use_vllm
    assert cfg.workload().gradient_checkpointing and cfg.workload().training == "lora"
    train, held_out = train_eval_split(cfg.source, cfg.train_size, cfg.eval_size, cfg.seed)
    final = train_grpo(cfg, tmp_path, train, held_out)
    assert seen == {"checkpointing": True, "lora": True}
    assert (final / "config.json").exists()


def test_vllm_is_refused_before_loading_where_it_cannot_run():
    import importlib.util

    from lib.experiments.grpo_math import check_vllm

    with pytest.raises(ValueError, match="vllm_mode"):
        GRPOMathConfig(vllm_mode="remote")
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ValueError, match="use_vllm=True needs the vllm package"):
            check_vllm("colocate")
    elif not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            check_vllm("colocate")
