"""PEFT adapter families trained on SFT pairs and turned into dense weight deltas.

Families (chosen by name, same data and step budget): LoRA (Hu et al. 2021), DoRA (Liu et al. 2024), PiSSA
(Meng et al. 2024), DeLoRA (Bini et al. 2025), OFT (Qiu et al. 2023) and IA3 (Liu et al. 2022). Each adapter is
trained on a deep copy of the base, merged with PEFT's `merge_and_unload`, and the delta is the merged dense
weights minus the untouched base (`lib.weights.delta_from_merged`): weight steering (Fierro & Roger 2025) then
combines deltas by plain arithmetic. PEFT's `add_weighted_adapter` with negative weights is never used (its sign
handling cancels for a single adapter).

Training is a plain PEFT loop rather than TRL's SFTTrainer: the loss is on response tokens only, batches and
initialisation follow one seed, and there is no Trainer start-up cost, which matters for dozens of small adapters
on a CPU.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lib.generation import render_chat
from lib.models import find_layers
from lib.weights import WeightDelta, delta_from_merged

ADAPTER_FAMILIES = ("lora", "dora", "pissa", "delora", "oft", "ia3")
# modules whose *input* IA3 scales (the feed-forward down projections), by architecture naming
_FEEDFORWARD_NAMES = ("down_proj", "dense_4h_to_h", "fc2", "w2")


@dataclass(frozen=True)
class SFTPair:
    """One supervised example: a user prompt and the reply to learn (the persona is in the reply, not the prompt)."""

    prompt: str
    response: str


def linear_module_names(model: nn.Module) -> list[str]:
    """Short names of the nn.Linear modules inside the decoder blocks (e.g. q_proj ... down_proj)."""
    _, blocks = find_layers(model)
    names = {name.rsplit(".", 1)[-1] for name, module in blocks[0].named_modules() if isinstance(module, nn.Linear)}
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear in its decoder blocks; pass target_modules")
    return sorted(names)


# PEFT fields steerlab sets itself: overriding them through options would change the family or dodge a parameter
_MANAGED_FIELDS = {"r": "rank", "target_modules": "target_modules", "task_type": "nothing (always CAUSAL_LM)",
                   "use_dora": "the family name (dora)", "init_lora_weights": "the family name (lora, pissa)",
                   "feedforward_modules": "nothing (the feed-forward down projections)"}


def peft_config_class(family: str) -> Any:
    """PEFT's config class of an adapter family (LoRA, DoRA and PiSSA share LoraConfig)."""
    import peft

    if family not in ADAPTER_FAMILIES:
        raise ValueError(f"adapter={family!r} is not an adapter family; choose one of {ADAPTER_FAMILIES}")
    return {"lora": peft.LoraConfig, "dora": peft.LoraConfig, "pissa": peft.LoraConfig, "delora": peft.DeloraConfig,
            "oft": peft.OFTConfig, "ia3": peft.IA3Config}[family]


def check_peft_options(family: str, options: Mapping[str, Any], parameter: str = "options") -> None:
    """Extra PEFT config fields for one family (e.g. DeLoRA's `delora_lambda`), checked by name against the
    family's PEFT config class before anything trains: a misspelt field would otherwise raise only after the
    baselines ran, or, for a field PEFT ignores, never."""
    import dataclasses

    cls = peft_config_class(family)
    known = {f.name for f in dataclasses.fields(cls)}
    for name in options:
        if name in _MANAGED_FIELDS:
            raise ValueError(f"{parameter} sets {name!r}, which steerlab sets for {family}: use "
                             f"{_MANAGED_FIELDS[name]} instead")
        if name not in known:
            close = sorted(k for k in known if k.split("_")[0] == str(name).split("_")[0] or name in k)
            raise ValueError(f"{parameter} sets {name!r}, which {cls.__name__} ({family}) has no field for"
                             + (f"; did you mean one of {close}?" if close else
                                "; see the fields of peft." + cls.__name__))


def peft_config(family: str, model: nn.Module, rank: int = 8, alpha: float | None = None,
                target_modules: Sequence[str] | None = None, **overrides: Any) -> Any:
    """The PEFT config of an adapter family; `rank` is r for the low-rank families and ignored by IA3 and OFT
    (OFT uses blocks of `oft_block_size`, default 32, which must divide the layers' widths)."""
    import peft

    check_peft_options(family, overrides)
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank={rank!r} must be a positive int")
    targets = list(target_modules) if target_modules else linear_module_names(model)
    alpha = float(alpha if alpha is not None else 2 * rank)
    common = {"target_modules": targets, "task_type": "CAUSAL_LM"}
    if family in ("lora", "dora", "pissa"):
        init: Any = {"lora": True, "dora": True, "pissa": "pissa"}[family]
        config = {"r": rank, "lora_alpha": alpha, "lora_dropout": 0.0, "use_dora": family == "dora",
                  "init_lora_weights": init, **common}
        return peft.LoraConfig(**{**config, **overrides})
    if family == "delora":
        return peft.DeloraConfig(**{"r": rank, **common, **overrides})
    if family == "oft":
        return peft.OFTConfig(**{"r": 0, "oft_block_size": 32, **common, **overrides})
    feedforward = [name for name in targets if name in _FEEDFORWARD_NAMES]
    return peft.IA3Config(**{**common, "feedforward_modules": feedforward, **overrides})


def tokenize_pairs(tokenizer: Any, pairs: Sequence[SFTPair], max_length: int = 256,
                   chat: bool = True) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per pair: the chat-rendered prompt, then the response and EOS; labels are -100 on the
    prompt so the loss is on the response only. Long rows keep the response and lose the start of the prompt."""
    rows = []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for pair in pairs:
        prompt_ids = tokenizer(render_chat(tokenizer, pair.prompt, chat=chat), add_special_tokens=not chat)["input_ids"]
        response_ids = tokenizer(pair.response, add_special_tokens=False)["input_ids"] + eos
        if not pair.response.strip():
            raise ValueError(f"an SFT pair has an empty response (prompt {pair.prompt[:60]!r}); drop it first")
        response_ids = response_ids[:max_length]
        prompt_ids = prompt_ids[max(0, len(prompt_ids) + len(response_ids) - max_length):]
        rows.append((prompt_ids + response_ids, [-100] * len(prompt_ids) + response_ids))
    return rows


def _collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):  # right padding: positions count from 0 in every row
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
        mask[i, : len(row_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train_adapter(
    base: nn.Module,
    tokenizer: Any,
    pairs: Sequence[SFTPair],
    family: str = "lora",
    *,
    seed: int = 0,
    steps: int = 20,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    rank: int = 8,
    alpha: float | None = None,
    target_modules: Sequence[str] | None = None,
    max_length: int = 256,
    chat: bool = True,
    progress: bool = True,
    **overrides: Any,
) -> tuple[WeightDelta, list[float]]:
    """Train one adapter of `family` on `pairs` (a deep copy of `base`; the base is untouched), merge it and return
    (dense delta = merged - base, loss per step). The seed fixes the adapter's initialisation and the batch order."""
    import peft

    if not pairs:
        raise ValueError("pairs is empty: an adapter needs training examples")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps={steps} and batch_size={batch_size} must be >= 1")
    rows = tokenize_pairs(tokenizer, pairs, max_length, chat)
    torch.manual_seed(seed)
    model = copy.deepcopy(base)
    model.train()
    device = next(base.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    before = training_set_loss(model, rows, batch_size, pad_id, device)  # the untouched copy
    peft_model = peft.get_peft_model(model, peft_config(family, model, rank, alpha, target_modules, **overrides))
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
    order_rng = random.Random(seed)
    order: list[int] = []
    losses = []
    for _ in tqdm(range(steps), desc=f"train {family} seed={seed}", disable=not progress, leave=False):
        if len(order) < batch_size:  # epochs in a seeded order, never repeating a row within a batch
            fresh = list(range(len(rows)))
            order_rng.shuffle(fresh)
            order += fresh
        picked, order = order[:batch_size], order[batch_size:]
        batch = {k: v.to(device) for k, v in _collate([rows[i] for i in picked], pad_id).items()}
        loss = peft_model(**batch).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{family} seed={seed}: loss became {loss.item()}; lower learning_rate")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    meta = {"adapter": family, "seed": seed, "steps": steps, "batch_size": batch_size, "learning_rate": learning_rate,
            "rank": rank, "n_pairs": len(pairs), "final_loss": losses[-1],
            "train_loss_before": before, "train_loss_after": training_set_loss(peft_model, rows, batch_size, pad_id,
                                                                              device)}
    return merge_to_delta(base, peft_model, meta), losses


def training_set_loss(model: nn.Module, rows: Sequence[tuple[list[int], list[int]]], batch_size: int, pad_id: int,
                      device: torch.device) -> float:
    """Mean response-token loss over every training row (no gradient): the same rows before and after training,
    so a divergence check does not compare two different batches (per-step losses of short rows swing 0.1-3 from
    batch to batch; journal 2026-12-01, sycophancy labelled pairs)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = {k: v.to(device) for k, v in _collate(rows[start: start + batch_size], pad_id).items()}
            tokens = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * tokens
            count += tokens
    model.train(was_training)
    return total / max(count, 1)


def merge_to_delta(base: nn.Module, peft_model: Any, meta: dict[str, Any] | None = None) -> WeightDelta:
    """Merge the adapter into its (copied) weights and return merged - base, dense."""
    peft_model.eval()
    with torch.no_grad():
        merged = peft_model.merge_and_unload()
    return delta_from_merged(base, merged, meta)
