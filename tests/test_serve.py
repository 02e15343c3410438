"""The OpenAI-compatible server, through real HTTP on 127.0.0.1: httpx and the official openai client."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn

from llmclone.clone import LLMClone
from llmclone.config import TrainConfig
from llmclone.serving.openai_api import create_app
from llmclone.training.trainer import train

KEY = "test-key-123"


@pytest.fixture(scope="module")
def clone(tiny_model: Path, example_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> LLMClone:
    out = tmp_path_factory.mktemp("serve") / "clone"
    train(example_dataset, out, TrainConfig(model=str(tiny_model), max_steps=2, batch_tokens=512, max_length=256,
                                            max_eval_samples=4), quiet=True)
    return LLMClone.load(out)


def _server(app: object) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def open_url(clone: LLMClone) -> Iterator[str]:
    yield from _server(create_app(clone, model_id="llmclone-test"))


@pytest.fixture(scope="module")
def locked_url(clone: LLMClone) -> Iterator[str]:
    yield from _server(create_app(clone, model_id="llmclone-test", api_key=KEY))


BODY = {"model": "llmclone-test", "messages": [{"role": "user", "content": "привет! как дела?"}],
        "temperature": 0, "max_tokens": 16}


def test_health_models_and_completion(open_url: str) -> None:
    assert httpx.get(f"{open_url}/health").json() == {"status": "ok", "model": "llmclone-test", "pending": 0}
    models = httpx.get(f"{open_url}/v1/models").json()
    assert models["data"][0]["id"] == "llmclone-test"
    r = httpx.post(f"{open_url}/v1/chat/completions", json=BODY, timeout=60)
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "chat.completion" and data["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(data["choices"][0]["message"]["content"], str)


def test_streaming_matches_plain(open_url: str) -> None:
    plain = httpx.post(f"{open_url}/v1/chat/completions", json=BODY, timeout=60).json()
    with httpx.stream("POST", f"{open_url}/v1/chat/completions", json=BODY | {"stream": True}, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == plain["choices"][0]["message"]["content"]


def test_usage_and_finish_reason(open_url: str) -> None:
    """usage counts the prompt's and the reply's tokens; a reply cut by max_tokens says "length"."""
    cut = httpx.post(f"{open_url}/v1/chat/completions", json=BODY | {"max_tokens": 2, "temperature": 0}, timeout=60).json()
    usage = cut["usage"]
    assert usage["prompt_tokens"] > 5 and 1 <= usage["completion_tokens"] <= 2
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert cut["choices"][0]["finish_reason"] == ("length" if usage["completion_tokens"] == 2 else "stop")


def test_batched_requests_keep_their_own_settings_and_order(clone: LLMClone) -> None:
    """Jobs that wait together are decoded in one batch, and each gets what it would have got alone: its own
    temperature, length and seed, in its own place."""
    from llmclone.serving.batcher import Batcher, Job

    asks = [([{"role": "user", "content": f"вопрос {i}, как дела?" + " ну" * i}],
             {"temperature": 0.0 if i % 3 == 0 else 0.9, "max_new_tokens": 4 + 5 * i, "seed": 100 + i})
            for i in range(6)]
    alone = [clone.replies([history], samplings=[settings])[0] for history, settings in asks]
    batcher = Batcher(clone, gather_seconds=0.5, longest_gather=2.0)
    try:
        futures = [batcher.submit(Job(history, settings)) for history, settings in asks]
        together = [f.result(timeout=120) for f in futures]
    finally:
        batcher.close()
    assert max(batcher.batches) > 1  # they really were decoded together
    assert [r.messages for r in together] == [r.messages for r in alone]
    assert [r.completion_tokens for r in together] == [r.completion_tokens for r in alone]
    assert len({tuple(r.messages) for r in together}) > 1


def test_requests_arriving_a_little_apart_are_one_batch() -> None:
    """Concurrent requests reach the batcher some time apart (each is parsed first): while each comes within
    the gather gap of the previous one they join one batch, up to the longest gather; later ones start the next."""
    import time

    from llmclone.serving.batcher import Batcher, Job

    class Clone:  # the batcher's one call into a clone, answered at once
        def replies(self, histories: list, **_: object) -> list:
            return [h[0]["content"] for h in histories]

    batcher = Batcher(Clone(), gather_seconds=0.4, longest_gather=2.0)
    try:
        futures = []
        for i in range(6):  # 0.1 s apart: 0.6 s in all, past the gap, each within it of the last
            futures.append(batcher.submit(Job([{"role": "user", "content": str(i)}], {})))
            time.sleep(0.1)
        assert [f.result(timeout=10) for f in futures] == [str(i) for i in range(6)]
        assert batcher.batches == [6]
        futures = []
        for i in range(4):  # 0.8 s apart: past the gap, each starts its own batch
            futures.append(batcher.submit(Job([{"role": "user", "content": str(i)}], {})))
            time.sleep(0.8)
        [f.result(timeout=10) for f in futures]
        assert batcher.batches == [6, 1, 1, 1, 1]
    finally:
        batcher.close()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"messages": []}, 400),
        ({"messages": [{"role": "pirate", "content": "arr"}]}, 400),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}, 400),
        ({"messages": [{"role": "system", "content": "be nice"}]}, 400),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 3}, 400),
        ({"no": "messages"}, 400),
    ],
)
def test_malformed_requests_get_openai_errors(open_url: str, body: dict, status: int) -> None:
    r = httpx.post(f"{open_url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"


def test_not_json_and_unknown_path(open_url: str) -> None:
    r = httpx.post(f"{open_url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    assert httpx.get(f"{open_url}/v1/nothing").json()["error"]["code"] == "not_found"


def test_long_history_is_trimmed_not_rejected(open_url: str) -> None:
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": "слово " * 60} for i in range(60)]
    r = httpx.post(f"{open_url}/v1/chat/completions", json={"messages": history, "max_tokens": 4}, timeout=120)
    assert r.status_code == 200


def test_concurrent_requests_all_answered(open_url: str) -> None:
    def ask(i: int) -> int:
        body = BODY | {"messages": [{"role": "user", "content": f"вопрос {i}"}], "temperature": 0.7}
        return httpx.post(f"{open_url}/v1/chat/completions", json=body, timeout=120).status_code

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(ask, range(6))) == [200] * 6
    assert httpx.get(f"{open_url}/health", timeout=5).status_code == 200


def test_auth(locked_url: str) -> None:
    assert httpx.get(f"{locked_url}/health").status_code == 200  # health needs no key
    r = httpx.post(f"{locked_url}/v1/chat/completions", json=BODY)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    wrong = httpx.get(f"{locked_url}/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = httpx.get(f"{locked_url}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200


def test_key_scheme_schema_and_hostile_bodies(clone: LLMClone) -> None:
    """The scheme is case-insensitive, the schema is behind the key, and bodies too large, too many messages
    or text that is not valid Unicode get 4xx in OpenAI's shape without reaching the model."""
    server = _server(create_app(clone, model_id="llmclone-test", api_key=KEY, max_body_bytes=256 * 1024))
    url = next(server)
    try:
        key = {"Authorization": f"bearer {KEY}"}
        assert httpx.get(f"{url}/v1/models", headers=key).status_code == 200
        assert httpx.get(f"{url}/openapi.json").status_code == 401
        assert httpx.get(f"{url}/openapi.json", headers=key).status_code == 404
        big = BODY | {"messages": [{"role": "user", "content": "a" * 300_000}]}
        r = httpx.post(f"{url}/v1/chat/completions", json=big, headers=key)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        many = BODY | {"messages": [{"role": "user", "content": "ок"}] * 2001}
        r = httpx.post(f"{url}/v1/chat/completions", json=many, headers=key, timeout=60)
        assert r.status_code == 400 and "2000" in r.json()["error"]["message"]
        lone = b'{"messages": [{"role": "user", "content": "\\ud800 hi"}], "max_tokens": 4}'
        r = httpx.post(f"{url}/v1/chat/completions", content=lone, timeout=60,
                       headers=key | {"content-type": "application/json"})
        assert r.status_code == 400 and "surrogate" in r.json()["error"]["message"]
        chunked = httpx.post(f"{url}/v1/chat/completions", content=iter([b"{}"]), headers=key)
        assert chunked.status_code == 411
    finally:
        next(server, None)  # stops the server


def test_official_openai_client(open_url: str, locked_url: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{open_url}/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["llmclone-test"]
    done = client.chat.completions.create(model="llmclone-test", messages=BODY["messages"], temperature=0, max_tokens=16)
    assert isinstance(done.choices[0].message.content, str)
    stream = client.chat.completions.create(model="llmclone-test", messages=BODY["messages"], temperature=0,
                                            max_tokens=16, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert streamed == done.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{locked_url}/v1", api_key="wrong").models.list()
    locked = openai.OpenAI(base_url=f"{locked_url}/v1", api_key=KEY)
    assert locked.chat.completions.create(model="x", messages=BODY["messages"], max_tokens=4).choices
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="x", messages=[], max_tokens=4)


def test_the_user_field_names_the_chat_memory_recalls_for(clone: LLMClone) -> None:
    import openai

    from llmclone.memory.exchanges import chat_key

    chats: list = []

    class Spy:
        def replies(self, histories: list, **kwargs: object) -> list:
            chats.extend(kwargs["chats"])  # type: ignore[arg-type]
            return clone.replies(histories, **kwargs)  # type: ignore[arg-type]

    server = _server(create_app(Spy(), model_id="llmclone-test"))
    url = next(server)
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        for user in ("telegram:7", None, "customer-42"):
            client.chat.completions.create(model="x", messages=BODY["messages"], max_tokens=4,
                                           **({"user": user} if user else {}))
        list(client.chat.completions.create(model="x", messages=BODY["messages"], max_tokens=4, user="telegram:7",
                                            stream=True))
    finally:
        next(server, None)
    assert chats == [chat_key("telegram", "personal", "7"), None, chat_key("api", "personal", "customer-42"),
                     chat_key("telegram", "personal", "7")]


class _Recording:
    """The clone, with each reply it gives kept by the first words of its request (to see where one stopped)."""

    def __init__(self, clone: LLMClone) -> None:
        self.clone, self.done = clone, {}

    def replies(self, histories: list, **kwargs: object) -> list:
        out = self.clone.replies(histories, **kwargs)
        for history, reply in zip(histories, out, strict=True):
            self.done[history[-1]["content"]] = reply
        return out


def test_a_client_that_goes_away_stops_its_generation(clone: LLMClone) -> None:
    """Plain and streaming: the abandoned request's generation stops early, well short of the reply it gives
    when its client waits, while the others in its batch are answered."""
    greedy = {"max_new_tokens": 512, "temperature": 0}
    alone = {text: clone.replies([[{"role": "user", "content": text}]], samplings=[greedy])[0].completion_tokens
             for text in ("plain leaver", "stream leaver")}
    assert min(alone.values()) > 300  # long enough to see it cut short
    spy = _Recording(clone)
    server = _server(create_app(spy, model_id="llmclone-test"))
    url = next(server)
    try:
        def ask(text: str) -> int:
            body = {"messages": [{"role": "user", "content": text}], "max_tokens": 512, "temperature": 0}
            return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).status_code

        def leave_plain() -> None:
            body = {"messages": [{"role": "user", "content": "plain leaver"}], "max_tokens": 512, "temperature": 0}
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{url}/v1/chat/completions", json=body, timeout=httpx.Timeout(120, read=0.3))

        def leave_stream() -> None:
            body = {"messages": [{"role": "user", "content": "stream leaver"}], "max_tokens": 512, "temperature": 0,
                    "stream": True}
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
                next(r.iter_lines())  # the role chunk: generation has started; then hang up

        with ThreadPoolExecutor(8) as pool:
            stayed = [pool.submit(ask, f"stayer {i}") for i in range(6)]
            left = [pool.submit(leave_plain), pool.submit(leave_stream)]
            assert [f.result() for f in stayed] == [200] * 6
            [f.result() for f in left]
        deadline = time.time() + 30
        while httpx.get(f"{url}/health").json()["pending"] and time.time() < deadline:
            time.sleep(0.1)
        assert all(f"stayer {i}" in spy.done for i in range(6))
        for text, tokens in alone.items():  # not there: it went before its batch started
            served = spy.done[text].completion_tokens if text in spy.done else 0
            assert served < tokens - 100, (text, served, tokens)
    finally:
        next(server, None)


def _serve_process(clone_dir: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llmclone", "serve", str(clone_dir), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"llmclone serve did not start: {proc.communicate()[0]}")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_sigterm_during_long_requests_exits_at_once(clone: LLMClone) -> None:
    """SIGTERM while a batch is decoding and more wait: the batch stops at its next token, every request gets
    503 (an error event when streaming, which the openai client raises), and the process exits."""
    import openai

    proc, url = _serve_process(clone.clone_dir)
    try:
        started = threading.Event()

        def streamed(i: int) -> str:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            stream = client.chat.completions.create(model="x", messages=[{"role": "user", "content": f"q{i}"}],
                                                    max_tokens=512, stream=True)
            try:
                for _ in stream:
                    started.set()
            except openai.APIError as err:
                return str(err.code) if err.code else str(err)
            return "finished"

        def plain(i: int) -> int:
            body = {"messages": [{"role": "user", "content": f"p{i}"}], "max_tokens": 512}
            r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
            assert r.status_code != 503 or r.json()["error"]["code"] == "server_shutting_down"
            return r.status_code

        with ThreadPoolExecutor(24) as pool:
            streams = [pool.submit(streamed, i) for i in range(12)]
            plains = [pool.submit(plain, i) for i in range(12)]  # 24 requests: a batch of 16 and 8 waiting
            assert started.wait(60)
            deadline = time.time() + 30
            while httpx.get(f"{url}/health").json()["pending"] < 24 and time.time() < deadline:
                time.sleep(0.05)  # every request reached the server
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)  # a 24-request queue at 512 tokens each would take far longer to drain
            outcomes = [f.result(timeout=10) for f in streams] + [f.result(timeout=10) for f in plains]
        assert set(outcomes) <= {"server_shutting_down", 503}, outcomes
    finally:
        proc.kill()
        proc.wait()


def test_soak_mixed_requests(clone: LLMClone) -> None:
    """200 mixed requests (plain, streaming, over-long histories, clients that hang up, bad and oversized
    bodies) from 8 clients at once: every request that waits for its answer gets a 200 or a 4xx, the server
    keeps answering, and its memory stays where it was once warm."""
    proc, url = _serve_process(clone.clone_dir)
    long_history = [{"role": "user" if i % 2 == 0 else "assistant", "content": "очень длинное сообщение " * 8}
                    for i in range(1999)] + [{"role": "user", "content": "ну что?"}]

    def one(i: int) -> str:
        kind = i % 10
        body: dict = {"messages": [{"role": "user", "content": f"вопрос {i}"}], "max_tokens": 8 + i % 24,
                      "temperature": (i % 7) / 5}
        post = f"{url}/v1/chat/completions"
        if kind == 4:
            with httpx.stream("POST", post, json=body | {"stream": True}, timeout=120) as r:
                lines = [line for line in r.iter_lines() if line]
            return "200" if r.status_code == 200 and lines[-1] == "data: [DONE]" else f"bad stream {lines[-1:]}"
        if kind == 5:
            body["messages"] = long_history
        if kind == 6:
            try:
                httpx.post(post, json=body | {"max_tokens": 512}, timeout=httpx.Timeout(120, read=0.05))
            except httpx.ReadTimeout:
                return "left"
            return "left"
        if kind == 7:
            with httpx.stream("POST", post, json=body | {"stream": True, "max_tokens": 512}, timeout=120) as r:
                next(r.iter_lines())
            return "left"
        if kind == 8:
            body["temperature"] = 9
        if kind == 9:
            body["messages"] = [{"role": "user", "content": "x" * (5 * 2**20)}]
        r = httpx.post(post, json=body, timeout=120)
        if r.status_code >= 400:
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        return str(r.status_code)

    try:
        rss = []
        with ThreadPoolExecutor(8) as pool:
            outcomes = []
            for start in range(0, 200, 50):
                outcomes += pool.map(one, range(start, start + 50))
                rss.append(_rss_mb(proc.pid))
        assert len(outcomes) == 200
        assert {o for o in outcomes} <= {"200", "400", "413", "left"}, [o for o in outcomes if not o.isalnum()]
        assert outcomes.count("200") == 120 and outcomes.count("400") == 20 and outcomes.count("413") == 20
        assert httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=60).status_code == 200
        assert max(rss[1:]) < rss[0] + 150, rss  # MB: nothing kept per request
    finally:
        proc.terminate()
        proc.wait(30)
