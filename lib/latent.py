"""Continuous-thought ("latent") reasoning: k steps in which the model's last hidden state is fed back
as the next input embedding instead of a sampled token, then the answer is decoded.

This is the loop of Coconut (Hao et al. 2024, "Training Large Language Models to Reason in a
Continuous Latent Space") and CODI (Shen et al. 2025), where a trained projection maps the
hidden state into embedding space. Plug a checkpoint's projection in as `projection`; without
one the hidden state is fed back as is (Coconut). On a model not trained for it the latent steps
are untrained and mostly noise, but the mechanics (cache, positions, per-step reads and writes)
are the same.

Steering is per latent step: `LatentSteering.vectors[layer]` is `[k, hidden]`, and step s adds
`coefficient[row] * step_weights[s] * vectors[layer][s]` to that layer's output at the latent
position only. Activations are read per step with the same hooks (`lib.hooks.record`), giving
`[rows, k, hidden]` per layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from lib.generation import Prompt, encode, render_chat, run_batches
from lib.hooks import coefficient_values, record, steer
from lib.models import cache_argument, check_layers, hidden_size


@dataclass
class LatentSteering:
    """What to add at each latent step: `{layer: Tensor[k, hidden]}` and an optional weight per step; the
    strength comes per row as the coefficient (a notebook's `alpha`)."""

    vectors: Mapping[int, torch.Tensor]
    step_weights: Sequence[float] | None = None

    def check(self, model: nn.Module, latent_steps: int) -> None:
        check_layers(model, list(self.vectors))
        size = hidden_size(model)
        for layer, vector in self.vectors.items():
            if vector.shape != (latent_steps, size):
                raise ValueError(f"latent vector for layer {layer} has shape {tuple(vector.shape)}; "
                                 f"latent_steps={latent_steps} and hidden size {size} need ({latent_steps}, {size})")
        if self.step_weights is not None and len(self.step_weights) != latent_steps:
            raise ValueError(f"step_weights has {len(self.step_weights)} values for latent_steps={latent_steps}: "
                             "give one per step, or none for weight 1 at every step")

    def at_step(self, step: int) -> tuple[dict[int, torch.Tensor], float]:
        weight = 1.0 if self.step_weights is None else float(self.step_weights[step])
        return {layer: vector[step] for layer, vector in self.vectors.items()}, weight


@dataclass
class LatentOutput:
    texts: list[str]  # decoded answers, one per prompt
    latents: dict[int, torch.Tensor]  # layer -> [prompts, k, hidden] block outputs at the latent positions
    # [prompts, vocab] log-probs of the first answer token (after `end_text`), with `answer_logprobs=True`
    answer_logprobs: torch.Tensor | None = None


def _forward(model: nn.Module, state: dict[str, torch.Tensor], cache: DynamicCache, *,
             input_ids: torch.Tensor | None = None, embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Append tokens (ids or embeddings) for every row, extend mask and positions; returns the final hidden states."""
    new = (input_ids if input_ids is not None else embeds).shape[1]
    ones = torch.ones(state["mask"].shape[0], new, dtype=state["mask"].dtype, device=state["mask"].device)
    state["mask"] = torch.cat([state["mask"], ones], dim=1)
    positions = state["positions"][:, -1:] + torch.arange(1, new + 1, device=ones.device)
    state["positions"] = positions
    out = model(input_ids=input_ids, inputs_embeds=embeds, attention_mask=state["mask"], position_ids=positions,
                **{cache_argument(model): cache}, use_cache=True, output_hidden_states=True, logits_to_keep=1)
    state["logits"] = out.logits[:, -1]
    return out.hidden_states[-1][:, -1]


@torch.no_grad()
def latent_generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    latent_steps: int,
    projection: nn.Module | Callable[[torch.Tensor], torch.Tensor] | None = None,
    start_text: str = "<think>",
    end_text: str = "</think>\n<answer>",
    max_new_tokens: int = 16,
    batch_size: int = 16,
    chat: bool = True,
    record_layers: Sequence[int] | None = None,
    steering: LatentSteering | None = None,
    coefficients: Sequence[float] | None = None,
    answer_logprobs: bool = False,
    progress: bool = True,
) -> LatentOutput:
    """Prompt + `start_text`, `latent_steps` continuous thoughts, `end_text`, then greedy answer tokens.

    The first thought is the last hidden state (after the final norm, as Coconut feeds it) at the end of
    `start_text`; each later thought is the hidden state at the previous thought. Rows are left-padded with
    positions counted over real tokens, so a row gives the same answer alone or in a batch. `answer_logprobs=True`
    also returns each row's log-probs of the first answer token (float32, on the CPU): what the thoughts did to the
    answer's distribution, for a KL.
    """
    if latent_steps < 0:
        raise ValueError(f"latent_steps={latent_steps} must be >= 0")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    coefficient_values(coefficients, len(prompts))
    if steering is not None:
        if latent_steps == 0:
            raise ValueError("steering needs latent_steps >= 1: latent steering acts at the latent positions only")
        steering.check(model, latent_steps)
    elif coefficients is not None:
        raise ValueError("coefficients were given without steering: pass steering=LatentSteering(...)")
    layers = list(record_layers or [])
    if layers:
        if latent_steps == 0:
            raise ValueError("record_layers needs latent_steps >= 1: activations are read at the latent positions")
        check_layers(model, layers)
    device = next(model.parameters()).device
    encoded = encode(tokenizer, [render_chat(tokenizer, p, chat=chat) + start_text for p in prompts], chat)
    end_ids = torch.tensor(tokenizer(end_text, add_special_tokens=False)["input_ids"], device=device)
    eos = tokenizer.eos_token_id

    def forward(part: slice, batch: dict[str, torch.Tensor]
                ) -> tuple[list[str], list[dict[int, torch.Tensor]], torch.Tensor | None]:
        rows = batch["input_ids"].shape[0]
        cache = DynamicCache()
        # the prompt goes in whole, with positions counted over its real tokens
        # logits_to_keep=1: full-vocabulary logits at every prompt position would cost more than the forward pass
        out = model(**batch, **{cache_argument(model): cache}, use_cache=True, output_hidden_states=True,
                    logits_to_keep=1)
        state = {"mask": batch["attention_mask"], "positions": batch["position_ids"][:, -1:]}
        thought = out.hidden_states[-1][:, -1]
        row_coefficients = None if coefficients is None else list(coefficients[part])
        steps: list[dict[int, torch.Tensor]] = []
        for step in range(latent_steps):
            embeds = (projection(thought) if projection is not None else thought).unsqueeze(1)
            if steering is None:
                writing: Any = contextlib.nullcontext()
            else:
                step_vectors, weight = steering.at_step(step)
                writing = steer(model, step_vectors, weight, coefficients=row_coefficients)
            with writing, (record(model, layers, "last") if layers else contextlib.nullcontext()) as acts:
                thought = _forward(model, state, cache, embeds=embeds.to(thought.dtype))
            if layers:
                steps.append({layer: acts[layer] for layer in layers})
        _forward(model, state, cache, input_ids=end_ids.expand(rows, -1))
        first = torch.log_softmax(state["logits"].float(), dim=-1).cpu() if answer_logprobs else None
        answers = torch.empty(rows, 0, dtype=torch.long, device=device)
        done = torch.zeros(rows, dtype=torch.bool, device=device)
        for _ in range(max_new_tokens):
            token = state["logits"].argmax(dim=-1)
            answers = torch.cat([answers, token.unsqueeze(1)], dim=1)
            done |= token == eos
            if bool(done.all()):
                break
            _forward(model, state, cache, input_ids=token.unsqueeze(1))
        return _decode(tokenizer, answers, eos), steps, first

    done_batches = run_batches(model, encoded, batch_size, tokenizer.pad_token_id, forward,
                               new_tokens=latent_steps + len(end_ids) + max_new_tokens, what="prompts",
                               desc="latent generate", progress=progress)
    texts = [text for batch_texts, _, _ in done_batches for text in batch_texts]
    latents = {layer: torch.cat([torch.stack([step[layer] for step in steps], dim=1) for _, steps, _ in done_batches])
               for layer in layers}
    first = torch.cat([part for _, _, part in done_batches]) if answer_logprobs else None
    return LatentOutput(texts, latents, first)


def _decode(tokenizer: Any, answers: torch.Tensor, eos: int | None) -> list[str]:
    texts = []
    for row in answers.tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        texts.append(tokenizer.decode(row, skip_special_tokens=True))
    return texts
