"""The LLM judge (lib.kits.judge) against an in-process OpenAI-compatible stub server: scores parsed from replies,
replies cached by request hash, malformed replies counted with their raw text, 5xx retried, a server dying mid-run
(finished judgements kept, the rest reported, a re-run sends only those), an interrupted call, requests that overlap,
and bad input refused before any request. The real server (llama-server) is tests/test_judge_server.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from lib.kits.judge import JudgeError, LlamaServer, LLMJudge, NumberInRange

RUBRIC = "Prompt: {prompt}\nText: {text}"
PROMPTS = ["Say hi", "Say bye", "Count"]


class Stub:
    """A chat-completions endpoint in a thread. `respond(text, n)` (the judged text, the request's 1-based number)
    returns ("reply", content) | ("status", code) | ("raw", body) | ("die",): the last drops the connection without
    a reply and shuts the server down, as a crash would. Records every request, and the most requests in flight at
    once (`delay` seconds each)."""

    def __init__(self, respond: Callable[[str, int], tuple] | None = None, delay: float = 0.0, port: int = 0):
        self.respond = respond or (lambda text, n: ("reply", str(len(text) % 11)))
        self.delay = delay
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                    n = len(stub.requests)
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:  # in flight until its reply is decided (the next request may arrive as soon as it is sent)
                    time.sleep(stub.delay)
                    text = body["messages"][-1]["content"].split("\nText: ", 1)[1]
                    action = stub.respond(text, n)
                finally:
                    with stub.lock:
                        stub.in_flight -= 1
                if action[0] == "die":
                    self.close_connection = True
                    threading.Thread(target=stub.stop).start()
                    return
                if action[0] == "status":
                    self.send_error(action[1])
                    return
                payload = action[1].encode() if action[0] == "raw" else json.dumps(
                    {"id": f"c{n}", "object": "chat.completion", "model": body["model"],
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": action[1]}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.stopped = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        with self.lock:
            if self.stopped:
                return
            self.stopped = True
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Stub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def judge_for(stub: Stub, tmp_path, **kwargs: Any) -> LLMJudge:
    settings: dict[str, Any] = {"cache": tmp_path / "judge-cache", "progress": False, "retries": 1, "backoff": 0.01,
                                "timeout": 10.0, "concurrency": 2} | kwargs
    return LLMJudge(stub.url, "stub-model", RUBRIC, **settings)


def cached_entries(tmp_path) -> int:
    return len(list((tmp_path / "judge-cache").rglob("*.json")))


def test_scores_are_parsed_from_replies_of_a_well_formed_request(tmp_path):
    replies = {"good": "9", "fair": "Score: 2/10", "fine": "7.5 - readable"}
    with Stub(lambda text, n: ("reply", replies[text])) as stub:
        judge = judge_for(stub, tmp_path, max_tokens=5, extra={"seed": 3})
        scores = judge(PROMPTS, ["good", "fair", "fine"])
    assert scores.dtype == np.float64 and scores.tolist() == [9.0, 2.0, 7.5]
    assert judge.report.scored == 3 and judge.report.fetched == 3 and judge.report.failed == 0
    request = next(r for r in stub.requests if r["body"]["messages"][-1]["content"].endswith("good"))
    assert request["path"] == "/v1/chat/completions"
    assert request["body"] == {"model": "stub-model", "temperature": 0.0, "max_tokens": 5, "seed": 3,
                               "messages": [{"role": "user", "content": "Prompt: Say hi\nText: good"}]}
    assert "Authorization" not in request["headers"]


def test_a_second_call_is_served_from_the_cache_and_only_an_identical_request_hits(tmp_path):
    texts = ["alpha", "beta", "gamma"]
    with Stub() as stub:
        judge = judge_for(stub, tmp_path)
        first = judge(PROMPTS, texts)
        assert len(stub.requests) == 3 and cached_entries(tmp_path) == 3
        second = judge(PROMPTS, texts)
        assert len(stub.requests) == 3  # not one request more
        assert judge.report.cached == 3 and judge.report.requests == 0 and second.tolist() == first.tolist()
        judge_for(stub, tmp_path, max_tokens=9)(PROMPTS, texts)  # another request: sent again
        assert len(stub.requests) == 6
        judge_for(stub, tmp_path)(PROMPTS * 2, texts * 2)  # identical requests in one call are sent once
        assert len(stub.requests) == 6
        judge_for(stub, tmp_path)(["Say hi"] * 2, ["delta", "delta"])
        assert len(stub.requests) == 7
    with Stub() as elsewhere:  # the same request at another host:port is the same request
        moved = judge_for(elsewhere, tmp_path)
        assert moved(PROMPTS, texts).tolist() == first.tolist() and elsewhere.requests == []


def test_a_malformed_reply_is_a_counted_parse_failure_with_its_raw_text(tmp_path, capsys):
    replies = {"good": "8", "vague": "I cannot rate this text.", "huge": "42", "blank": ""}
    with Stub(lambda text, n: ("reply", replies[text])) as stub:
        judge = judge_for(stub, tmp_path)
        scores = judge(["p"] * 4, ["good", "vague", "huge", "blank"])
        assert scores[0] == 8.0 and np.isnan(scores[1:]).all()
        report = judge.report
        assert report.scored == 1 and report.request_failures == []
        assert [(f.index, f.kind, f.reply) for f in report.parse_failures] == [
            (1, "parse", "I cannot rate this text."), (2, "parse", "42"), (3, "parse", "")]
        assert "no number" in report.parse_failures[0].error and "outside [0, 10]" in report.parse_failures[1].error
        shown = capsys.readouterr().err  # a call with failures shows its report
        assert "3 parse failures" in shown and "I cannot rate this text." in shown
        with pytest.raises(JudgeError, match="3 of 4 texts got no score") as raised:
            judge_for(stub, tmp_path, strict=True)(["p"] * 4, ["good", "vague", "huge", "blank"])
        assert len(raised.value.report.parse_failures) == 3
        assert len(stub.requests) == 4  # the raw replies were cached: a stricter call re-reads them
        rescored = judge_for(stub, tmp_path, parse=NumberInRange(0, 100))(["p"] * 4, ["good", "vague", "huge", "blank"])
        assert rescored[2] == 42.0 and len(stub.requests) == 4  # a new parser, no new request
        nothing = judge_for(stub, tmp_path, parse=lambda reply: float("nan"))
        assert np.isnan(nothing(["p"] * 4, ["good", "vague", "huge", "blank"])).all()
        assert [f.error for f in nothing.report.parse_failures] == ["the parser returned nan"] * 4


def test_a_body_that_is_not_a_chat_completion_is_a_request_failure_and_not_cached(tmp_path):
    with Stub(lambda text, n: ("raw", "<html>gateway says hello</html>") if text == "odd" else ("reply", "5")) as stub:
        judge = judge_for(stub, tmp_path)
        scores = judge(["p", "p"], ["odd", "even"])
        assert np.isnan(scores[0]) and scores[1] == 5.0
        (failure,) = judge.report.request_failures
        assert failure.index == 0 and "not a chat completion" in failure.error and "gateway" in failure.reply
        judge(["p", "p"], ["odd", "even"])
        assert len(stub.requests) == 3  # asked again, not answered from the cache


def test_server_errors_are_retried_client_errors_are_not(tmp_path):
    def respond(text: str, n: int) -> tuple:
        if text == "flaky":
            return ("status", 503) if n <= 2 else ("reply", "6")
        return ("status", 400 if text == "refused" else 500)

    with Stub(respond) as stub:
        judge = judge_for(stub, tmp_path, retries=2, concurrency=1)
        assert judge(["p"], ["flaky"]).tolist() == [6.0]
        assert judge.report.attempts == 3 and judge.report.requests == 1 and len(stub.requests) == 3
        scores = judge(["p", "p"], ["refused", "broken"])
        assert np.isnan(scores).all()
        refused, broken = judge.report.request_failures
        assert "HTTP 400" in refused.error and "not retried" in refused.error
        assert "HTTP 500" in broken.error and "after 3 attempts" in broken.error
        assert judge.report.attempts == 1 + 3 and len(stub.requests) == 3 + 4


def test_a_server_dying_mid_run_keeps_finished_judgements_and_a_rerun_sends_only_the_rest(tmp_path):
    texts = [f"text {i}" for i in range(10)]
    prompts = ["p"] * 10
    with Stub(lambda text, n: ("reply", "4") if n <= 4 else ("die",)) as stub:
        judge = judge_for(stub, tmp_path, concurrency=3, retries=2)
        scores = judge(prompts, texts)
        port = stub.port
    report = judge.report
    assert report.fetched == 4 and np.isfinite(scores).sum() == 4 and (scores[np.isfinite(scores)] == 4).all()
    assert len(report.request_failures) == 6 and report.fetched + len(report.request_failures) == 10
    assert {f.index for f in report.request_failures} == set(np.flatnonzero(np.isnan(scores)).tolist())
    assert cached_entries(tmp_path) == 4  # what finished is on disk
    with Stub(lambda text, n: ("reply", "7"), port=port) as restarted:
        again = judge(prompts, texts)
        assert len(restarted.requests) == 6 and judge.report.cached == 4 and judge.report.fetched == 6
    assert np.isfinite(again).all() and again[np.isnan(scores)].tolist() == [7.0] * 6


def test_an_interrupted_call_keeps_finished_judgements(tmp_path):
    """Ctrl-C (here raised by the parser at the third reply) stops new requests; replies that arrived stay cached."""
    seen = []

    def parse(reply: str) -> float:
        seen.append(reply)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return 1.0

    texts = [f"text {i}" for i in range(8)]
    with Stub(delay=0.1) as stub:
        with pytest.raises(KeyboardInterrupt):
            judge_for(stub, tmp_path, concurrency=1, parse=parse)(["p"] * 8, texts)
        assert len(stub.requests) <= 4  # the request in flight at the interrupt, no more
        time.sleep(0.3)  # let it finish and be cached
        kept = cached_entries(tmp_path)
        assert kept >= 3
        judge = judge_for(stub, tmp_path)
        judge(["p"] * 8, texts)
        assert judge.report.cached == kept and judge.report.requests == 8 - kept
        assert len(stub.requests) == len(set(json.dumps(r["body"]) for r in stub.requests)) == 8  # each sent once


def test_concurrent_requests_overlap(tmp_path):
    texts = [f"text {i}" for i in range(8)]
    with Stub(delay=0.2) as stub:
        judge_for(stub, tmp_path / "a", concurrency=4)(["p"] * 8, texts)
        assert stub.max_in_flight > 1
    with Stub(delay=0.05) as serial:
        judge_for(serial, tmp_path / "b", concurrency=1)(["p"] * 8, texts)
        assert serial.max_in_flight == 1


def test_bad_input_is_refused_before_any_request(tmp_path):
    with Stub() as stub:
        for kwargs, message in [({"rubric": "Rate this: {text}"}, r"lacks \{prompt\}"),
                                ({"rubric": "{prompt} {text} as {\"score\": n}"}, "placeholders"),
                                ({"rubric": "{prompt} {text} {"}, "literal braces"),
                                ({"base_url": "127.0.0.1:8080/v1"}, "not an http"),
                                ({"base_url": "ftp://host/v1"}, "not an http"),
                                ({"base_url": "http://host:port/v1"}, "base_url"),
                                ({"concurrency": 0}, "concurrency=0"),
                                ({"retries": -1}, "retries"),
                                ({"score_range": (10, 0)}, "low < high"),
                                ({"extra": {"model": "x"}}, "judge's own parameters"),
                                ({"model": ""}, "model")]:
            settings = {"base_url": stub.url, "model": "m", "rubric": RUBRIC, "cache": tmp_path} | kwargs
            with pytest.raises(ValueError, match=message):
                LLMJudge(**settings)
        judge = judge_for(stub, tmp_path)
        for prompts, texts, error, message in [([], [], ValueError, "texts is empty"),
                                               (["a"], ["x", "y"], ValueError, "1 prompts for 2 texts"),
                                               ("a", ["x"], TypeError, "list of strings"),
                                               (["a", "b"], ["x", None], TypeError, r"texts\[1\] is NoneType")]:
            with pytest.raises(error, match=message):
                judge(prompts, texts)
        assert stub.requests == []


def test_the_api_key_goes_in_the_header_and_nowhere_else(tmp_path, monkeypatch):
    with Stub() as stub:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
        judge = judge_for(stub, tmp_path)
        judge(["p"], ["one"])
        judge_for(stub, tmp_path, api_key="sk-given")(["p"], ["two"])
        monkeypatch.delenv("OPENAI_API_KEY")
        judge_for(stub, tmp_path)(["p"], ["three"])
    assert [r["headers"].get("Authorization") for r in stub.requests] == ["Bearer sk-from-env", "Bearer sk-given",
                                                                         None]
    assert "sk-" not in repr(judge_for(stub, tmp_path, api_key="sk-given"))
    assert not any("sk-" in path.read_text() for path in (tmp_path / "judge-cache").rglob("*.json"))


def test_the_judge_is_a_generated_text_score(tmp_path):
    """It plugs into the evaluation kit as any (prompts, texts) -> values callable."""
    from conftest import ByteTokenizer

    from lib.kits.evaluation import GeneratedText, unsteered
    from lib.models import tiny_model

    with Stub(lambda text, n: ("reply", str(min(len(text), 10)))) as stub:
        scorer = GeneratedText(["Hi", "Go"], {"judge": judge_for(stub, tmp_path)}, main="judge", max_new_tokens=3)
        out = scorer(tiny_model("llama", seed=7), ByteTokenizer(chat=True), [unsteered()], batch_size=2)
    texts = scorer.texts["unsteered"]
    assert out["judge"].shape == (1, 2) and out["judge"][0].tolist() == [float(min(len(t), 10)) for t in texts]
    assert sorted(r["body"]["messages"][-1]["content"] for r in stub.requests) == sorted(
        RUBRIC.format(prompt=p, text=t) for p, t in zip(["Hi", "Go"], texts, strict=True))


def test_a_missing_llama_server_binary_names_the_build(tmp_path):
    with pytest.raises(FileNotFoundError, match="./just build-llamacpp"):
        LlamaServer(tmp_path / "llama-server", tmp_path / "model.gguf").start()
