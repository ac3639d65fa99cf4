"""Chat rendering, batching, and batched generation with or without steering.

A `Steering` bundles what to add (vector, per-layer weight, layers, position scope); the
coefficient comes per row at call time, so K coefficients for N prompts run as one batched
job of N*K rows instead of K sequential runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lib.hooks import PositionScope, steer
from lib.vectors import SteeringVector


@dataclass
class Steering:
    vector: SteeringVector
    weight: float | Mapping[int, float] = 1.0
    layers: Sequence[int] | None = None
    positions: PositionScope = "all"

    def apply(self, model: nn.Module, coefficients: Sequence[float] | torch.Tensor | None = None) -> Any:
        return steer(model, self.vector, self.weight, layers=self.layers, positions=self.positions,
                     coefficients=coefficients)


def steering_context(model: nn.Module, steering: Steering | None, coefficients: Sequence[float] | None) -> Any:
    """The steer context for one batch, or a no-op when unsteered (a coefficient without a vector is an error)."""
    if steering is None:
        if coefficients is not None:
            raise ValueError("coefficients were given without steering: pass steering=Steering(vector, ...)")
        return contextlib.nullcontext()
    return steering.apply(model, coefficients)


Prompt = str | list[dict[str, str]]


def render_chat(tokenizer: Any, prompt: Prompt, system: str | None = None, chat: bool = True) -> str:
    """The prompt as the model sees it before the reply: chat template with the generation prompt.
    A prompt is a user message, or a whole message list (e.g. system + a demonstration + the question)."""
    if not chat:
        if not isinstance(prompt, str):
            raise ValueError("chat=False takes plain string prompts, not message lists")
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("This tokenizer has no chat template (a base model?): pass chat=False to use raw prompts")
    if isinstance(prompt, str):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    else:
        messages = list(prompt)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode(tokenizer: Any, texts: Sequence[str], chat: bool = True) -> list[list[int]]:
    # A chat template already writes its special tokens; raw prompts get the tokenizer's own (e.g. BOS).
    return [tokenizer(text, add_special_tokens=not chat)["input_ids"] for text in texts]


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, side: str = "left",
              positions: bool = True) -> dict[str, torch.Tensor]:
    """Padded input_ids and attention_mask, plus position_ids counted over real tokens so that models
    with absolute positions (GPT-2) give the same result for a row padded or alone. `generate`
    computes its own positions: pass positions=False there."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if positions:
        batch["position_ids"] = (mask.cumsum(dim=1) - 1).clamp_min(0)
    return batch


def batches(n: int, batch_size: int, desc: str | None = None, progress: bool = True) -> Iterator[slice]:
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    starts = range(0, n, batch_size)
    bar = tqdm(starts, desc=desc, disable=not progress or len(starts) <= 1, leave=False)
    for start in bar:
        yield slice(start, min(start + batch_size, n))


def _chunk(values: Sequence[float] | None, part: slice) -> list[float] | None:
    return None if values is None else list(values[part])


def check_coefficients(coefficients: Sequence[float] | None, n: int) -> None:
    if coefficients is not None and len(coefficients) != n:
        raise ValueError(f"coefficients has {len(coefficients)} values for {n} rows; give one per row")


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 16,
    system: str | None = None,
    chat: bool = True,
    steering: Steering | None = None,
    coefficients: Sequence[float] | None = None,
    progress: bool = True,
) -> list[str]:
    """Batched generation; greedy at temperature 0, else sampled with a per-batch seed."""
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0")
    check_coefficients(coefficients, len(prompts))
    texts = [render_chat(tokenizer, p, system, chat) for p in prompts]
    encoded = encode(tokenizer, texts, chat)
    device = next(model.parameters()).device
    outputs: list[str] = []
    for part in batches(len(prompts), batch_size, "generate", progress):
        batch = {k: v.to(device) for k, v in pad_batch(encoded[part], tokenizer.pad_token_id, positions=False).items()}
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            torch.manual_seed(seed + part.start)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
        with steering_context(model, steering, _chunk(coefficients, part)):
            tokens = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                    **sampling)
        new = tokens[:, batch["input_ids"].shape[1]:]
        outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    return outputs
