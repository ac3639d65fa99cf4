"""llama.cpp against our hooks: the same control vector, the same prompts, the same next-token argmax?

`./just serve-check` (after `./just build-llamacpp`) runs it on the embedded default's own GGUF (Q4_1) and prints
the agreement figures. Exported with our layer mapping, llama.cpp's steered argmax must agree with our hooked fp32
model on >= 90% of prompts at a scale that changes the unsteered argmax on most of them; the same vector written
one layer off (layer_offset +-1) must fall below that, which is how the mapping was established (lib.export).
llama.cpp quantises weights (Q4_1) and activations, so tokens are compared, not logits.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lib.export import export_llamacpp  # noqa: E402
from lib.generation import encode, pad_batch, render_chat  # noqa: E402
from lib.hooks import steer  # noqa: E402
from lib.kits.data import DEFAULT_PROMPTS, NEUTRAL_TEXTS, load_subset  # noqa: E402
from lib.models import cache_dir, embedded_gguf, find_layers, load_model  # noqa: E402
from lib.vectors import SteeringVector  # noqa: E402

LLAMACPP_VERSION = os.environ.get("LLAMACPP_PY_VERSION", "0.3.36")
LAYERS = (6, 14, 22)
SCALE = 40.0


def llamacpp_binary() -> Path:
    explicit = os.environ.get("STEERLAB_LLAMA_COMPLETION")
    path = Path(explicit) if explicit else cache_dir() / f"llama.cpp-{LLAMACPP_VERSION}" / "build" / "bin" / \
        "llama-completion"
    return path


def check_prompts(tokenizer, n: int = 24) -> list[str]:
    """Chat-rendered prompts: steerlab's generic prompts, fact requests and summaries of neutral text."""
    prompts = DEFAULT_PROMPTS + [e.prompt for e in load_subset("true_facts")[: max(0, n - 14)]]
    prompts += [f"Summarise: {t}" for t in NEUTRAL_TEXTS]
    return [render_chat(tokenizer, p) for p in prompts[:n]]


def probe_vector(layers=LAYERS, seed: int = 0) -> SteeringVector:
    """Unit random directions, one per layer (independent), so the effect depends on where each one is added."""
    generator = torch.Generator().manual_seed(seed)
    vectors = {}
    for layer in layers:
        direction = torch.randn(576, generator=generator)
        vectors[layer] = direction / direction.norm()
    return SteeringVector(vectors, {"method": "random unit directions", "seed": seed})


def llamacpp_next_tokens(binary: Path, gguf: Path, texts: list[str], control: Path | None, scale: float,
                         n_predict: int = 1, threads: int = 1) -> list[str]:
    """Greedy continuation text of each prompt from llama-completion (special tokens printed)."""
    outputs = []
    for text in texts:
        # -p, not -f: llama-completion strips a prompt file's trailing newline (the chat template ends with one)
        command = [str(binary), "-m", str(gguf), "-p", text, "-n", str(n_predict), "--temp", "0", "-t",
                   str(threads), "-no-cnv", "--no-display-prompt", "--no-warmup", "-c", "512", "-sp"]
        if control is not None:
            command += ["--control-vector-scaled", f"{control}:{scale}"]
        for _attempt in range(3):  # seen once under heavy load: exit 0 with empty stdout; a rerun is fine
            result = subprocess.run(command, capture_output=True, timeout=120)
            # a token can be part of a UTF-8 character: decode as our tokenizer does, with replacement
            stdout, stderr = (result.stdout.decode("utf-8", errors="replace"),
                              result.stderr.decode("utf-8", errors="replace"))
            if result.returncode != 0:
                raise RuntimeError(f"llama-completion failed ({result.returncode}): {stderr[-2000:]}")
            if stdout.endswith("\n\n"):
                break
        else:
            raise RuntimeError(f"unexpected llama-completion output {stdout!r} (expected text + blank line); "
                               f"stderr: {stderr[-1500:]}")
        outputs.append(stdout[:-2])  # the tool ends its output with a blank line
    return outputs


@torch.no_grad()
def hooked_next_tokens(model, tokenizer, texts: list[str], vector: SteeringVector | None, scale: float) -> list[str]:
    batch = pad_batch(encode(tokenizer, texts), tokenizer.pad_token_id)
    if vector is None:
        logits = model(**batch).logits[:, -1]
    else:
        with steer(model, vector, scale):
            logits = model(**batch).logits[:, -1]
    return [tokenizer.decode([int(i)]) for i in logits.argmax(-1)]


def llamacpp_logits(gguf: Path, ids: list[list[int]], control: Path, scale: float, threads: int = 1
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """llama.cpp's own next-token logits, unsteered and steered ([prompts, vocab] each), via peers/llamacpp_logits.py
    in .venv-peers. Needs ./just peers-env and ./just build-llamacpp."""
    from safetensors.torch import load_file

    from peers.client import peers_python

    root = llamacpp_binary().parents[2]
    env = {**os.environ, "LLAMA_CPP_LIB_PATH": str(root / "build" / "bin"), "PYTHONPATH": str(root / "python"),
           "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as tmp:
        job = {"gguf": str(gguf), "control": str(control), "scale": scale, "threads": threads, "prompts": ids,
               "out": str(Path(tmp) / "logits.safetensors")}
        (Path(tmp) / "job.json").write_text(json.dumps(job))
        result = subprocess.run([str(peers_python()), str(REPO_ROOT / "peers" / "llamacpp_logits.py"),
                                 str(Path(tmp) / "job.json")], capture_output=True, text=True, env=env, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"llamacpp_logits failed ({result.returncode}): {result.stderr[-3000:]}")
        out = load_file(job["out"])
    return (torch.stack([out[f"base.{i}"] for i in range(len(ids))]),
            torch.stack([out[f"steered.{i}"] for i in range(len(ids))]))


@torch.no_grad()
def hooked_logits(model, tokenizer, texts: list[str], vector: SteeringVector, scale: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    batch = pad_batch(encode(tokenizer, texts), tokenizer.pad_token_id)
    base = model(**batch).logits[:, -1]
    with steer(model, vector, scale):
        steered = model(**batch).logits[:, -1]
    return base, steered


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over prompts of the Pearson correlation of two [prompts, vocab] tensors."""
    a, b = a.double() - a.double().mean(1, keepdim=True), b.double() - b.double().mean(1, keepdim=True)
    return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean())


def agreement(ours: list[str], theirs: list[str]) -> float:
    return sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(ours)


def run(n_prompts: int = 24, scale: float = SCALE, layers=LAYERS, offsets=(-1, 0, 1), threads: int = 1,
        with_logprobs: bool = True) -> dict:
    """Agreement figures; with_logprobs adds log-prob correlations read through llama.cpp's bindings (.venv-peers)."""
    binary = llamacpp_binary()
    if not binary.exists():
        raise FileNotFoundError(f"{binary} is missing: build it with ./just build-llamacpp")
    model, tokenizer = load_model()
    gguf = embedded_gguf()
    texts = check_prompts(tokenizer, n_prompts)
    vector = probe_vector(layers)
    base_ours = hooked_next_tokens(model, tokenizer, texts, None, 0.0)
    steered_ours = hooked_next_tokens(model, tokenizer, texts, vector, scale)
    report: dict = {"n_prompts": len(texts), "scale": scale, "layers": list(layers), "gguf": gguf.name}
    base_theirs = llamacpp_next_tokens(binary, gguf, texts, None, 0.0, threads=threads)
    report["unsteered_agreement"] = agreement(base_ours, base_theirs)
    report["steering_changes_argmax"] = sum(a != b for a, b in zip(base_ours, steered_ours, strict=True)) / len(texts)
    with tempfile.TemporaryDirectory() as tmp:
        for offset in offsets:
            path = export_llamacpp(vector, Path(tmp) / f"cv{offset}.gguf", model_hint=model, layer_offset=offset)
            theirs = llamacpp_next_tokens(binary, gguf, texts, path, scale, threads=threads)
            report[f"steered_agreement_offset{offset:+d}"] = agreement(steered_ours, theirs)
    if with_logprobs:
        ids = encode(tokenizer, texts)
        our_base, our_steered = hooked_logits(model, tokenizer, texts, vector, scale)
        with tempfile.TemporaryDirectory() as tmp:
            for offset in (-1, 1):  # the same vector one layer off moves llama.cpp's log-probs differently
                path = export_llamacpp(vector, Path(tmp) / f"cv{offset}.gguf", model_hint=model, layer_offset=offset)
                off_base, off_steered = llamacpp_logits(gguf, ids, path, scale, threads)
                report[f"steering_effect_correlation_offset{offset:+d}"] = correlation(
                    torch.log_softmax(our_steered.double(), -1) - torch.log_softmax(our_base.double(), -1),
                    torch.log_softmax(off_steered.double(), -1) - torch.log_softmax(off_base.double(), -1))
            path = export_llamacpp(vector, Path(tmp) / "cv.gguf", model_hint=model)
            their_base, their_steered = llamacpp_logits(gguf, ids, path, scale, threads)
        logprobs = {name: torch.log_softmax(t.double(), -1) for name, t in
                    (("ours_base", our_base), ("ours_steered", our_steered), ("their_base", their_base),
                     ("their_steered", their_steered))}
        report["logprob_correlation_unsteered"] = correlation(logprobs["ours_base"], logprobs["their_base"])
        report["logprob_correlation_steered"] = correlation(logprobs["ours_steered"], logprobs["their_steered"])
        report["steering_effect_correlation"] = correlation(logprobs["ours_steered"] - logprobs["ours_base"],
                                                            logprobs["their_steered"] - logprobs["their_base"])
        report["bindings_argmax_agreement_steered"] = float(
            (our_steered.argmax(-1) == their_steered.argmax(-1)).double().mean())
    report["examples"] = [{"ours_unsteered": a, "ours_steered": b} for a, b in zip(base_ours[:4], steered_ours[:4],
                                                                                   strict=True)]
    return report


def orthogonal_check(n_prompts: int = 40, layer: int = 15, components: tuple[int, int] = (1, 4),
                     threads: int = 1) -> dict:
    """Directional ablation served by llama.cpp with no hooks (issue "Beyond addition"): principal components
    `components` of the prompts' mean residual at `layer` (the first is left out: ablating it breaks the model, and
    a broken model's argmax agrees with nothing) are ablated by `lib.ablate` in our fp32 model and orthogonalised
    into the embedded GGUF (`lib.orthogonalize`, `export_gguf_with_delta`); the greedy next tokens are compared."""
    from lib.ablation import ablate, orthogonalize, untie_embeddings
    from lib.export import export_gguf_with_delta
    from lib.hooks import record

    model, tokenizer = load_model()
    untie_embeddings(model)
    texts = check_prompts(tokenizer, n_prompts)
    batch = pad_batch(encode(tokenizer, texts), tokenizer.pad_token_id)
    with torch.no_grad(), record(model, [layer], reduction="mean") as acts:
        model(**batch)
    centered = acts[layer] - acts[layer].mean(0)
    subspace = torch.linalg.svd(centered, full_matrices=False)[2][components[0]:components[1]]
    binary = llamacpp_binary()
    plain_ours = hooked_next_tokens(model, tokenizer, texts, None, 0.0)
    plain_theirs = llamacpp_next_tokens(binary, embedded_gguf(), texts, None, 0.0, threads=threads)
    with tempfile.TemporaryDirectory() as tmp:
        gguf = export_gguf_with_delta(embedded_gguf(), orthogonalize(model, subspace), 1.0, Path(tmp) / "orth.gguf")
        theirs = llamacpp_next_tokens(binary, gguf, texts, None, 0.0, threads=threads)
    with ablate(model, subspace):
        ours = hooked_next_tokens(model, tokenizer, texts, None, 0.0)
    changed = [i for i in range(len(texts)) if ours[i] != plain_ours[i]]
    return {"n_prompts": len(texts), "unablated_agreement": agreement(plain_ours, plain_theirs),
            "orthogonal_agreement": agreement(ours, theirs), "ablation_changes": len(changed) / len(texts),
            "agreement_where_ablation_changed": sum(ours[i] == theirs[i] for i in changed) / max(len(changed), 1),
            "unedited_gguf_vs_ablated": agreement(ours, plain_theirs)}


def cvector_generator_check(scale: float = 4.0, n_prompts: int = 16, threads: int = 1) -> dict:
    """A control vector written by llama.cpp's own cvector-generator (mean method, happy vs sad system prompts):
    imported with lib.export.import_llamacpp and applied by our hooks, it must steer as llama.cpp applies the file."""
    generator = llamacpp_binary().with_name("llama-cvector-generator")
    if not generator.exists():
        raise FileNotFoundError(f"{generator} is missing: ./just build-llamacpp")
    from lib.export import import_llamacpp

    model, tokenizer = load_model()
    gguf = embedded_gguf()

    def chat(system: str, user: str) -> str:  # one prompt per line: cvector-generator unescapes \n
        return (f"<|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{user}<|im_end|>\\n"
                "<|im_start|>assistant\\n")

    users = ["Who are you?", "How was your day?", "Tell me about the weather.", "What do you think of Mondays?"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, systems in (("positive", ("You are extremely happy and cheerful.", "You are in a wonderful mood.")),
                              ("negative", ("You are extremely sad and gloomy.", "You are in a terrible mood."))):
            (Path(tmp) / f"{name}.txt").write_text("\n".join(chat(s, u) for s in systems for u in users) + "\n")
        path = Path(tmp) / "cvgen.gguf"
        result = subprocess.run([str(generator), "-m", str(gguf), "--positive-file", str(Path(tmp) / "positive.txt"),
                                 "--negative-file", str(Path(tmp) / "negative.txt"), "--method", "mean", "-o",
                                 str(path), "-t", str(threads)], capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"llama-cvector-generator failed: {result.stderr[-2000:]}")
        texts = check_prompts(tokenizer, n_prompts)
        theirs = llamacpp_next_tokens(llamacpp_binary(), gguf, texts, path, scale, threads=threads)
        base_ours = hooked_next_tokens(model, tokenizer, texts, None, 0.0)
        report: dict = {"scale": scale, "n_prompts": len(texts)}
        n_blocks = len(find_layers(model)[1])
        for offset in (0, -1, 1):  # imported one layer off, the same file must steer our hooks differently
            vector = import_llamacpp(path, layer_offset=offset)
            vector = vector.select([layer for layer in vector.layers if layer < n_blocks])
            ours = hooked_next_tokens(model, tokenizer, texts, vector, scale)
            report[f"steered_agreement_offset{offset:+d}"] = agreement(ours, theirs)
            if offset == 0:
                report["layers"] = vector.layers
                report["steering_changes_argmax"] = sum(a != b for a, b in zip(base_ours, ours, strict=True)) / len(
                    texts)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-prompts", type=int, default=24)
    parser.add_argument("--scale", type=float, default=SCALE)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the full report to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from peers.client import available

    report = run(args.n_prompts, args.scale, threads=args.threads, with_logprobs=available())
    print(json.dumps(report, indent=2))
    ok = report["steered_agreement_offset+0"] >= 0.9 and report["steering_changes_argmax"] > 0.5
    teeth = all(report[f"steered_agreement_offset{o:+d}"] < 0.9 for o in (-1, 1))
    print(f"llama.cpp vs hooks, {report['n_prompts']} prompts, scale {report['scale']}: "
          f"steered argmax agreement {report['steered_agreement_offset+0']:.0%} "
          f"(one layer off: {report['steered_agreement_offset-1']:.0%} / {report['steered_agreement_offset+1']:.0%}; "
          f"steering changes the argmax on {report['steering_changes_argmax']:.0%}; unsteered agreement "
          f"{report['unsteered_agreement']:.0%}) -> {'PASS' if ok and teeth else 'FAIL'}")
    if "steering_effect_correlation" in report:
        print(f"log-prob correlation ours vs llama.cpp (mean over prompts, full vocabulary): unsteered "
              f"{report['logprob_correlation_unsteered']:.4f}, steered {report['logprob_correlation_steered']:.4f}, "
              f"steering effect (steered - unsteered) {report['steering_effect_correlation']:.4f} (one layer off: "
              f"{report['steering_effect_correlation_offset-1']:.4f} / "
              f"{report['steering_effect_correlation_offset+1']:.4f})")
    else:
        print("log-prob correlations skipped: ./just peers-env provides llama.cpp's Python bindings environment")
    if llamacpp_binary().with_name("llama-cvector-generator").exists():
        generated = cvector_generator_check(scale=5.0, n_prompts=args.n_prompts, threads=args.threads)
        report["cvector_generator"] = generated
        print(f"llama.cpp's cvector-generator file imported onto blocks {generated['layers'][0]}.."
              f"{generated['layers'][-1]}: our hooks vs llama.cpp steered argmax agreement "
              f"{generated['steered_agreement_offset+0']:.0%} (imported one layer off: "
              f"{generated['steered_agreement_offset-1']:.0%} / {generated['steered_agreement_offset+1']:.0%}; "
              f"steering changes the argmax on {generated['steering_changes_argmax']:.0%})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if ok and teeth else 1


if __name__ == "__main__":
    sys.exit(main())
