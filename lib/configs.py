"""One config dataclass per notebook. The notebook's `parameters` cell mirrors the fields
(a test checks names and defaults), and `just run` / `just sweep` validate overrides
against it before anything launches, because papermill only warns on unknown names.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class NotebookConfig:
    """Base of the per-notebook configs; each subclass ends with `out_dir: str = ""` (empty: derived)."""

    notebook: ClassVar[str] = ""

    @classmethod
    def from_namespace(cls, namespace: dict[str, Any]) -> NotebookConfig:
        """Build from the notebook's globals after its parameters cell (papermill may have injected values)."""
        missing = [f.name for f in fields(cls) if f.name not in namespace]
        if missing:
            raise NameError(f"the parameters cell does not define {missing}")
        return cls(**{f.name: namespace[f.name] for f in fields(cls)})

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def overrides(self) -> dict[str, Any]:
        """Fields that differ from the defaults (out_dir excluded): they name the run."""
        defaults = type(self)()
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "out_dir" and getattr(self, f.name) != getattr(defaults, f.name)}

    def resolve_out_dir(self) -> Path:
        """`out/<notebook>/<run-slug>/`, the same folder `just run` picks for these parameters."""
        out_dir = getattr(self, "out_dir", "")
        path = Path(out_dir) if out_dir else REPO_ROOT / "out" / self.notebook / run_slug(self.overrides())
        path.mkdir(parents=True, exist_ok=True)
        return path

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_slug(overrides: dict[str, Any]) -> str:
    """A readable folder name from the non-default parameters, e.g. `layer=12_scale=4.0`."""
    if not overrides:
        return "default"
    parts = [f"{key}={_slug_value(value)}" for key, value in sorted(overrides.items())]
    slug = "_".join(parts)
    return slug if len(slug) <= 120 else slug[:100] + "-" + str(abs(hash(slug)) % 10**8)


def _slug_value(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return re.sub(r"[^A-Za-z0-9.,+-]+", "-", text).strip("-") or "empty"


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} must be one of {allowed}")


def _positive(name: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{name}={value!r} must be a {'non-negative' if allow_zero else 'positive'} number")


@dataclass
class ContrastiveConfig(NotebookConfig):
    """Contrastive steering between two data sets (seed: "Chunky Tulu Contrastive Steering")."""

    notebook: ClassVar[str] = "contrastive_steering"
    model: str = "smollm2-135m"
    target: str = "math"
    baseline: str = "howto"
    layer: int = 10
    scale: float = 2.0
    n_samples: int = 32
    n_eval: int = 16
    include_response: bool = False
    inference_set: str = ""
    inference_n: int = 5
    max_tokens: int = 48
    temperature: float = 0.0
    curve_scales: tuple[float, ...] | list[float] = (0.0, 1.0, 2.0, 4.0, 8.0)
    random_control: bool = True
    batch_size: int = 16
    seed: int = 0
    out_dir: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"layer={self.layer!r} must be a non-negative int (checked against the model later)")
        if not isinstance(self.scale, int | float) or isinstance(self.scale, bool):
            raise ValueError(f"scale={self.scale!r} must be a number")
        for name in ("n_samples", "inference_n", "max_tokens", "batch_size"):
            _positive(name, getattr(self, name))
        _positive("n_eval", self.n_eval, allow_zero=True)
        _positive("temperature", self.temperature, allow_zero=True)
        if not self.curve_scales or 0.0 not in [float(s) for s in self.curve_scales]:
            raise ValueError(f"curve_scales={self.curve_scales!r} must include 0.0 (the unsteered baseline)")
        self.curve_scales = [float(s) for s in self.curve_scales]
        self.target, self.baseline, self.inference_set = str(self.target), str(self.baseline), str(self.inference_set)


CONFIGS: dict[str, type[NotebookConfig]] = {cls.notebook: cls for cls in (ContrastiveConfig,)}
