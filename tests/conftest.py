"""Shared fixtures. Heavy imports and models are built once per session (cold imports cost 10-30 s)."""

from __future__ import annotations

import pytest
import torch

from lib.models import tiny_model

HOOK_ARCHS = ("llama", "qwen2", "gpt2", "gemma3", "gpt_neox")


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, torch.nn.Module]:
    return {arch: tiny_model(arch, n_layers=3, seed=1) for arch in HOOK_ARCHS}


@pytest.fixture(scope="session")
def embedded():
    """The embedded default (SmolLM2-135M-Instruct); converts the GGUF once per cache dir."""
    from lib.models import load_model

    torch.set_num_threads(2)
    return load_model()


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def padded_batch(lengths: list[int], side: str, vocab: int = 256, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token rows of the given lengths, padded with id 0 on `side`."""
    from lib.generation import pad_batch

    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randint(1, vocab, (n,), generator=generator).tolist() for n in lengths]
    return pad_batch(rows, 0, side)
