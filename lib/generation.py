"""Chat rendering, token batches, the one batched-forward loop, and batched generation.

`run_batches` is the loop every batched computation in lib goes through (evals, choice evals, extraction,
generation, the latent loop): token rows -> batches -> left padding -> the model's device -> the batch's
steering -> the caller's forward. Per-row coefficients travel with their rows, so K coefficients for N prompts
run as one batched job of N*K rows instead of K sequential runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch import nn
from tqdm.auto import tqdm

from lib.hooks import Steering, coefficient_values
from lib.models import max_positions
from lib.trunk import hooks_below, shared_trunk

T = TypeVar("T")


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


def check_rows(model: nn.Module, rows: Sequence[Sequence[int]], new_tokens: int = 0, what: str = "rows") -> None:
    """Refuse, before any forward pass, a row with no tokens (an empty text: it would run as all padding and give a
    zero or garbage result) and a row that with `new_tokens` more would pass the model's maximum positions
    (GPT-2 fails mid-forward with an IndexError; RoPE models run past their trained length silently). `what`
    names the rows in the message (e.g. "texts", "prompts": row i is the caller's item i)."""
    empty = [i for i, row in enumerate(rows) if len(row) == 0]
    if empty:
        raise ValueError(f"{what}[{empty[0]}] has no tokens ({len(empty)} of {len(rows)} rows are empty): "
                         "drop empty texts, or give them content")
    limit = max_positions(model)
    if limit is not None:
        long = [i for i, row in enumerate(rows) if len(row) + new_tokens > limit]
        if long:
            i = long[0]
            more = f" + {new_tokens} new tokens" if new_tokens else ""
            raise ValueError(f"{what}[{i}] has {len(rows[i])} tokens{more}, past the model's maximum of {limit} "
                             f"positions ({len(long)} rows do): shorten or truncate it"
                             + (", or ask for fewer new tokens" if new_tokens else ""))


def run_batches(
    model: nn.Module,
    rows: Sequence[Sequence[int]],
    batch_size: int,
    pad_id: int,
    forward: Callable[[slice, dict[str, torch.Tensor]], T],
    *,
    steering: Steering | None = None,
    coefficients: Sequence[float] | None = None,
    positions: bool = True,
    new_tokens: int = 0,
    what: str = "rows",
    desc: str | None = None,
    progress: bool = True,
    share_trunk: bool = False,
) -> list[T]:
    """The one batched-forward loop: token `rows` in batches of `batch_size`, left-padded (with `position_ids`
    unless `positions=False`, see `pad_batch`), moved to the model's device, and `forward(part, batch)` called for
    each with that batch's steering active (its rows' `coefficients`, and its rows' vectors when `steering` has
    one per row). Returns the forward results in order.
    `part` is the slice of `rows` in the batch. Rows are checked first (`check_rows`: none empty, none past the
    model's maximum positions with `new_tokens` more), and so are the coefficients.

    share_trunk: for a `forward` that makes one plain model call (no generation), rows of a batch with the same
    tokens run once through the blocks below the lowest steered layer (`lib.trunk.shared_trunk`; the same logits to
    fp32 rounding). Put such rows next to each other so that they meet in a batch. Skipped while other hooks sit on
    those blocks (a `record` there would see fewer rows)."""
    check_rows(model, rows, new_tokens, what)
    coefficient_values(coefficients, len(rows))
    if steering is not None and steering.rows is not None and steering.rows != len(rows):
        raise ValueError(f"steering has {steering.rows} per-row vectors for {len(rows)} rows; give one per row")
    if coefficients is not None and steering is None:
        raise ValueError("coefficients were given without steering: pass steering=Steering(vector, ...)")
    device = next(model.parameters()).device
    results = []
    for part in batches(len(rows), batch_size, desc, progress):
        batch = {k: v.to(device) for k, v in pad_batch(rows[part], pad_id, positions=positions).items()}
        context = contextlib.nullcontext() if steering is None else \
            steering.batch(model, None if coefficients is None else coefficients[part], part)
        trunk: Any = contextlib.nullcontext()
        if share_trunk and steering is not None:
            below = steering.lowest_layer(part)
            if below and not hooks_below(model, below, steering.layers_path):
                trunk = shared_trunk(model, rows[part], below, steering.layers_path)
        with trunk, context:
            results.append(forward(part, batch))
    return results


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 64,
    min_new_tokens: int = 0,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 16,
    system: str | None = None,
    chat: bool = True,
    steering: Steering | None = None,
    coefficients: Sequence[float] | None = None,
    progress: bool = True,
) -> list[str]:
    """Batched generation; greedy at temperature 0, else sampled with a per-batch seed. `min_new_tokens` keeps EOS
    from ending rows early (benchmarks time equal token counts)."""
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0")
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise ValueError(f"min_new_tokens={min_new_tokens} must be in 0..max_new_tokens={max_new_tokens}")
    encoded = encode(tokenizer, [render_chat(tokenizer, p, system, chat) for p in prompts], chat)

    def forward(part: slice, batch: dict[str, torch.Tensor]) -> list[str]:
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            torch.manual_seed(seed + part.start)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
        tokens = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                **({"min_new_tokens": min_new_tokens} if min_new_tokens else {}), **sampling)
        return tokenizer.batch_decode(tokens[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)

    # `generate` computes its own positions from the mask: positions=False
    texts = run_batches(model, encoded, batch_size, tokenizer.pad_token_id, forward, steering=steering,
                        coefficients=coefficients, positions=False, new_tokens=max_new_tokens, what="prompts",
                        desc="generate", progress=progress)
    return [text for batch_texts in texts for text in batch_texts]
