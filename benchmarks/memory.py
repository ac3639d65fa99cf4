"""The memory plan against measured peaks on the embedded default; writes out/bench/memory.{md,json}.

Each workload runs the real operation (a scoring forward with float32 log-softmax, greedy generation, a steady-state
AdamW step with and without gradient checkpointing, a LoRA step) and reads the allocator-level peak
(`lib.memory.measured_peak`); measured = weights + that peak (+ the optimizer state made before it, for steady-state
steps). Target (issue 17): the plan within 10% of the measured peak.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable

import torch

from lib.io import REPO_ROOT
from lib.memory import GB, Workload, measured_peak, model_size, plan
from lib.models import load_model


def scoring(model: torch.nn.Module, batch: int, tokens: int) -> tuple[Workload, Callable[[], object]]:
    ids = torch.randint(100, 1000, (batch, tokens))

    @torch.no_grad()
    def run() -> None:
        torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)

    return Workload(batch=batch, tokens=tokens), run


def generation(model: torch.nn.Module, batch: int, prompt: int, new: int) -> tuple[Workload, Callable[[], object]]:
    ids = torch.randint(100, 1000, (batch, prompt))

    @torch.no_grad()
    def run() -> None:
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                       do_sample=False, pad_token_id=0)

    return Workload(batch=batch, tokens=prompt + new, generated=new, logits="last"), run


def training_step(model: torch.nn.Module, batch: int, tokens: int, checkpointing: bool,
                  lora: bool) -> tuple[Workload, Callable[[], object], float]:
    """A steady-state step: one step first creates the optimizer state, then the measured step runs."""
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-5)
    ids = torch.randint(100, 1000, (batch, tokens))

    def run() -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    run()
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if isinstance(t, torch.Tensor))
    workload = Workload(batch=batch, tokens=tokens, training="lora" if lora else "full", lora_rank=16,
                        gradient_checkpointing=checkpointing)
    return workload, run, float(state)


def main() -> None:
    torch.manual_seed(0)
    rows = []
    cases: list[tuple[str, Callable]] = [
        ("scoring forward, 16 x 256 tokens", lambda m: (*scoring(m, 16, 256), 0.0)),
        ("scoring forward, 4 x 512 tokens", lambda m: (*scoring(m, 4, 512), 0.0)),
        ("greedy generation, 16 x (64 + 64) tokens", lambda m: (*generation(m, 16, 64, 64), 0.0)),
        ("full AdamW step, 8 x 256 tokens", lambda m: training_step(m, 8, 256, False, False)),
        ("full AdamW step + gradient checkpointing, 8 x 256", lambda m: training_step(m, 8, 256, True, False)),
        ("LoRA r=16 step + gradient checkpointing, 8 x 256", lambda m: training_step(m, 8, 256, True, True)),
    ]
    for name, make in cases:
        model, _ = load_model()  # fresh per case: training and adapters change the model
        size = model_size(model.config)
        workload, run, state = make(model)
        weights = size.parameters * 4.0
        start = time.perf_counter()
        peak = measured_peak(run)
        measured = weights + state + peak
        estimate = plan(size, workload).total
        rows.append({"workload": name, "measured_gb": measured / GB, "plan_gb": estimate / GB,
                     "ratio": estimate / measured, "seconds": time.perf_counter() - start})
        print(f"{name}: measured {measured / GB:.3f} GB, plan {estimate / GB:.3f} GB, plan/measured "
              f"{estimate / measured:.3f}", flush=True)
        del model, run
        gc.collect()
    out = REPO_ROOT / "out" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    header = (f"Memory plan vs measured peak, embedded default (SmolLM2-135M, float32, CPU), torch {torch.__version__},"
              " "
              f"{time.strftime('%Y-%m-%d %H:%M')}. Measured = weights + optimizer state (steady-state steps) + the "
              "allocator-level peak of the run (torch.profiler memory events). Target: plan/measured within 0.9-1.1."
              "\n\n")
    lines = ["| workload | measured GB | plan GB | plan / measured |", "|---|---|---|---|"]
    lines += [f"| {r['workload']} | {r['measured_gb']:.3f} | {r['plan_gb']:.3f} | {r['ratio']:.3f} |" for r in rows]
    (out / "memory.md").write_text(header + "\n".join(lines) + "\n")
    (out / "memory.json").write_text(json.dumps(rows, indent=2))
    print(header + "\n".join(lines))


if __name__ == "__main__":
    main()
