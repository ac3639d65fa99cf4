"""Ours vs steering-vectors vs repeng (and llama.cpp, informational), one run, same machine, model and prompts.

Writes out/bench/peers.{md,json}. Rows: vector extraction for the same contrast pairs and layers; steered greedy
generation of the same prompts and lengths; a K-coefficient sweep (our per-row coefficients in one batch vs each
peer's K sequential runs). Ratio = ours / fastest peer (goal <= 1.0). Our arms run in this process, the peers' in
.venv-peers (peers/worker.py), both with the same thread count; each arm is a median of repeats after a warm-up,
and our arms are timed half before and half after the peers' so drift hits both sides.
Needs ./just peers-env; the llama.cpp row needs ./just build-llamacpp (otherwise it says so).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from lib.export import export_llamacpp  # noqa: E402
from lib.extract import extract  # noqa: E402
from lib.generation import encode, pad_batch, render_chat  # noqa: E402
from lib.hooks import steer  # noqa: E402
from lib.kits.data import DEFAULT_PROMPTS, NEUTRAL_TEXTS  # noqa: E402
from lib.models import embedded_gguf, load_model  # noqa: E402
from lib.vectors import mean_difference  # noqa: E402
from peers import client, serve_check  # noqa: E402
from peers.timing import timed  # noqa: E402

REPEATS = int(os.environ.get("BENCH_REPEATS", "4"))
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
LAYERS = [10, 15]
N_PAIRS, BATCH, N_PROMPTS, NEW_TOKENS = 32, 16, 16, 32
QUICK = os.environ.get("BENCH_QUICK") == "1"  # a smoke run of the script: tiny sizes, prints, writes nothing
if QUICK:
    N_PAIRS, BATCH, N_PROMPTS, NEW_TOKENS, REPEATS = 4, 4, 4, 4, 1
COEFFICIENTS = [1.0, 2.0, 3.0, 4.0]


def main() -> None:
    if not client.available():
        raise SystemExit("The peers' environment is missing: ./just peers-env")
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model, tokenizer = load_model()
    pairs = client.contrast_pairs(tokenizer, N_PAIRS)
    positives, negatives = [p for p, _ in pairs], [n for _, n in pairs]
    prompts = [render_chat(tokenizer, p) for p in (DEFAULT_PROMPTS + [f"Summarise: {t}" for t in NEUTRAL_TEXTS])]
    prompts = prompts[:N_PROMPTS]
    batch = pad_batch(encode(tokenizer, prompts), tokenizer.pad_token_id, positions=False)

    def ours_extract():
        pos = extract(model, tokenizer, positives, layers=LAYERS, batch_size=BATCH, use_cache=False, progress=False)
        neg = extract(model, tokenizer, negatives, layers=LAYERS, batch_size=BATCH, use_cache=False, progress=False)
        return mean_difference(pos, neg)

    vector = ours_extract()
    vector = vector * (4.0 / max(vector.norms().values()))  # a visible but sane push at coefficient 1-4

    @torch.no_grad()
    def ours_generate(rows: dict[str, torch.Tensor], coefficients: list[float]) -> torch.Tensor:
        with steer(model, vector, coefficients=coefficients):
            return model.generate(**rows, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id)

    k = len(COEFFICIENTS)
    sweep_rows = {key: value.repeat(k, 1) for key, value in batch.items()}
    sweep_coefficients = [c for c in COEFFICIENTS for _ in prompts]
    @torch.no_grad()
    def ours_unsteered() -> torch.Tensor:
        return model.generate(**batch, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                              pad_token_id=tokenizer.pad_token_id)

    arms = {
        "unsteered": ours_unsteered,
        "extract": ours_extract,
        "generate": lambda: ours_generate(batch, [COEFFICIENTS[-1]] * len(prompts)),
        "sweep": lambda: ours_generate(sweep_rows, sweep_coefficients),
    }
    ours: dict[str, list[float]] = {name: [] for name in arms}
    first = REPEATS // 2
    for name, arm in arms.items():
        ours[name] += timed(arm, max(1, first if name != "sweep" else first // 2 or 1))
    ours_tokens = ours_generate(batch, [COEFFICIENTS[-1]] * len(prompts))

    with tempfile.TemporaryDirectory() as tmp:
        vector_path = Path(tmp) / "vector.safetensors"
        save_file({str(k): v.contiguous() for k, v in vector.vectors.items()}, str(vector_path))
        peer_out, peer_info = client.run_job(client.embedded_spec(), [{
            "name": "bench", "repeats": REPEATS, "pairs": pairs, "layers": LAYERS, "batch_size": BATCH,
            "max_new_tokens": NEW_TOKENS, "coefficients": COEFFICIENTS, "vector": str(vector_path),
            "prompts": prompts}], threads=THREADS)
        for name, arm in arms.items():
            ours[name] += timed(arm, max(1, REPEATS - first if name != "sweep" else (REPEATS - first) // 2 or 1))
        llama = llamacpp_row(vector, prompts, Path(tmp))
    peers = peer_info["tasks"]["bench"]["medians"]
    width = batch["input_ids"].shape[1]
    same_tokens = {tool: float((ours_tokens[:, width:].float() == peer_out[f"{key}_tokens"][:, width:]).float().mean())
                   for tool, key in (("steering-vectors", "sv"), ("repeng", "repeng"))}
    rows = []
    labels = {
        "extract": f"extract mean-difference vector, {N_PAIRS} pairs, layers {LAYERS}, batch {BATCH}",
        "generate": f"steered greedy generation, {N_PROMPTS} prompts x {NEW_TOKENS} tokens, batch {N_PROMPTS}",
        "sweep": f"K={k} coefficient sweep of that generation (ours: one batch of {k * N_PROMPTS} rows)",
    }
    base_ours = statistics.median(ours["unsteered"])
    base_peers = peers["generate.unsteered"]
    rows.append({"row": f"unsteered greedy generation, same prompts and length (each stack's baseline: transformers "
                        f"{__import__('transformers').__version__} vs {peer_info['versions']['transformers']})",
                 "ours_s": base_ours, "steering-vectors_s": base_peers, "repeng_s": base_peers,
                 "fastest_peer": "(same stack)", "ratio": base_ours / base_peers})
    for name in ("extract", "generate", "sweep"):
        mine = statistics.median(ours[name])
        theirs = {tool: peers[f"{name}.{tool}"] for tool in ("steering-vectors", "repeng")}
        fastest = min(theirs, key=theirs.get)
        row = {"row": labels[name], "ours_s": mine, **{f"{t}_s": v for t, v in theirs.items()},
               "fastest_peer": fastest, "ratio": mine / theirs[fastest]}
        if name in ("generate", "sweep"):  # steering's own cost: each tool over its stack's unsteered generation
            runs = 1 if name == "generate" else k
            row["overhead"] = {"ours": mine / (runs * base_ours),
                               **{t: v / (runs * base_peers) for t, v in theirs.items()}}
        rows.append(row)
    write(rows, llama, peer_info, same_tokens)


def llamacpp_row(vector, prompts: list[str], tmp: Path) -> dict:
    binary = serve_check.llamacpp_binary()
    if not binary.exists():
        return {"note": "not built: ./just build-llamacpp"}
    path = export_llamacpp(vector, tmp / "cv.gguf", model_hint="llama")
    gguf = embedded_gguf()

    def run() -> None:
        for text in prompts:
            subprocess.run([str(binary), "-m", str(gguf), "-p", text, "-n", str(NEW_TOKENS), "--ignore-eos", "--temp",
                            "0", "-t", str(THREADS), "-no-cnv", "--no-display-prompt", "--no-warmup", "-c", "512",
                            "--control-vector-scaled", f"{path}:{COEFFICIENTS[-1]}"], capture_output=True, check=True)

    return {"seconds": statistics.median(timed(run, max(1, REPEATS // 2))),
            "note": f"{N_PROMPTS} sequential llama-completion processes (Q4_1, one prompt each, model load included)"}


def closing_note(rows: list[dict]) -> str:
    """Where we are slower than a peer, say why, computed from this run's rows alone: a steered row's ratio is
    (our unsteered / their unsteered generation) x (our steering overhead / theirs), so the note splits it into
    the stacks' share and steering's own share and names the larger."""
    baseline = rows[0]
    slower = [r for r in rows[1:] if r["ratio"] > 1.0]
    if not slower:
        return "Closing note: ours is at most 1.0x the fastest peer on every row."
    notes = []
    for row in slower:
        text = f"'{row['row'].split(',')[0]}' is {row['ratio']:.2f}x {row['fastest_peer']}"
        if "overhead" in row:
            over = row["overhead"]
            stack, hooks = baseline["ratio"], over["ours"] / over[row["fastest_peer"]]
            text += (f" = {stack:.2f}x from the stacks' unsteered generation (ours / theirs) x {hooks:.2f}x from "
                     f"steering's own cost (ours {over['ours']:.2f}x our unsteered generation, "
                     f"{row['fastest_peer']} {over[row['fastest_peer']]:.2f}x its own)")
            if abs(stack - 1) < 0.02 and abs(hooks - 1) < 0.02:
                text += "; both within 2% of 1: run-to-run noise"
            else:
                text += "; the larger share is " + ("the stack" if abs(stack - 1) > abs(hooks - 1) else
                                                     "our steering's own cost")
        notes.append(text)
    return "Closing note (computed from the rows above): " + "; ".join(notes) + "."


def write(rows: list[dict], llama: dict, peer_info: dict, same_tokens: dict[str, float]) -> None:
    out = REPO_ROOT / "out" / "bench"
    versions = peer_info["versions"]
    lines = [
        f"Peers benchmark, embedded default (SmolLM2-135M-Instruct fp32), {THREADS} threads each, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, medians of {REPEATS} repeats (sweeps: fewer) after a warm-up. "
        f"Ours: torch {torch.__version__}, transformers {__import__('transformers').__version__}; peers: "
        f"transformers {versions['transformers']}, steering-vectors {versions['steering-vectors']}, repeng "
        f"{versions['repeng']}. Ratio = ours / fastest peer (goal <= 1.0).",
        "",
        "| row | ours s | steering-vectors s | repeng s | ratio | fastest peer |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['row']} | {r['ours_s']:.2f} | {r['steering-vectors_s']:.2f} | {r['repeng_s']:.2f} | "
              f"{r['ratio']:.2f} | {r['fastest_peer']} |" for r in rows]
    if "seconds" in llama:
        lines.append(f"| llama.cpp control vector, same prompts and length (informational: {llama['note']}) | "
                     f"- | - | - | {llama['seconds']:.2f} s | - |")
    else:
        lines.append(f"| llama.cpp (informational) | {llama['note']} | | | | |")
    overheads = [r for r in rows if "overhead" in r]
    if overheads:
        lines += ["", "Cost over each stack's own unsteered generation (K runs' worth for the sweep; ours: one batch):",
                  "", "| row | ours | steering-vectors | repeng |", "|---|---|---|---|"]
        lines += [f"| {r['row'].split(',')[0]} | {r['overhead']['ours']:.2f}x | "
                  f"{r['overhead']['steering-vectors']:.2f}x | {r['overhead']['repeng']:.2f}x |" for r in overheads]
    lines += ["", closing_note(rows)]
    lines += ["", "Steered greedy tokens identical to ours (fraction of generated tokens): " + ", ".join(
        f"{tool} {same:.0%}" for tool, same in same_tokens.items()) + "."]
    print("\n".join(lines))
    if QUICK:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.md").write_text("\n".join(lines) + "\n")
    (out / "peers.json").write_text(json.dumps({"rows": rows, "llama.cpp": llama, "peers": peer_info,
                                                "same_tokens": same_tokens}, indent=2))


if __name__ == "__main__":
    main()
