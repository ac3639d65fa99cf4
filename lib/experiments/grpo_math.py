"""GRPO finetuning on math with TRL's `GRPOTrainer` (the RL loop is TRL's, not ours).

Loss: Dr. GRPO (`loss_type="dr_grpo"`, Liu et al. 2025: token sums normalised by a constant, no
length bias), no KL term (beta=0). Rewards: correctness (math-verify answer equivalence) and
format (`<think>` then `<answer>` tags), see `lib.kits.rewards`. The one-shot demonstration in the
prompt matters on small models: without it SmolLM2-135M never emits the tags and every GRPO
group has zero reward variance (journal, 2026-11-24, GRPO: with a word-problem demo the base model
formatted 0/16 eval problems, with the arithmetic demo 15/16).

Outputs in the run folder: `run_log.json` (per step: rewards, sample completions),
`eval_summary.json` (pass@k per evaluation), `checkpoints/` every `save_every` steps (a killed
run resumes from the last one, and the logs keep only steps up to it), `final_model/`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import TrainerCallback

from lib.config import (
    ModelConfig,
    check_choice,
    check_math_source,
    check_positive,
    check_sampled,
    model_layer_count,
)
from lib.io import write_json
from lib.kits.mathdata import MathProblem, build_messages
from lib.kits.matheval import evaluate_math
from lib.kits.plots import finish_figure
from lib.kits.rewards import trl_correctness_reward, trl_format_reward
from lib.memory import Workload
from lib.models import load_model


@dataclass
class GRPOMathConfig(ModelConfig):
    """GRPO on math (the seed's "Day 4" training). The seed's output_dir is `out_dir` here.

    The default is the quick preset (minutes on 2 CPU cores); the journal's long run is
    `num_train_iters=60 train_size=128 eval_size=64 num_chains=8 prompts_per_step=2 eval_every=20 save_every=10
    max_completion_length=64`.
    """

    notebook: ClassVar[str] = "grpo_math"
    resources: ClassVar[dict[str, float]] = {"num_cpus": 2}  # training: both cores of a small node
    source: str = "arithmetic"
    train_size: int = 16
    eval_size: int = 8
    num_train_iters: int = 2
    eval_every: int = 2
    save_every: int = 1
    num_chains: int = 4
    prompts_per_step: int = 2
    num_completions_eval: int = 1
    eval_temperature: float = 0.0
    max_completion_length: int = 32
    train_temperature: float = 1.0
    learning_rate: float = 1e-5
    scale_rewards: str = "group"
    use_lora: bool = False
    lora_r: int = 16
    one_shot: bool = True
    use_vllm: bool = False
    vllm_mode: str = "colocate"  # "colocate": vLLM shares the training GPU; "server": a `trl vllm-serve` process
    gradient_checkpointing: bool = False
    bf16: bool = True
    batch_size: int = 16
    seed: int = 0
    out_dir: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("train_size", "eval_size", "num_train_iters", "eval_every", "save_every", "num_completions_eval",
                     "max_completion_length", "prompts_per_step", "lora_r", "batch_size"):
            check_positive(name, getattr(self, name))
        check_positive("learning_rate", self.learning_rate)
        check_positive("eval_temperature", self.eval_temperature, allow_zero=True)
        check_positive("train_temperature", self.train_temperature)
        if not isinstance(self.num_chains, int) or self.num_chains < 2:
            raise ValueError(f"num_chains={self.num_chains!r} must be an int >= 2 (GRPO compares completions "
                             "within a group)")
        check_choice("scale_rewards", self.scale_rewards, ("group", "batch", "none"))
        check_sampled("num_completions_eval", self.num_completions_eval, "eval_temperature", self.eval_temperature)
        check_choice("vllm_mode", self.vllm_mode, ("colocate", "server"))

    def workload(self) -> Workload:
        # one step's completions in one batch, ~256 prompt tokens (system prompt and the one-shot demo)
        return Workload(batch=self.num_chains * self.prompts_per_step, tokens=256 + self.max_completion_length,
                        generated=self.max_completion_length, training="lora" if self.use_lora else "full",
                        lora_rank=self.lora_r, gradient_checkpointing=self.gradient_checkpointing,
                        batch_parameter="num_chains x prompts_per_step")

    def check_inputs(self) -> None:
        check_math_source("source", self.source)
        model_layer_count(self.model)
        if self.use_vllm:
            check_vllm(self.vllm_mode)


def check_vllm(mode: str) -> None:
    """TRL's vLLM generation needs a CUDA GPU and the vllm package; say so before the model loads."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ValueError("use_vllm=True needs the vllm package on a CUDA machine (pip install 'trl[vllm]'); "
                         "use_vllm=False generates with transformers instead")
    if not torch.cuda.is_available():
        raise ValueError("use_vllm=True needs a CUDA GPU (vLLM does not run on this CPU); use_vllm=False generates "
                         "with transformers")
    if mode == "server":
        print("[grpo] use_vllm=True vllm_mode=server: start `trl vllm-serve --model <model>` on its own GPU first")


def _read_list(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    """Entries of a resumed run's log up to the checkpoint step (later ones are redone)."""
    if not path.exists():
        return []
    return [entry for entry in json.loads(path.read_text()) if entry["step"] <= up_to_step]


def last_checkpoint(checkpoints: Path) -> tuple[Path | None, int]:
    found = sorted(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    complete = [p for p in found if (p / "trainer_state.json").exists()]
    return (complete[-1], int(complete[-1].name.split("-")[1])) if complete else (None, 0)


class MathLogCallback(TrainerCallback):
    """Writes run_log.json every logged step and eval_summary.json every `eval_every` steps, atomically."""

    def __init__(self, cfg: GRPOMathConfig, out: Path, eval_problems: list[MathProblem], tokenizer: Any,
                 resume_step: int) -> None:
        self.cfg, self.out, self.eval_problems, self.tokenizer = cfg, out, eval_problems, tokenizer
        self.run_log = _read_list(out / "run_log.json", resume_step)
        self.evals = _read_list(out / "eval_summary.json", resume_step)
        self.trainer: Any = None

    def evaluate(self, model: torch.nn.Module, step: int) -> None:
        if any(entry["step"] == step for entry in self.evals):
            return
        was_training = model.training
        model.eval()
        result = evaluate_math(model, self.tokenizer, self.eval_problems, n_completions=self.cfg.num_completions_eval,
                               temperature=self.cfg.eval_temperature, max_new_tokens=self.cfg.max_completion_length,
                               batch_size=self.cfg.batch_size, seed=self.cfg.seed, one_shot=self.cfg.one_shot,
                               progress=False)[None]
        model.train(was_training)
        self.evals.append({"step": step, **result.summary(), "sample_completions": result.completions[:2]})
        write_json(self.out / "eval_summary.json", self.evals)
        print(f"[eval] step {step}: pass@1 {result.pass_at[1]:.3f} on {result.n_problems} problems")

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.evaluate(model, state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not logs or "reward" not in logs:
            return
        rewards = {k: v for k, v in logs.items() if k.startswith("reward") or k == "frac_reward_zero_std"}
        completions = list(getattr(self.trainer, "_logs", {}).get("completion", []))[-3:]
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        self.run_log = [e for e in self.run_log if e["step"] != state.global_step]
        self.run_log.append({"step": state.global_step, **rewards, "loss": logs.get("loss"),
                             "sample_completions": texts})
        write_json(self.out / "run_log.json", self.run_log)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step % self.cfg.eval_every == 0 or state.global_step == state.max_steps:
            self.evaluate(model, state.global_step)


def grpo_config(cfg: GRPOMathConfig, checkpoints: Path) -> Any:
    from trl import GRPOConfig

    per_step = cfg.num_chains * cfg.prompts_per_step
    on_gpu = torch.cuda.is_available()
    return GRPOConfig(
        output_dir=str(checkpoints),
        learning_rate=cfg.learning_rate,
        max_steps=cfg.num_train_iters,
        per_device_train_batch_size=per_step,
        gradient_accumulation_steps=1,
        num_generations=cfg.num_chains,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.train_temperature,
        loss_type="dr_grpo",
        scale_rewards=cfg.scale_rewards,
        beta=0.0,
        logging_steps=1,
        save_steps=cfg.save_every,
        save_total_limit=1,
        save_only_model=False,
        report_to="none",
        seed=cfg.seed,
        bf16=on_gpu and cfg.bf16,
        use_cpu=not on_gpu,
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        use_vllm=cfg.use_vllm,
        vllm_mode=cfg.vllm_mode,
        log_completions=False,
        disable_tqdm=False,
    )


def train_grpo(cfg: GRPOMathConfig, out: Path, train: list[MathProblem], eval_problems: list[MathProblem]) -> Path:
    """Train (resuming from the last checkpoint in `out/checkpoints`) and save the final model folder."""
    from datasets import Dataset
    from trl import GRPOTrainer

    final = out / "final_model"
    if (final / "config.json").exists():
        print(f"[grpo] {final} exists: training already finished")
        return final
    # dtype "auto" keeps the training rule: bf16 weights only with bf16 training on a GPU
    dtype = (torch.bfloat16 if cfg.bf16 and torch.cuda.is_available() else torch.float32) if cfg.dtype == "auto" \
        else cfg.dtype
    model, tokenizer = load_model(cfg.model, **{**cfg.loading(), "dtype": dtype})
    peft_config = None
    if cfg.use_lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    dataset = Dataset.from_list([{"prompt": build_messages(p.question, one_shot=cfg.one_shot), "answer": p.answer}
                                 for p in train])
    checkpoints = out / "checkpoints"
    resume_from, resume_step = last_checkpoint(checkpoints)
    callback = MathLogCallback(cfg, out, eval_problems, tokenizer, resume_step)
    trainer = GRPOTrainer(model=model, reward_funcs=[trl_correctness_reward, trl_format_reward],
                          args=grpo_config(cfg, checkpoints), train_dataset=dataset, processing_class=tokenizer,
                          peft_config=peft_config, callbacks=[callback])
    callback.trainer = trainer
    if resume_from:
        print(f"[grpo] resuming from {resume_from}")
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    trained = trainer.model.merge_and_unload() if cfg.use_lora else trainer.model
    partial = out / "final_model.partial"
    trained.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.replace(final)
    return final


def grpo_results(cfg: GRPOMathConfig, final_model: Path, run_log: list[dict], evals: list[dict]) -> dict[str, Any]:
    """results.json: the last evaluation's pass@1 beside the untrained model's, and the format reward as the
    side-effect metric (a model can gain reward by format alone)."""
    recent = run_log[-5:]
    summary = {
        "main_metric": "pass@1 (eval set)",
        "main": evals[-1]["pass_at"]["1"],
        "baseline": evals[0]["pass_at"]["1"],
        "pass1_ci": evals[-1]["pass1_ci"],
        "baseline_pass1_ci": evals[0]["pass1_ci"],
        "side_effect_metric": "format reward, mean of the last 5 steps",
        "side_effect": sum(e.get("rewards/trl_format_reward/mean", 0.0) for e in recent) / max(1, len(recent)),
        "n_eval_problems": evals[-1]["n_problems"],
        "n_completions": evals[-1]["n_completions"],
        "steps": run_log[-1]["step"] if run_log else 0,
    }
    return {"parameters": cfg.as_dict(), "final_model": str(final_model), "summary": summary,
            "evals": [{k: v for k, v in e.items() if k != "sample_completions"} for e in evals]}


# ----------------------------------------------------------------------------- figures


def training_curve_figure(run_log: list[dict], evals: list[dict], title: str, path: Path | None = None) -> Any:
    """Left: mean rewards per GRPO step; right: eval pass@1 with its 95% interval at each evaluation."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = [e["step"] for e in run_log]
    for key, label in (("reward", "total"), ("rewards/trl_correctness_reward/mean", "correctness"),
                       ("rewards/trl_format_reward/mean", "format")):
        if run_log and key in run_log[0]:
            left.plot(steps, [e[key] for e in run_log], label=label, alpha=0.8)
    left.set(xlabel="step", ylabel="mean reward", title="training rewards")
    eval_steps = [e["step"] for e in evals]
    pass1 = [e["pass_at"]["1"] for e in evals]
    low = [p - e["pass1_ci"][0] for p, e in zip(pass1, evals, strict=True)]
    high = [e["pass1_ci"][1] - p for p, e in zip(pass1, evals, strict=True)]
    right.errorbar(eval_steps, pass1, yerr=[low, high], marker="o", capsize=3)
    right.set(xlabel="step", ylabel="pass@1", title=f"eval pass@1 ({evals[-1]['n_problems']} problems)" if evals
              else "eval")
    return finish_figure(fig, (left, right), title, path)
