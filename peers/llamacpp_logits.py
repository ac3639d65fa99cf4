"""Next-token logits from llama.cpp itself, unsteered and steered, for the log-prob comparison of serve_check.

Runs in .venv-peers with llama-cpp-python's pure-Python bindings (from the same sdist as the llama.cpp build,
unpacked by peers/build_llamacpp.sh) on PYTHONPATH and LLAMA_CPP_LIB_PATH pointing at the built shared libraries.
The control vector is read from the exported GGUF and handed to `llama_set_adapter_cvec`, whose documented layout is
"an n_embd x n_layers buffer starting from layer 1", i.e. direction.N at offset (N - 1) * n_embd (the layout of
llama.cpp's own file loader). The file route itself is checked end to end by llama-completion in serve_check.
Usage: python peers/llamacpp_logits.py JOB.json  (gguf, control, scale, threads, prompts: [[ids]], out)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
from safetensors.numpy import save_file


def control_buffer(path: str, n_embd: int, n_layer: int) -> np.ndarray:
    data = np.zeros((n_layer - 1) * n_embd, dtype=np.float32)
    for tensor in gguf.GGUFReader(path).tensors:
        if tensor.name.startswith("direction."):
            index = int(tensor.name.split(".")[1])
            data[(index - 1) * n_embd:index * n_embd] += np.asarray(tensor.data, dtype=np.float32)
    return data


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    model = llama_cpp.Llama(model_path=job["gguf"], logits_all=True, n_ctx=512, n_threads=job.get("threads", 1),
                            verbose=False)
    n_embd, n_layer = model.n_embd(), llama_cpp.llama_model_n_layer(model.model)
    out = {}
    buffer = control_buffer(job["control"], n_embd, n_layer) * float(job["scale"])
    for steered in (False, True):
        if steered:
            pointer = buffer.ctypes.data_as(llama_cpp.ctypes.POINTER(llama_cpp.ctypes.c_float))
            code = llama_cpp.llama_set_adapter_cvec(model.ctx, pointer, buffer.size, n_embd, 1, n_layer - 1)
            if code != 0:
                raise RuntimeError(f"llama_set_adapter_cvec returned {code}")
        for index, ids in enumerate(job["prompts"]):
            model.reset()
            model.eval(ids)
            out[f"{'steered' if steered else 'base'}.{index}"] = np.array(model.scores[len(ids) - 1], np.float32)
    save_file(out, job["out"])


if __name__ == "__main__":
    main(sys.argv[1])
