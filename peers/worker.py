"""Runs inside .venv-peers (steering-vectors 0.12.2, repeng 0.4.0, transformers < 5, numpy < 2).

Driven as a subprocess by peers/client.py: `python peers/worker.py JOB.json`. The job names one model and a list
of tasks; tensors go to `<out>.safetensors`, everything else (timings, versions, shapes) to `<out>.json`.
It never imports steerlab: this environment exists because the peers' pinned stacks cannot share ours.

Model specs: {"gguf": path} loads a GGUF with this environment's transformers (dequantised once, cached as a
folder under $STEERLAB_CACHE/peers-models), {"folder": path} loads a saved checkpoint (our tiny models).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file
from timing import timed  # peers/timing.py: this script's folder is on sys.path
from transformers import AutoModelForCausalLM, AutoTokenizer


def cache_root() -> Path:
    return Path(os.environ.get("STEERLAB_CACHE", Path.home() / ".cache" / "steerlab"))


def gguf_folder(gguf_path: Path) -> Path:
    """The GGUF dequantised by this environment's transformers, saved once as a folder."""
    digest = hashlib.sha256(gguf_path.read_bytes()).hexdigest()[:16]
    path = cache_root() / "peers-models" / f"{gguf_path.stem}-{digest}-tf{transformers.__version__}"
    if not (path / "config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        if hasattr(model, "hf_quantizer"):
            model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        partial = path.with_name(path.name + ".partial")
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.replace(path)
    return path


def load(spec: dict):
    """{"gguf": path} or {"folder": path, "tokenizer_gguf": path}: a tokenizer saved by transformers 5 does not load
    in 4.x, so tiny models borrow the tokenizer of the GGUF as this environment converts it."""
    path = spec["folder"] if "folder" in spec else gguf_folder(Path(spec["gguf"]))
    tokenizer_path = gguf_folder(Path(spec["tokenizer_gguf"])) if "tokenizer_gguf" in spec else path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(tokenizer, "add_bos_token", False):
        # transformers 4.x's GGUF tokenizer for SmolLM2 prepends <|im_start|> as BOS, which transformers 5 does not:
        # the chat template already writes it, so both stacks must see the same ids (the client checks them).
        tokenizer.add_bos_token = False
    return model, tokenizer


def encode(tokenizer, texts: list[str], side: str) -> dict:
    tokenizer.padding_side = side
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


# ----------------------------------------------------------------------------- tasks


def task_hidden_states(model, tokenizer, task, out):
    """Every output_hidden_states entry and steering-vectors' decoder_block recording for one text."""
    from steering_vectors import record_activations

    batch = encode(tokenizer, [task["text"]], "right")
    with torch.no_grad(), record_activations(model, "decoder_block") as recorded:
        result = model(**batch, output_hidden_states=True)
    for index, state in enumerate(result.hidden_states):
        out[f"hs.{index}"] = state[0].float()
    for layer, acts in recorded.items():
        out[f"sv_record.{layer}"] = acts[-1][0].float()
    out["logits"] = result.logits[0].float()
    return {"n_hidden_states": len(result.hidden_states), "n_layers": model.config.num_hidden_layers}


def sv_extract(model, tokenizer, pairs, layers, batch_size):
    from steering_vectors import train_steering_vector

    tokenizer.padding_side = "right"  # steering-vectors reads index -1 adjusted for padding; right keeps positions
    return train_steering_vector(model, tokenizer, [tuple(p) for p in pairs], layers=layers, batch_size=batch_size,
                                 read_token_index=-1, show_progress=False)


def repeng_extract(model, tokenizer, pairs, layers, batch_size):
    from repeng import ControlVector, DatasetEntry

    tokenizer.padding_side = "right"  # repeng reads the last non-padding token; right padding keeps positions
    dataset = [DatasetEntry(positive=p, negative=n) for p, n in pairs]
    return ControlVector.train(model, tokenizer, dataset, hidden_layers=layers, method="pca_diff",
                               batch_size=batch_size)


def task_extract(model, tokenizer, task, out):
    pairs, layers, batch_size = task["pairs"], task["layers"], task.get("batch_size", 1)
    vector = sv_extract(model, tokenizer, pairs, layers, batch_size)
    for layer, value in vector.layer_activations.items():
        out[f"sv_mean.{layer}"] = value.float()
    control = repeng_extract(model, tokenizer, pairs, layers, max(batch_size, 1))
    for layer, value in control.directions.items():
        out[f"repeng_pca.{layer}"] = torch.from_numpy(np.asarray(value, dtype=np.float32))
    if task.get("export_gguf"):
        control.export_gguf(task["export_gguf"])  # repeng's own control-vector file, for our importer
    ids = [tokenizer(p)["input_ids"] for pair in pairs for p in pair]  # what both peers tokenize
    return {"sv_layers": sorted(vector.layer_activations), "repeng_layers": sorted(control.directions), "ids": ids}


def control_model(model, layers):
    """repeng's ControlModel, with one shim: under transformers 4.57, Qwen2 and Gemma-3 read `attention_type` from
    each decoder layer, which repeng 0.4.0's ControlModule wrapper hides (AttributeError); copy it across."""
    from repeng import ControlModel
    from repeng.control import model_layer_list

    wrapped = ControlModel(model, layers)
    for module in model_layer_list(wrapped):
        block = getattr(module, "block", None)
        if block is not None and hasattr(block, "attention_type"):
            module.attention_type = block.attention_type
    return wrapped


def _vector(path: str) -> dict[int, torch.Tensor]:
    return {int(k): v.float() for k, v in load_file(path).items()}


def task_steer_logits(model, tokenizer, task, out):
    """Unsteered and steered logits of each text alone (no padding) under steering-vectors' `apply` and repeng's
    ControlModel, the same vector and coefficient."""
    from repeng import ControlVector
    from steering_vectors import SteeringVector

    vectors = _vector(task["vector"])
    coefficient = float(task["coefficient"])
    sv = SteeringVector(vectors, "decoder_block")
    for index, text in enumerate(task["texts"]):
        batch = encode(tokenizer, [text], "right")
        with torch.no_grad():
            out[f"base.{index}"] = model(**batch).logits[0].float()
            with sv.apply(model, multiplier=coefficient):
                out[f"sv.{index}"] = model(**batch).logits[0].float()
    wrapped = control_model(model, list(vectors))
    try:
        control = ControlVector(model.config.model_type, {k: v.numpy() for k, v in vectors.items()})
        wrapped.set_control(control, coefficient)
        for index, text in enumerate(task["texts"]):
            with torch.no_grad():
                out[f"repeng.{index}"] = wrapped(**encode(tokenizer, [text], "right")).logits[0].float()
    finally:
        wrapped.unwrap()
    return {}


def task_bench(model, tokenizer, task, out):
    """Seconds per repeat for extraction, steered generation and a K-coefficient sweep, done each peer's way."""
    from repeng import ControlVector
    from steering_vectors import SteeringVector

    repeats, pairs, layers = task["repeats"], task["pairs"], task["layers"]
    batch_size, new_tokens, coefficients = task["batch_size"], task["max_new_tokens"], task["coefficients"]
    vectors = _vector(task["vector"])
    prompts = encode(tokenizer, task["prompts"], "left")
    times: dict[str, list[float]] = {}
    times["extract.steering-vectors"] = timed(lambda: sv_extract(model, tokenizer, pairs, layers, batch_size), repeats)
    times["extract.repeng"] = timed(lambda: repeng_extract(model, tokenizer, pairs, layers, batch_size), repeats)

    def generate(target, **extra):
        with torch.no_grad():
            return target.generate(**prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id, **extra)

    sv = SteeringVector(vectors, "decoder_block")
    times["generate.unsteered"] = timed(lambda: generate(model), repeats)  # this stack's own baseline

    def sv_generate(coefficient):
        with sv.apply(model, multiplier=coefficient):
            return generate(model)

    times["generate.steering-vectors"] = timed(lambda: sv_generate(coefficients[-1]), repeats)
    times["sweep.steering-vectors"] = timed(lambda: [sv_generate(c) for c in coefficients], max(1, repeats // 2))
    wrapped = control_model(model, list(vectors))
    try:
        control = ControlVector(model.config.model_type, {k: v.numpy() for k, v in vectors.items()})

        def repeng_generate(coefficient):
            wrapped.set_control(control, coefficient)
            try:
                return generate(wrapped)
            finally:
                wrapped.reset()

        times["generate.repeng"] = timed(lambda: repeng_generate(coefficients[-1]), repeats)
        times["sweep.repeng"] = timed(lambda: [repeng_generate(c) for c in coefficients], max(1, repeats // 2))
        wrapped.set_control(control, coefficients[-1])
        out["repeng_tokens"] = generate(wrapped).to(torch.float32)
    finally:
        wrapped.unwrap()
    with sv.apply(model, multiplier=coefficients[-1]):
        out["sv_tokens"] = generate(model).to(torch.float32)
    return {"times": times, "medians": {k: statistics.median(v) for k, v in times.items()}}


TASKS = {"hidden_states": task_hidden_states, "extract": task_extract, "steer_logits": task_steer_logits,
         "bench": task_bench}


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(int(job.get("threads", torch.get_num_threads())))
    torch.manual_seed(0)
    start = time.perf_counter()
    model, tokenizer = load(job["model"])
    info: dict = {"load_s": time.perf_counter() - start, "versions": {
        "torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__,
        "steering-vectors": _version("steering-vectors"), "repeng": _version("repeng")}, "tasks": {}}
    out: dict[str, torch.Tensor] = {}
    for task in job["tasks"]:
        info["tasks"][task["name"]] = TASKS[task["name"]](model, tokenizer, task, out)
    base = Path(job["out"])
    save_file({k: v.detach().contiguous() for k, v in out.items()}, str(base.with_suffix(".safetensors")))
    base.with_suffix(".json").write_text(json.dumps(info, indent=2))


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main(sys.argv[1])
