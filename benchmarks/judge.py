"""The LLM judge's throughput against a local llama-server; writes out/bench/judge.{md,json}.

Row (issue 27, "One evaluation kit": "the judge client: judged texts per second, concurrent vs one at a time, against
the local server"): 16 texts judged by `lib.kits.judge.LLMJudge` with concurrency 4 vs 1, against llama.cpp's
`llama-server` serving the embedded default's GGUF with 4 slots. Every call starts from an empty cache and judges
texts no earlier call sent (a run number in each text), so every text is a request; `ignore_eos` makes every reply
exactly `MAX_TOKENS` tokens, so both arms decode the same work. A second row times the client alone: the same calls
against an in-process endpoint that answers after a fixed delay (a remote API's round trip), where overlapping requests
is all concurrency can win. Alternated pairs, as every timed row of ./just bench (benchmarks/steering.py's `paired`).
Not in ./just bench: the first row needs the built binary (./just bench-judge builds it; without it that row is
skipped with a message).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.steering import REPEATS, Timing, paired  # noqa: E402
from lib.io import REPO_ROOT, atomic_write  # noqa: E402
from lib.kits.judge import EXAMPLE_RUBRIC, LlamaServer, LLMJudge  # noqa: E402
from lib.models import embedded_gguf  # noqa: E402
from peers.serve_check import LLAMACPP_VERSION, llamacpp_binary  # noqa: E402

N_TEXTS = 16
MAX_TOKENS = 8
SLOTS = 4
LATENCY = 0.1  # seconds per reply of the fixed-latency endpoint
THREADS = int(os.environ.get("BENCH_JUDGE_THREADS", "1"))  # on a busy CPU, 2+ threads spin at barriers
REQUESTS = [("What is the capital of France?", "Paris is the capital of France."),
            ("Name a primary colour.", "Red."),
            ("How many legs does a spider have?", "A spider has eight legs."),
            ("Translate 'hello' into Spanish.", "Hola."),
            ("What is 2 + 2?", "Twenty-two."),
            ("Give a synonym of 'happy'.", "Sad."),
            ("Summarise: the meeting moved to Friday.", "The meeting is now on Friday."),
            ("Write a greeting.", "Good morning, everyone!")]


@contextmanager
def fixed_latency_endpoint(latency: float = LATENCY) -> Iterator[str]:
    """An OpenAI-compatible chat endpoint in a thread that answers "5" after `latency` seconds; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(latency)
            payload = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "5"}}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def timed(base_url: str, model: str, prompts: list[str], texts: list[str], failures: dict[int, list[int]],
          **request: Any) -> Timing:
    """Concurrency 1 (reference) vs SLOTS (measured), alternated; every call from an empty cache on new texts."""
    calls = itertools.count()

    def judge_with(concurrency: int) -> Callable[[], None]:
        def arm() -> None:
            run = next(calls)
            with tempfile.TemporaryDirectory() as cache:
                judge = LLMJudge(base_url, model, EXAMPLE_RUBRIC, cache=cache, concurrency=concurrency,
                                 progress=False, **request)
                judge(prompts, [f"{t} [run {run}]" for t in texts])
            assert judge.report is not None and not judge.report.request_failures, str(judge.report)
            assert judge.report.requests == len(texts), str(judge.report)
            failures[concurrency].append(len(judge.report.parse_failures))
        return arm

    return paired(judge_with(1), judge_with(SLOTS))


def table_row(timing: Timing, name: str, target: str, n: int) -> dict[str, Any]:
    row = timing.row(name, target)
    return row | {"serial_texts_per_s": n / row["reference_s"], "concurrent_texts_per_s": n / row["measured_s"]}


def main() -> int:
    prompts = [REQUESTS[i % len(REQUESTS)][0] for i in range(N_TEXTS)]
    texts = [f"{REQUESTS[i % len(REQUESTS)][1]} ({i})" for i in range(N_TEXTS)]
    rows, notes = [], []
    binary = llamacpp_binary().with_name("llama-server")
    if binary.exists():
        failures: dict[int, list[int]] = {1: [], SLOTS: []}
        with LlamaServer(binary, embedded_gguf(), parallel=SLOTS, context=SLOTS * 1024, threads=THREADS,
                         alias="smollm2") as server:
            timing = timed(server.base_url, server.alias, prompts, texts, failures, max_tokens=MAX_TOKENS,
                           extra={"ignore_eos": True})
        rows.append(table_row(timing, f"llama-server ({SLOTS} slots, {THREADS} threads, {MAX_TOKENS} reply tokens): "
                                      f"{N_TEXTS} texts, concurrency {SLOTS} / 1", "< 1 (concurrent faster)", N_TEXTS))
        rows[-1] |= {"parse_failures_serial": failures[1], "parse_failures_concurrent": failures[SLOTS]}
        notes.append(f"Parse failures per call against llama-server (the 135M model's replies; counted, not timed): "
                     f"serial {failures[1]}, concurrent {failures[SLOTS]}.")
    else:
        message = f"llama-server row skipped: {binary} is missing; build it with ./just build-llamacpp"
        print(message)
        notes.append(message + ".")
    with fixed_latency_endpoint() as url:
        timing = timed(url, "stub", prompts, texts, {1: [], SLOTS: []})
    rows.append(table_row(timing, f"fixed-latency endpoint ({LATENCY:g} s per reply): {N_TEXTS} texts, concurrency "
                                  f"{SLOTS} / 1", "<= 0.35 (requests overlap)", N_TEXTS))
    lines = ["| comparison | serial s | concurrent s | serial texts/s | concurrent texts/s | ratio (median of pairs) | "
             "pair ratios min-max | target |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {row['comparison']} | {row['reference_s']:.3f} | {row['measured_s']:.3f} | "
              f"{row['serial_texts_per_s']:.2f} | {row['concurrent_texts_per_s']:.2f} | {row['ratio']:.3f} | "
              f"{row['ratio_min']:.3f}-{row['ratio_max']:.3f} | {row['target']} |" for row in rows]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    header = (f"LLM judge (lib.kits.judge): judged texts per second, concurrency {SLOTS} vs 1; llama.cpp's "
              f"llama-server (llama-cpp-python {LLAMACPP_VERSION} sdist) serving the embedded default's GGUF "
              f"({embedded_gguf().name}); {N_TEXTS} texts per call, fresh cache per call; {os.cpu_count()} CPU cores, "
              f"load average {load} at the end; {time.strftime('%Y-%m-%d %H:%M')}, {REPEATS} alternated pairs\n\n")
    text = header + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"
    out = REPO_ROOT / "out" / "bench"
    atomic_write(out / "judge.md", text)
    atomic_write(out / "judge.json", json.dumps(rows, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
