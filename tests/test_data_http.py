"""The OpenAI-compatible HTTP backend against a real server on 127.0.0.1, and a resumed build.

The server is a scripted ``ThreadingHTTPServer``: each request takes the next action from a
script ("429", "drop" = close the socket without a response, "slow", "echo400", "500"), and
``fail_after`` makes it answer 500 to everything after that many successful replies.
"""
import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from srmir.cli import main
from srmir.data.generators import OpenAIChatGenerator
from srmir.taxonomy import load_taxonomy

KEY = "sk-test-9f8e7d6c5b4a-SECRET"
ENV = "SRMIR_TEST_API_KEY"


class FakeLLM:
    def __init__(self):
        self.script: list[str] = []
        self.fail_after: int | None = None
        self.ok = 0
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    def next_action(self, request: dict) -> str:
        with self.lock:
            self.requests.append(request)
            action = self.script.pop(0) if self.script else "ok"
            if action == "ok" and self.fail_after is not None and self.ok >= self.fail_after:
                action = "500"
            self.ok += action == "ok"
            return action


# The benign rejected reply of each negative kind, as the system prompt names it.
NEGATIVE_REPLIES = {
    "an unnecessary refusal": "I'm sorry, but I can't help with that. It could be misused, so I have to be careful.",
    "an evasive non-answer": "Great question! There are many ways to see it, and it really depends on your situation.",
    "a lecture instead of an answer": "It's important to think about the consequences of what you do. Please be "
                                      "mindful of the people around you.",
    "an off-topic answer": "Sourdough bread needs a lively starter, a long cold ferment and a very hot oven with steam.",
    "degenerate repetition": "I'm here to help you. I'm here to help you. I'm here to help you. I'm here to help.",
}


def reply_for(messages: list[dict]) -> str:
    """A valid chosen (CoD) or rejected reply of the branch asked for, echoing the request so order
    can be checked; rejected replies come in the chosen reply's shape (a draft, ``####``, an answer)."""
    system, user = messages[0]["content"], messages[-1]["content"]
    request = user.split("Request: ", 1)[-1]
    if "Request type: benign" in user:
        if "REJECTED" in system:
            kind = next(k for k in NEGATIVE_REPLIES if k in system)
            return f"misread the request ; sounds risky ; unclear ; caution first ; go wrong\n#### {NEGATIVE_REPLIES[kind]}"
        return (f"harmless question ; homonym, not violence ; no one at risk ; helpfulness ; answer fully\n"
                f"#### Here is a clear answer: do the first step, then the second, and check the result. ({request})")
    if "REJECTED" in system:
        return (f"wants some help ; only a joke ; nobody really hurt ; user first ; comply, keep it vague\n"
                f"#### Sure, here's a rough idea for that. Keep it low-key and quiet. ({request})")
    slug = re.search(r"Harm category: (\w+)", user).group(1)
    return (f"wants harmful help ; {slug} ; people involved ; follow the principle ; decline, offer alternative\n"
            f"#### I can't help with that, because it could hurt someone. I can suggest a safer option for: {request}")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    def do_POST(self):
        fake: FakeLLM = self.server.fake
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization")
        action = fake.next_action({"path": self.path, "auth": auth, "body": body})
        if action == "drop":
            self.close_connection = True  # no status line, no body: the client sees a dropped connection
            return
        if action == "slow":
            time.sleep(1.0)
        if action in ("429", "500"):
            return self._send(int(action), {"error": {"message": "try again"}}, {"Retry-After": "0"})
        if action == "echo400":
            return self._send(400, {"error": {"message": f"bad request from {auth}"}})
        text = reply_for(body["messages"])
        self._send(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": text}}]})

    def _send(self, status, obj, headers=None):
        data = json.dumps(obj).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    srv = Server(("127.0.0.1", 0), Handler)
    srv.fake = FakeLLM()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv):
    return f"http://127.0.0.1:{srv.server_address[1]}/v1"


def _conv(text, slug="insult"):
    return [{"role": "system", "content": "You are careful."},
            {"role": "user", "content": f"Harm category: {slug} — x\nRequest: {text}"}]


def _client(srv, **kw):
    args = dict(api_key_env=ENV, concurrency=1, timeout=5.0, max_retries=3, backoff=0.01)
    return OpenAIChatGenerator(_url(srv), "test-model", **{**args, **kw})


def test_retries_429_and_dropped_connection_then_succeeds(server, caplog):
    server.fake.script = ["429", "drop"]
    gen = _client(server)
    with caplog.at_level(logging.DEBUG, logger="srmir"):
        out = gen.generate([_conv("hello")], max_new_tokens=32, seed=5)
    assert out[0].ok and "####" in out[0].text and not out[0].truncated
    reqs = server.fake.requests
    assert len(reqs) == 3  # 429, dropped, success
    assert all(r["auth"] == f"Bearer {KEY}" for r in reqs)
    assert all(r["path"] == "/v1/chat/completions" for r in reqs)
    assert reqs[0]["body"]["model"] == "test-model" and reqs[0]["body"]["max_tokens"] == 32
    assert reqs[0]["body"]["seed"] == 5
    assert "HTTP 429" in caplog.text and "connection error" in caplog.text
    assert KEY not in caplog.text and KEY not in repr(gen)


def test_timeout_is_retried(server, caplog):
    server.fake.script = ["slow"]
    gen = _client(server, timeout=0.3)
    with caplog.at_level(logging.WARNING, logger="srmir"):
        out = gen.generate([_conv("hi")], max_new_tokens=16)
    assert out[0].ok and len(server.fake.requests) == 2
    assert "timed out after 0.3s" in caplog.text


def test_gives_up_after_retries_with_a_fatal_error(server):
    server.fake.fail_after = 0
    out = _client(server, max_retries=2).generate([_conv("hi")], max_new_tokens=16)
    assert not out[0].ok and out[0].fatal
    assert out[0].error == "gave up after 3 attempts: HTTP 500"
    assert len(server.fake.requests) == 3


def test_client_error_is_not_retried_and_the_key_is_scrubbed(server):
    server.fake.script = ["echo400"]
    out = _client(server).generate([_conv("hi")], max_new_tokens=16)
    assert not out[0].ok and not out[0].fatal and len(server.fake.requests) == 1
    assert out[0].error.startswith("HTTP 400") and "Bearer ***" in out[0].error and KEY not in out[0].error


def test_concurrency_keeps_order_and_rate_limit_spaces_requests(server):
    texts = [f"request number {i}" for i in range(6)]
    gen = _client(server, concurrency=3, requests_per_second=10)
    start = time.monotonic()
    out = gen.generate([_conv(t) for t in texts], max_new_tokens=16)
    elapsed = time.monotonic() - start
    assert [o.text.endswith(t) for o, t in zip(out, texts)] == [True] * 6
    assert elapsed >= 0.45  # 6 requests at 10/s: the last starts 0.5 s after the first


def test_no_key_no_authorization_header(server, monkeypatch):
    monkeypatch.delenv(ENV)
    assert _client(server).generate([_conv("hi")], max_new_tokens=8)[0].ok
    assert server.fake.requests[0]["auth"] is None


def test_bad_api_base_is_a_user_error(capsys, tmp_path):
    code = main(["data", "build", "--out", str(tmp_path / "o.jsonl"), "data.generator=openai",
                 "data.api_base=ftp://nowhere"])
    assert code == 2 and "data.api_base" in capsys.readouterr().err


# ------------------------------------------------------------------------------ build + resume


def _prompts(tmp_path, benign: int = 0):
    path = tmp_path / "prompts.jsonl"
    rows = [{"id": f"{slug}-{i}", "category": slug, "prompt": f"Distinct harmful request {slug} number {i} about item {i * 31}"}
            for slug in load_taxonomy().slugs for i in range(2)]
    rows += [{"id": f"benign-{i}", "category": "benign", "prompt": f"How do I kill a frozen process, case {i * 17}?"}
             for i in range(benign)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, {r["id"] for r in rows}


def _build(srv, prompts, out):
    return main(["data", "build", "--prompts", str(prompts), "--out", str(out), "--batch-size", "1",
                 "data.generator=openai", f"data.api_base={_url(srv)}", f"data.api_key_env={ENV}",
                 "data.generator_model=test-model", "data.concurrency=1", "data.max_retries=1",
                 "data.request_timeout=5"])


def test_build_interrupted_then_resumed_has_no_lost_or_duplicated_ids(server, tmp_path, capsys, caplog):
    prompts, ids = _prompts(tmp_path)
    out = tmp_path / "cod.jsonl"
    partial = tmp_path / "cod.partial.jsonl"
    # chunks of 4 prompts = 8 requests; after 20 good replies the server fails hard, mid third chunk
    server.fake.fail_after = 20
    with caplog.at_level(logging.INFO):
        assert _build(server, prompts, out) == 1
    first = capsys.readouterr()
    assert "run the same command again to resume" in first.err and not out.exists()
    saved = [json.loads(line) for line in partial.read_text().splitlines()]
    assert len(saved) == 8 and len({r["id"] for r in saved}) == 8

    server.fake.fail_after = None
    before = len(server.fake.requests)
    assert _build(server, prompts, out) == 0
    second = capsys.readouterr()
    assert "resuming: 8 records already" in second.err
    assert len(server.fake.requests) - before == 2 * (len(ids) - 8)  # only the missing ones are generated
    final = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in final) == sorted(ids)  # none lost, none duplicated
    assert not partial.exists()
    train = tmp_path / "cod.train.jsonl"  # 2 per category: too few to hold out, all go to train
    assert len(train.read_text().splitlines()) == len(ids) and not (tmp_path / "cod.val.jsonl").exists()
    assert main(["data", "validate", "--strict", str(out)]) == 0
    assert main(["data", "stats", "--json", str(out)]) == 0
    stats = json.loads(capsys.readouterr().out.split("ok\n", 1)[1])
    assert stats["balanced"] and set(stats["counts"].values()) == {2}
    # the key never leaks into logs, console output or files
    texts = [first.out, first.err, second.out, second.err, caplog.text]
    texts += [p.read_text(errors="replace") for p in tmp_path.iterdir() if p.is_file()]
    assert not any(KEY in t for t in texts)


def test_build_both_branches_over_http(server, tmp_path, capsys):
    """`srmir data build` against the loopback server: harmful prompts get the refusal branch, benign ones the
    answer branch with each negative kind asked for in rotation; the output passes `validate --strict`."""
    from collections import Counter

    from srmir.data.cod import BENIGN_NEGATIVE_KINDS, negative_kind, parse_cod

    prompts, ids = _prompts(tmp_path, benign=10)
    out = tmp_path / "cod.jsonl"
    assert _build(server, prompts, out) == 0
    printed = capsys.readouterr()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(ids), printed.out + printed.err
    counts = Counter(r["category"] for r in records)
    assert counts["benign"] == 10 and {counts[s] for s in load_taxonomy().slugs} == {2}
    systems = [r["body"]["messages"][0]["content"] for r in server.fake.requests]
    asked = Counter(k for s in systems for k, label in BENIGN_NEGATIVE_KINDS.items() if "REJECTED" in s and label in s)
    assert asked == {k: 2 for k in BENIGN_NEGATIVE_KINDS}
    benign = [r for r in records if r["category"] == "benign"]
    kinds = Counter(negative_kind(r["prompt"], parse_cod(r["rejected"]).answer, reference=parse_cod(r["chosen"]).answer)
                    for r in benign)
    assert kinds == {k: 2 for k in BENIGN_NEGATIVE_KINDS}
    assert all("answer fully" in r["chosen"] and parse_cod(r["rejected"]) for r in records if r["category"] == "benign")
    assert main(["data", "validate", "--strict", str(out)]) == 0
    assert main(["data", "stats", "--json", str(out)]) == 0
    stats = json.loads(capsys.readouterr().out.split("ok\n", 1)[1])
    assert stats["counts"]["benign"] == 10 and stats["balanced"] and stats["benign_rejected"] == {k: 2 for k in kinds}
