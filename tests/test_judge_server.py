"""The LLM judge against a real OpenAI-compatible server: llama.cpp's `llama-server` serving the embedded default's
GGUF (tier `llamacpp`, ./just test-judge; needs ./just build-llamacpp). A 135M model judges poorly, so these check
the mechanics, not the judgements: every text gets a score or a counted parse failure, the cache answers a repeat
without a request, concurrent requests are decoded together in the server's slots, a reply cut short is a counted
parse failure with its raw text, and a server killed mid-run leaves its finished judgements cached, the rest
reported, and a restarted server is sent only those."""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.kits.judge import JudgeError, LlamaServer, LLMJudge  # noqa: E402
from peers import serve_check  # noqa: E402

SERVER = serve_check.llamacpp_binary().with_name("llama-server")
pytestmark = [pytest.mark.llamacpp,
              pytest.mark.skipif(not SERVER.exists(), reason="needs llama-server: ./just build-llamacpp")]

RUBRIC = ("Rate how well the reply answers the request, from 0 (not at all) to 10 (perfectly).\n\n"
          "Request: {prompt}\nReply: {text}\n\nAnswer with a single number.")
PAIRS = [("What is the capital of France?", "Paris is the capital of France."),
         ("What is the capital of France?", "Bananas are yellow."),
         ("Name a primary colour.", "Red."),
         ("Name a primary colour.", "I like trains very much."),
         ("How many legs does a spider have?", "A spider has eight legs."),
         ("How many legs does a spider have?", "Three, maybe four."),
         ("Translate 'hello' into Spanish.", "Hola."),
         ("Translate 'hello' into Spanish.", "The weather is mild today."),
         ("What is 2 + 2?", "4"),
         ("What is 2 + 2?", "Twenty-two."),
         ("Give a synonym of 'happy'.", "Glad."),
         ("Give a synonym of 'happy'.", "Sad.")]


def _server(**kwargs) -> LlamaServer:
    from lib.models import embedded_gguf

    return LlamaServer(SERVER, embedded_gguf(), parallel=4, context=4096, threads=1, alias="smollm2", **kwargs)


@pytest.fixture(scope="module")
def server():
    with _server() as running:
        yield running


def _judge(server: LlamaServer, cache: Path, **kwargs) -> LLMJudge:
    settings = {"rubric": RUBRIC, "cache": cache, "progress": False, "concurrency": 4, "retries": 1,
                "backoff": 0.2, "timeout": 120.0} | kwargs
    return LLMJudge(server.base_url, server.alias, **settings)


def _busy_slots(port: int, stop: threading.Event, seen: list[int]) -> None:
    """Poll /slots and record how many slots were decoding at once."""
    while not stop.is_set():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/slots", timeout=5) as response:
                seen.append(sum(bool(slot.get("is_processing")) for slot in json.loads(response.read())))
        except OSError:
            pass
        time.sleep(0.02)


def test_every_text_gets_a_score_or_a_counted_parse_failure_and_a_repeat_is_cached(server, tmp_path):
    prompts, texts = [p for p, _ in PAIRS], [t for _, t in PAIRS]
    judge = _judge(server, tmp_path / "cache")
    stop, seen = threading.Event(), []
    poller = threading.Thread(target=_busy_slots, args=(server.port, stop, seen), daemon=True)
    poller.start()
    try:
        scores = judge(prompts, texts)
    finally:
        stop.set()
        poller.join()
    report = judge.report
    print(report, "\nmost slots decoding at once:", max(seen, default=0))
    assert report.request_failures == [] and report.fetched == len(texts) == report.requests
    assert report.scored + len(report.parse_failures) == len(texts) == np.isfinite(scores).sum() + np.isnan(
        scores).sum()
    assert all(isinstance(f.reply, str) for f in report.parse_failures)
    assert np.isnan(scores).sum() == len(report.parse_failures)
    assert all(0 <= s <= 10 for s in scores[np.isfinite(scores)])
    assert max(seen, default=0) > 1  # the server decoded concurrent requests together
    again = judge(prompts, texts)
    assert judge.report.cached == len(texts) and judge.report.requests == 0 and judge.report.attempts == 0
    np.testing.assert_array_equal(again, scores)


def test_a_reply_cut_short_is_a_counted_parse_failure_with_its_raw_text(server, tmp_path):
    """max_tokens=1 cannot finish a JSON object: every reply is a parse failure, its raw text kept."""
    def json_score(reply: str) -> float:
        return float(json.loads(reply)["score"])

    prompts, texts = [p for p, _ in PAIRS[:4]], [t for _, t in PAIRS[:4]]
    judge = _judge(server, tmp_path / "cache", max_tokens=1, parse=json_score,
                   rubric=RUBRIC.replace("a single number.", 'JSON: {{"score": <0-10>}}'))
    scores = judge(prompts, texts)
    print(judge.report)
    assert np.isnan(scores).all() and judge.report.scored == 0 and judge.report.request_failures == []
    assert [f.index for f in judge.report.parse_failures] == [0, 1, 2, 3]
    assert all(isinstance(f.reply, str) and f.error for f in judge.report.parse_failures)
    with pytest.raises(JudgeError, match="4 of 4 texts got no score"):
        _judge(server, tmp_path / "cache", max_tokens=1, parse=json_score, strict=True,
               rubric=RUBRIC.replace("a single number.", 'JSON: {{"score": <0-10>}}'))(prompts, texts)


def test_a_server_killed_mid_run_keeps_finished_judgements_and_a_restart_fills_in_the_rest(tmp_path):
    prompts = [p for p, _ in PAIRS] * 2
    texts = [t for _, t in PAIRS] + [f"{t} (again)" for _, t in PAIRS]
    cache = tmp_path / "cache"
    running = _server().start()
    try:
        killed = threading.Event()

        def kill_after_three() -> None:  # SIGKILL once three judgements are on disk
            while not killed.is_set():
                if len(list(cache.rglob("*.json"))) >= 3:
                    running.kill()
                    killed.set()
                time.sleep(0.01)

        killer = threading.Thread(target=kill_after_three, daemon=True)
        killer.start()
        judge = _judge(running, cache, concurrency=2)
        scores = judge(prompts, texts)
        killed.set()
        killer.join()
        first = judge.report
        print("killed mid-run:", first)
        finished = len(list(cache.rglob("*.json")))
        assert 3 <= first.fetched == finished < len(texts)
        assert first.fetched + len(first.request_failures) == len(texts)
        failed = [f.index for f in first.request_failures]
        assert np.isnan(scores[failed]).all()
        assert all("attempts" in f.error or "Error" in f.error for f in first.request_failures)

        running.start()  # the same port, a fresh process
        again = judge(prompts, texts)
        print("after the restart:", judge.report)
        assert judge.report.cached == finished and judge.report.requests == len(failed)
        assert judge.report.request_failures == []
        done = [i for i in range(len(texts)) if i not in failed]
        np.testing.assert_array_equal(again[done], scores[done])  # the finished ones, as they were
        assert judge.report.scored + len(judge.report.parse_failures) == len(texts)
    finally:
        running.stop()
