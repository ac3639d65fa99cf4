"""toy_sweep: config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from lib.config import (
    NotebookConfig,
    check_positive,
)


@dataclass
class ToySweepConfig(NotebookConfig):
    """A seconds-long notebook with no language model, for checking a sweep executor or a cluster end to end:
    contrastive steering in miniature (mean-difference vector in a random 4-layer linear residual stream, a
    readout direction as the behaviour, off-readout drift as the side effect). `work` adds CPU-bound matrix
    products, `sleep_seconds` idle time, `fail_scale` a deliberate error at that scale."""

    notebook: ClassVar[str] = "toy_sweep"
    resources: ClassVar[dict[str, float]] = {"num_cpus": 1}
    layer: int = 1
    scale: float = 1.0
    n_samples: int = 64
    seed: int = 0
    work: int = 0
    sleep_seconds: float = 0.0
    fail_scale: float | None = None
    out_dir: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.layer, int) or not 0 <= self.layer < 4:
            raise ValueError(f"layer={self.layer!r} must be an int in [0, 3] (the toy stream has 4 layers)")
        if not isinstance(self.scale, int | float) or isinstance(self.scale, bool):
            raise ValueError(f"scale={self.scale!r} must be a number")
        check_positive("n_samples", self.n_samples)
        check_positive("work", self.work, allow_zero=True)
        check_positive("sleep_seconds", self.sleep_seconds, allow_zero=True)


