"""The OpenAI-compatible server, through real HTTP on 127.0.0.1: httpx and the official openai client."""

from __future__ import annotations

import json
import socket
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
    assert httpx.get(f"{open_url}/health").json() == {"status": "ok", "model": "llmclone-test"}
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
