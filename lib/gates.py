"""Conditional steering (Lee et al. 2025, CAST, "Programming refusal with conditional activation steering"): a
condition direction decides per row, from the prompt's hidden states at one layer, whether a steering vector
applies to that row.

The score is CAST's: h = the mean of the row's real prompt tokens at the condition layer, p = tanh(P_c h) with P_c
the projection on the condition direction c, score = cos(h, p) (IBM's activation-steering implementation). It is
read once, during the prefill (the forward call with nothing cached), by a hook on the condition block, and held
for the generated tokens, so the gate costs no second forward pass. `steer(..., gate=Gate(...))` multiplies each
row's steering by its decision. A behaviour layer below the condition layer would be steered in the prefill
before the gate has decided: it is refused unless the steering acts on generated tokens only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

Comparison = Literal[">", "<"]


def cast_score(hidden: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """[rows] CAST's condition score of [rows, hidden] mean hidden states: cos(h, tanh(P_c h))."""
    h = hidden.float()
    c = direction.float().to(h.device)
    projected = torch.tanh(((h @ c) / (c @ c))[:, None] * c)
    return torch.nn.functional.cosine_similarity(h, projected, dim=-1)


@dataclass
class Gate:
    """Steer a row only when its prompt's condition score at `layer` is `comparison` `threshold` (">": above).

    `direction` is a Tensor [hidden] or a {layer: vector} (a SteeringVector) holding `layer`. `decisions` is filled
    during each prefill: [rows] 1.0 where the row is steered (read it after a forward to see what the gate did)."""

    direction: torch.Tensor | Mapping[int, torch.Tensor]
    layer: int
    threshold: float
    comparison: Comparison = ">"
    decisions: torch.Tensor | None = field(default=None, repr=False)
    scores: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.comparison not in (">", "<"):
            raise ValueError(f"comparison={self.comparison!r} must be '>' or '<'")
        if isinstance(self.direction, Mapping):
            if self.layer not in self.direction:
                raise ValueError(f"the condition direction has layers {sorted(self.direction)}, not layer={self.layer}")
            self.direction = self.direction[self.layer]
        if not isinstance(self.direction, torch.Tensor) or self.direction.dim() != 1:
            raise ValueError("direction must be a Tensor [hidden] (or a {layer: vector} holding `layer`)")
        if not torch.isfinite(self.direction).all() or float(self.direction.norm()) == 0:
            raise ValueError("the condition direction is zero or not finite")
        if not isinstance(self.threshold, int | float) or isinstance(self.threshold, bool):
            raise ValueError(f"threshold={self.threshold!r} must be a number")

    def decide(self, scores: torch.Tensor) -> torch.Tensor:
        """[rows] 1.0 where the gate opens."""
        return (scores > self.threshold if self.comparison == ">" else scores < self.threshold).float()

    def read_prefill(self, hidden: torch.Tensor, real: torch.Tensor) -> None:
        """Score each row from its real tokens' mean hidden state [rows, tokens, hidden] and keep the decisions."""
        weights = real.to(hidden.device, torch.float32)[..., None]
        mean = (hidden.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)
        self.scores = cast_score(mean, self.direction).cpu()
        self.decisions = self.decide(self.scores)

    def rows(self, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """[batch, 1, 1] the decisions as a multiplier; refuses when no prefill decided for this batch."""
        if self.decisions is None:
            raise RuntimeError(f"the gate at layer {self.layer} has not decided: the prompt ran outside this steer "
                               "block (its prefill is where the condition is read)")
        if self.decisions.numel() != batch:
            raise RuntimeError(f"the gate decided for {self.decisions.numel()} rows, the batch has {batch}")
        return self.decisions.to(device=device, dtype=dtype)[:, None, None]

