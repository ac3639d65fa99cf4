"""An LLM judge over any OpenAI-compatible endpoint: a score per text from a rubric you write, and a record of what
happened to every text.

`LLMJudge(base_url, model, rubric)` is a `(prompts, texts) -> [N] scores` callable, so it plugs into the evaluation
kit as any other score: `GeneratedText(prompts, {"judge": judge}, main="judge")`. It POSTs one chat request per
text to `{base_url}/chat/completions` (OpenAI's format: llama.cpp's `llama-server`, vLLM, Ollama, a hosted API),
reads a score from the reply with a parser you can replace (default: the first number in the reply, which must lie
in `score_range`), and returns NaN where no score could be had.

Why (issue 27, "One evaluation kit": "an LLM judge over any OpenAI-compatible endpoint with a rubric, responses cached
by request hash, concurrent, retried, parse failures counted and shown, never silently dropped"):
- **cached by request hash**: each reply is one JSON file under `cache`, named by the sha256 of the exact request
  (the URL's path, model, messages and sampling fields; not the host, not the API key) and written atomically as
  soon as it arrives, so an interrupted run keeps its finished judgements and a re-run sends only the missing ones.
  The raw reply is cached, not the score: a new parser re-reads cached replies without a request.
- **concurrent**: `concurrency` requests in flight (a thread pool); identical requests in one call are sent once.
- **retried**: connection errors, timeouts, HTTP 408/429/5xx are retried `retries` times with exponential backoff;
  other 4xx and a body that is not a chat completion are not (they would fail again), and are reported.
- **never silently dropped**: after every call `judge.report` counts texts read from the cache, fetched, scored,
  parse failures (with the raw reply kept) and request failures (with the error); a failed text is NaN in the
  output *and* listed in the report, a call with failures prints the report, and `strict=True` raises instead.

`LlamaServer` runs llama.cpp's `llama-server` on a local port for a judge on this machine (the slow test tier,
tests/test_judge_server.py, and benchmarks/judge.py use it with the embedded default's GGUF).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import math
import os
import re
import socket
import string
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from tqdm.auto import tqdm

from lib.io import write_json

EXAMPLE_RUBRIC = ("Rate how helpful the reply is to the request, from 0 (useless) to 10 (excellent).\n\n"
                  "Request: {prompt}\n\nReply: {text}\n\nAnswer with the number only.")
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})  # and every other 5xx
RESERVED_FIELDS = ("model", "messages", "temperature", "max_tokens", "stream", "n")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class NumberInRange:
    """The default parser: the first number in the reply ("7", "Score: 7/10", "7.5 - good"), which must lie in
    [low, high]. No number, or a first number outside the range, raises ValueError: a parse failure. Replace it with
    any `reply -> float` callable (raise, or return NaN, for a reply without a score)."""

    low: float = 0.0
    high: float = 10.0

    def __call__(self, reply: str) -> float:
        match = _NUMBER.search(reply)
        if match is None:
            raise ValueError("no number in the reply")
        value = float(match.group())
        if not self.low <= value <= self.high:
            raise ValueError(f"the first number, {match.group()}, is outside [{self.low:g}, {self.high:g}]")
        return value


@dataclass(frozen=True)
class Failure:
    """A text without a score. `kind` is "parse" (a reply came, the parser found no score in it: `reply` is the raw
    reply text) or "request" (no usable reply after the retries: `error` says why; `reply` holds the raw body when
    the server answered with something that is not a chat completion)."""

    index: int
    kind: str
    error: str
    reply: str | None = None


@dataclass
class JudgeReport:
    """What one call did, per text: `cached` + `fetched` + request failures = `n`; `scored` + parse failures +
    request failures = `n`. `requests` counts distinct requests sent (identical texts share one), `attempts` every
    HTTP attempt, retries included."""

    n: int
    cached: int
    fetched: int
    scored: int
    requests: int
    attempts: int
    parse_failures: list[Failure]
    request_failures: list[Failure]
    seconds: float

    @property
    def failed(self) -> int:
        return len(self.parse_failures) + len(self.request_failures)

    def summary(self) -> str:
        return (f"judge: {self.n} texts, {self.scored} scored, {len(self.parse_failures)} parse failures, "
                f"{len(self.request_failures)} request failures (from cache {self.cached}, fetched {self.fetched}; "
                f"{self.requests} requests in {self.attempts} attempts, {self.seconds:.1f} s)")

    def __str__(self) -> str:
        lines = [self.summary()]
        for failures in (self.parse_failures, self.request_failures):
            for failure in failures[:5]:
                reply = "" if failure.reply is None else f"; reply {failure.reply[:200]!r}"
                lines.append(f"  text {failure.index}: {failure.kind} failure: {failure.error}{reply}")
            if len(failures) > 5:
                lines.append(f"  ... and {len(failures) - 5} more {failures[0].kind} failures (judge.report)")
        return "\n".join(lines)


class JudgeError(RuntimeError):
    """Raised by a `strict` judge when any text got no score; `.report` is the call's report (the scores of the
    other texts are cached: a re-run sends only the failed requests)."""

    def __init__(self, message: str, report: JudgeReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class _Outcome:
    """One request's result from a worker thread: a reply (cached on arrival) or an error."""

    attempts: int
    reply: str | None = None
    error: str | None = None
    body: str | None = None


@dataclass
class LLMJudge:
    """Score texts with a model behind an OpenAI-compatible chat endpoint. `judge(prompts, texts)` -> [N] float64
    scores, NaN where none could be had; `judge.report` then says what happened to each text (see the module).

    base_url: the API root the endpoint hangs under, e.g. "http://127.0.0.1:8080/v1" (POSTs to
        `{base_url}/chat/completions`). model: the model name the server expects.
    rubric: the user message, a template with `{prompt}` and `{text}` (literal braces doubled: `{{`, `}}`);
        `system` is an optional system message.
    parse: `reply -> float` (raise or return NaN for no score); default `NumberInRange(*score_range)`.
    api_key: sent as a bearer token; default the OPENAI_API_KEY environment variable, else none (local servers).
    max_tokens, temperature, extra: the sampling fields of the request (`extra`, e.g. {"seed": 0, "stop": ["\\n"]},
        joins the request body); all are part of the cache key.
    concurrency: requests in flight. retries: further attempts after a connection error, timeout or HTTP
        408/429/5xx, waiting backoff * 2**k seconds before attempt k+1. timeout: seconds per attempt.
    cache: the folder of cached replies (default <STEERLAB_CACHE>/judge). strict: raise `JudgeError` when any text
        got no score (the report is on the error). progress: a progress bar for the requests, and the report's
        summary line after each call (a call with failures always prints its report).
    """

    base_url: str
    model: str
    rubric: str
    score_range: tuple[float, float] = (0.0, 10.0)
    parse: Callable[[str], float] | None = None
    system: str | None = None
    api_key: str | None = field(default=None, repr=False)
    max_tokens: int = 8
    temperature: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    concurrency: int = 4
    retries: int = 3
    backoff: float = 1.0
    timeout: float = 120.0
    cache: str | Path | None = None
    strict: bool = False
    progress: bool = True
    report: JudgeReport | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url) if isinstance(self.base_url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
                or parts.fragment:
            raise ValueError(f"base_url={self.base_url!r} is not an http(s) URL of an API root: give e.g. "
                             "'http://127.0.0.1:8080/v1' (the judge POSTs to {base_url}/chat/completions)")
        try:
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError as error:
            raise ValueError(f"base_url={self.base_url!r}: {error}") from None
        self.base_url = self.base_url.rstrip("/")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model={self.model!r}: give the model name the server expects (llama-server accepts "
                             "any name, e.g. its --alias)")
        _check_rubric(self.rubric)
        low, high = self.score_range
        if not low < high:
            raise ValueError(f"score_range={self.score_range!r} must be (low, high) with low < high")
        if self.parse is None:
            self.parse = NumberInRange(float(low), float(high))
        elif not callable(self.parse):
            raise TypeError(f"parse={self.parse!r} must be a callable reply -> float")
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ValueError(f"concurrency={self.concurrency!r} must be an integer >= 1 (1: one request at a time)")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries={self.retries!r} must be an integer >= 0 (0: no retry)")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens={self.max_tokens!r} must be an integer >= 1")
        for name in ("backoff", "timeout", "temperature"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0 or \
                    (name == "timeout" and value == 0):
                raise ValueError(f"{name}={value!r} must be a finite number >= 0" + (" (> 0)" if name == "timeout"
                                                                                      else ""))
        if not isinstance(self.extra, dict):
            raise TypeError(f"extra={self.extra!r} must be a dict of further request fields, e.g. {{'seed': 0}}")
        reserved = sorted(set(self.extra) & set(RESERVED_FIELDS))
        if reserved:
            raise ValueError(f"extra={self.extra!r} sets {reserved}: use the judge's own parameters (model, rubric, "
                             "system, temperature, max_tokens); stream and n are fixed (one whole reply per text)")

    # ------------------------------------------------------------------------------------------ requests and cache

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/chat/completions"

    def cache_folder(self) -> Path:
        if self.cache is not None:
            return Path(self.cache)
        from lib.models import cache_dir  # heavy (torch); only when no folder was given

        return cache_dir() / "judge"

    def messages(self, prompt: str, text: str) -> list[dict[str, str]]:
        user = {"role": "user", "content": self.rubric.format(prompt=prompt, text=text)}
        return [user] if self.system is None else [{"role": "system", "content": self.system}, user]

    def request_body(self, prompt: str, text: str) -> dict[str, Any]:
        return {"model": self.model, "messages": self.messages(prompt, text), "temperature": self.temperature,
                "max_tokens": self.max_tokens, **self.extra}

    def request_key(self, prompt: str, text: str) -> str:
        """sha256 of the exact request: the URL's path and the body (model, messages, sampling fields)."""
        return _key(urlsplit(self.endpoint).path, self.request_body(prompt, text))

    def cache_path(self, prompt: str, text: str) -> Path:
        """Where the reply for (prompt, text) is (or will be) cached."""
        return self._entry(self.request_key(prompt, text))

    def _entry(self, key: str) -> Path:
        return self.cache_folder() / key[:2] / f"{key}.json"

    def _read(self, key: str) -> str | None:
        path = self._entry(key)
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):  # missing (or unreadable: fetched again and rewritten)
            return None
        reply = entry.get("reply") if isinstance(entry, dict) else None
        return reply if isinstance(reply, str) else None

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self.api_key if self.api_key is not None else os.environ.get("OPENAI_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _fetch(self, key: str, body: dict[str, Any]) -> _Outcome:
        """Send one request with retries; a reply is cached the moment it arrives (an interrupted run keeps it)."""
        data = json.dumps(body).encode()
        headers = self._headers()
        # a local server is never reached through a proxy from the environment
        handlers = [urllib.request.ProxyHandler({})] if urlsplit(self.endpoint).hostname in _LOOPBACK else []
        opener = urllib.request.build_opener(*handlers)
        last = ""
        attempts = 0
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            attempts += 1
            started = time.perf_counter()
            try:
                request = urllib.request.Request(self.endpoint, data=data, headers=headers, method="POST")
                with opener.open(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as error:
                try:
                    detail = _text(error.read())[:500]
                except (OSError, http.client.HTTPException):
                    detail = ""
                last = f"HTTP {error.code} {error.reason}: {detail}".rstrip(": ")
                if error.code in RETRY_STATUS or error.code >= 500:
                    continue
                return _Outcome(attempts, error=f"{last} (not retried: the same request would fail again)")
            except (OSError, http.client.HTTPException) as error:  # refused, reset, timed out, cut off mid-reply
                reason = getattr(error, "reason", None) or error
                last = f"{type(error).__name__}: {reason}"
                continue
            text = _text(raw)
            try:
                response_json = json.loads(text)
                reply = response_json["choices"][0]["message"]["content"]
                if reply is not None and not isinstance(reply, str):
                    raise TypeError(f"content is {type(reply).__name__}")
            except (ValueError, KeyError, IndexError, TypeError) as error:
                return _Outcome(attempts, error=f"the reply is not a chat completion ({type(error).__name__}: "
                                                f"{error})", body=text[:2000])
            reply = reply or ""  # content null (e.g. only a tool call): an empty reply, a parse failure
            write_json(self._entry(key), {"path": urlsplit(self.endpoint).path, "request": body, "reply": reply,
                                          "response": response_json,
                                          "seconds": round(time.perf_counter() - started, 4)})
            return _Outcome(attempts, reply=reply)
        return _Outcome(attempts, error=f"{last} (after {attempts} attempts)")

    # ------------------------------------------------------------------------------------------------- the call

    def __call__(self, prompts: Iterable[str], texts: Iterable[str]) -> np.ndarray:
        """[N] float64 scores, NaN where no score could be had; `self.report` says what happened to each text."""
        return self.run(prompts, texts)[0]

    def run(self, prompts: Iterable[str], texts: Iterable[str]) -> tuple[np.ndarray, JudgeReport]:
        """The scores and the report of one call (also kept as `self.report`)."""
        prompts, texts = _strings("prompts", prompts), _strings("texts", texts)
        if not texts:
            raise ValueError("texts is empty: give at least one text to judge")
        if len(prompts) != len(texts):
            raise ValueError(f"{len(prompts)} prompts for {len(texts)} texts: give one prompt per text (repeat a "
                             "prompt for several replies to it)")
        started = time.perf_counter()
        keys = [self.request_key(p, t) for p, t in zip(prompts, texts, strict=True)]
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        replies: dict[str, str] = {}
        for key in first:
            reply = self._read(key)
            if reply is not None:
                replies[key] = reply
        cached = set(replies)
        scores: dict[str, float | str] = {key: self._score(reply) for key, reply in replies.items()}
        outcomes: dict[str, _Outcome] = {}
        todo = [key for key in first if key not in replies]
        if todo:
            executor = ThreadPoolExecutor(max_workers=min(self.concurrency, len(todo)), thread_name_prefix="judge")
            bar = tqdm(total=len(todo), desc="judge", disable=not self.progress or len(todo) <= 1, leave=False)
            try:
                futures: dict[Future[_Outcome], str] = {}
                for key in todo:
                    i = first[key]
                    futures[executor.submit(self._fetch, key, self.request_body(prompts[i], texts[i]))] = key
                for future in as_completed(futures):
                    key = futures[future]
                    outcome = outcomes[key] = future.result()
                    if outcome.reply is not None:
                        replies[key] = outcome.reply
                        scores[key] = self._score(outcome.reply)
                    bar.update()
            except BaseException:  # Ctrl-C, or a parser's own error: no new requests; finished ones stay cached
                executor.shutdown(wait=False, cancel_futures=True)
                raise
            finally:
                bar.close()
            executor.shutdown(wait=True)
        out = np.full(len(texts), np.nan)
        parse_failures: list[Failure] = []
        request_failures: list[Failure] = []
        for i, key in enumerate(keys):
            if key not in replies:
                outcome = outcomes[key]
                request_failures.append(Failure(i, "request", outcome.error or "no reply", outcome.body))
            elif isinstance(scores[key], str):
                parse_failures.append(Failure(i, "parse", str(scores[key]), replies[key]))
            else:
                out[i] = float(scores[key])
        report = JudgeReport(
            n=len(texts), cached=sum(key in cached for key in keys),
            fetched=sum(key in replies and key not in cached for key in keys),
            scored=int(np.isfinite(out).sum()), requests=len(outcomes),
            attempts=sum(o.attempts for o in outcomes.values()), parse_failures=parse_failures,
            request_failures=request_failures, seconds=time.perf_counter() - started)
        self.report = report
        if report.failed and self.strict:
            raise JudgeError(f"{report}\nstrict=True: {report.failed} of {report.n} texts got no score. Parse "
                             "failures keep their raw reply (error.report.parse_failures): adjust the rubric or the "
                             "parser; request failures: call again (finished replies are cached, only the failed "
                             "requests are sent)", report)
        if report.failed:
            print(f"[judge] {report}", file=sys.stderr)
        elif self.progress:
            print(f"[judge] {report.summary()}", file=sys.stderr)
        return out, report

    def _score(self, reply: str) -> float | str:
        """The parsed score, or the reason there is none (a string)."""
        assert self.parse is not None
        try:
            value = float(self.parse(reply))
        except Exception as error:  # a user parser's own bug is reported the same way, with its type
            return str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
        return value if math.isfinite(value) else f"the parser returned {value}"


def _check_rubric(rubric: Any) -> None:
    if not isinstance(rubric, str):
        raise TypeError(f"rubric must be a string template with {{prompt}} and {{text}}, got {type(rubric).__name__}")
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(rubric) if name is not None}
    except ValueError as error:
        raise ValueError(f"rubric is not a valid template ({error}): write literal braces doubled, {{{{ and }}}}") \
            from None
    missing = [f"{{{name}}}" for name in ("prompt", "text") if name not in names]
    if missing:
        raise ValueError(f"rubric must contain {{prompt}} and {{text}} (where each judged prompt and text go); it "
                         f"lacks {' and '.join(missing)}. Example: lib.kits.judge.EXAMPLE_RUBRIC")
    other = sorted(names - {"prompt", "text"})
    if other:
        raise ValueError(f"rubric has placeholders {other} the judge cannot fill (only {{prompt}} and {{text}}): "
                         "write literal braces doubled, {{ and }}")


def _strings(name: str, values: Any) -> list[str]:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a list of strings, one per text; got {type(values).__name__}")
    values = list(values)
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise TypeError(f"{name}[{i}] is {type(value).__name__}, not a string")
    return values


def _key(path: str, body: dict[str, Any]) -> str:
    canonical = json.dumps({"path": path, "body": body}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------------- a local server


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class LlamaServer:
    """llama.cpp's `llama-server` serving one GGUF on 127.0.0.1: `with LlamaServer(binary, gguf) as server:
    LLMJudge(server.base_url, server.alias, rubric)`. `parallel` slots decode concurrent requests together (each
    gets context / parallel tokens). Its log is kept in memory (`log()`); `kill()` ends it abruptly (SIGKILL), as a
    crash would. The binary comes from `./just build-llamacpp` (peers/build_llamacpp.sh)."""

    binary: str | Path
    model: str | Path
    port: int = 0  # 0: a free port
    parallel: int = 4
    context: int = 4096
    threads: int | None = None
    alias: str = "local"
    startup_timeout: float = 300.0
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log: deque[str] = field(default_factory=lambda: deque(maxlen=400), init=False, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def log(self) -> str:
        return "".join(self._log)

    def start(self) -> LlamaServer:
        binary, model = Path(self.binary), Path(self.model)
        if not binary.exists():
            raise FileNotFoundError(f"{binary} is missing: build it with ./just build-llamacpp")
        if not model.exists():
            raise FileNotFoundError(f"model file {model} is missing")
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"llama-server already runs on port {self.port} (pid {self.process.pid})")
        self.port = self.port or free_port()
        command = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port), "-np",
                   str(self.parallel), "-c", str(self.context), "--alias", self.alias, "--no-warmup",
                   *(["-t", str(self.threads)] if self.threads else []), *self.extra_args]
        self._log.clear()
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        threading.Thread(target=self._drain, args=(self.process,), daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.process.returncode} while starting: "
                                   f"{' '.join(command)}\n{self.log()[-3000:]}")
            if self.healthy():
                return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"llama-server did not answer /health within {self.startup_timeout:.0f} s:\n"
                           f"{self.log()[-3000:]}")

    def _drain(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._log.append(_text(line))

    def healthy(self) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                return response.status == 200
        except (OSError, http.client.HTTPException):
            return False

    def kill(self) -> None:
        """End the server at once (SIGKILL): requests in flight are cut off, new ones refused."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
