"""Fixtures for the openai-SDK tests: a stdlib mock OpenAI upstream and the real gateway.

The mock (ThreadingHTTPServer on 127.0.0.1:0) answers chat completions (JSON, or SSE with
the usage chunk only when asked), embeddings, and a few scripted failures chosen by the
upstream model id the gateway sends. The gateway is the binary named by SWITCHYARD_BIN
(default target/debug/switchyard), started with a temporary config on a free port;
readiness is polled on /health with a deadline, and teardown kills it.
"""

import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOKENS = ["Hello", " from", " mock"]
PROMPT_TOKENS = 11
# API keys of the gateway's config: one for every test, one limited to `chat` at 1 rpm.
SDK_KEY = "sk-sdk-test-key"
LIMITED_KEY = "sk-sdk-limited-key"
EMBEDDING = [0.25, -0.5, 0.125]


class MockState:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []

    def record(self, path, headers, body):
        with self.lock:
            self.requests.append({"path": path, "headers": dict(headers), "body": body})

    def last(self):
        with self.lock:
            return self.requests[-1]

    def count(self):
        with self.lock:
            return len(self.requests)


def _chunk(model, content=None, finish=None, role=False, usage=None):
    choices = []
    if usage is None:
        delta = {"content": content}
        if role:
            delta["role"] = "assistant"
        choices = [{"index": 0, "delta": delta, "finish_reason": finish}]
    ev = {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        ev["usage"] = usage
    return ev


def _usage(n):
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": n, "total_tokens": PROMPT_TOKENS + n}


def make_handler(state):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        def _json(self, status, obj):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()

        def _write_chunk(self, data):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            state.record(self.path, self.headers, raw)
            try:
                body = json.loads(raw)
            except ValueError:
                return self._json(400, {"error": {"message": "bad json", "type": "invalid_request_error"}})
            model = body.get("model", "")
            if model == "mock-bad-request":
                return self._json(
                    400,
                    {"error": {"message": "upstream says no", "type": "invalid_request_error", "param": None, "code": None}},
                )
            if self.path.endswith("/embeddings"):
                return self._json(
                    200,
                    {
                        "object": "list",
                        "data": [{"object": "embedding", "index": 0, "embedding": EMBEDDING}],
                        "model": model,
                        "usage": {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS},
                    },
                )
            if not body.get("stream"):
                return self._json(
                    200,
                    {
                        "id": "chatcmpl-mock",
                        "object": "chat.completion",
                        "created": 1700000000,
                        "model": model,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": "".join(TOKENS)},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": _usage(len(TOKENS)),
                    },
                )
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            cut = model == "mock-cut"
            tokens = TOKENS[:2] if cut else TOKENS
            for i, tok in enumerate(tokens):
                finish = "stop" if (i == len(tokens) - 1 and not cut) else None
                ev = _chunk(model, tok, finish, role=(i == 0))
                self._write_chunk(b"data: " + json.dumps(ev).encode() + b"\n\n")
            if cut:
                # FIN in the middle of the chunked body: no [DONE], no terminating chunk.
                self.close_connection = True
                return
            if (body.get("stream_options") or {}).get("include_usage"):
                ev = _chunk(model, usage=_usage(len(tokens)))
                self._write_chunk(b"data: " + json.dumps(ev).encode() + b"\n\n")
            self._write_chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a peer that closes mid-request is part of the tests


@pytest.fixture(scope="session")
def mock_upstream():
    state = MockState()
    server = QuietServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.port = server.server_address[1]
    yield state
    server.shutdown()
    server.server_close()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(port, mock_port):
    url = f"http://127.0.0.1:{mock_port}/v1"
    return f"""server:
  listen: ["127.0.0.1:{port}"]
  timeouts: {{ connect: 2s, first_byte: 10s, idle: 10s, total: 30s }}

providers:
  mock:
    type: openai
    endpoints: ["{url}"]

models:
  chat:
    aliases: [gpt-3.5-turbo]
    targets:
      - {{ provider: mock, model: mock-chat }}
  embed:
    targets:
      - {{ provider: mock, model: mock-embed }}
  bad:
    targets:
      - {{ provider: mock, model: mock-bad-request }}
  cut:
    targets:
      - {{ provider: mock, model: mock-cut }}

keys:
  sdk:
    key: {SDK_KEY}
  limited:
    key: {LIMITED_KEY}
    models: ["chat"]
    limits: {{ rpm: 1 }}
"""


def _wait_healthy(base, proc, log_path, deadline_s=30.0):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"gateway exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)  # poll interval
    pytest.fail(f"gateway not healthy within {deadline_s}s:\n{log_path.read_text(errors='replace')}")


@pytest.fixture(scope="session")
def gateway(mock_upstream, tmp_path_factory):
    binary = Path(os.environ.get("SWITCHYARD_BIN", REPO / "target" / "debug" / "switchyard"))
    if not binary.exists():
        pytest.fail(f"gateway binary not found at {binary}; build it or set SWITCHYARD_BIN")
    tmp = tmp_path_factory.mktemp("gateway")
    last_error = None
    for _ in range(3):  # a freed port can be taken before the gateway binds it
        port = _free_port()
        cfg = tmp / "switchyard.yaml"
        cfg.write_text(_config(port, mock_upstream.port))
        log_path = tmp / f"gateway-{port}.log"
        log = open(log_path, "wb")
        proc = subprocess.Popen(
            [str(binary), "serve", "-c", str(cfg)],
            cwd=tmp,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(base, proc, log_path)
        except BaseException as e:  # pytest.fail raises outside Exception
            last_error = e
            proc.kill()
            proc.wait(timeout=10)
            log.close()
            continue
        try:
            yield {"base": base, "url": base + "/v1", "log": log_path}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            log.close()
        return
    raise last_error


@pytest.fixture()
def client(gateway):
    import openai

    return openai.OpenAI(base_url=gateway["url"], api_key=SDK_KEY, max_retries=0, timeout=20.0)
