"""`llmclone serve`: the clone behind an OpenAI-compatible HTTP API (FastAPI + uvicorn).

- `POST /v1/chat/completions` (JSON, or server-sent events with `"stream": true`), `GET /v1/models`,
  `GET /health`. The clone's messages come back as one assistant message, one line per message;
  when streaming, each message is sent as soon as it is complete.
- Requests are queued onto the one model and decoded together in batches (serving/batcher.py), each with its
  own sampling settings; generation runs off the event loop; a client that disconnects stops its generation.
- Errors use OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with a 4xx status.
- SIGTERM or Ctrl-C stops at once: the batch being decoded stops at its next token, its requests and those
  still waiting get 503 (an error event when streaming), and the process exits.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmclone.config import ReplyConfig
from llmclone.errors import UserError
from llmclone.memory.contacts import key_of
from llmclone.memory.exchanges import chat_key
from llmclone.serving.batcher import Batcher, Job, Stopping
from llmclone.sources.base import PERSONAL

MAX_BODY_BYTES = 4 * 2**20  # a long chat is far less; more is a mistake or an attack (`serve --max-body-mb`)
MAX_MESSAGES = 2000  # only the latest fit the context anyway


def _valid_text(value: Any) -> Any:
    """Text that cannot be encoded (a lone surrogate such as "\ud800") is refused at the edge, as 400."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text must be valid Unicode (it holds a lone surrogate)") from None
    return value


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None

    _text = field_validator("text")(_valid_text)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    _content = field_validator("content")(_valid_text)

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text or "" for part in self.content if part.type == "text")
        return self.content or ""


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)  # OpenAI clients send many optional fields
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    model: str | None = None
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    n: int = Field(1, ge=1, le=1)
    seed: int | None = None
    # OpenAI's end-user id: here the chat being answered (a memory chat key, or source:id such as telegram:123),
    # so memory brings that contact's own past; any other id is a chat of this API of its own
    user: str | None = Field(None, max_length=256)


def chat_of_user(user: str | None) -> str | None:
    """The memory chat a request's `user` names: a chat key or source:id as the CLI takes them, else the API's
    own chat of that id."""
    if not user:
        return None
    try:
        return key_of(user)
    except UserError:
        return chat_key("api", PERSONAL, user)


def _error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": None,
                                                               "code": code}})


def _stopping_error() -> dict[str, Any]:
    return {"message": "The server is shutting down; send the request again when it is back.",
            "type": "server_error", "param": None, "code": "server_shutting_down"}


def _authorized(request: Request, api_key: str) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


class _Gate:
    """The key and the body size, checked before a request reaches FastAPI. Plain ASGI: Starlette's
    BaseHTTPMiddleware would hide a client's disconnect from the endpoint, and its generation would run on."""

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int) -> None:
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (refusal := self._refusal(Request(scope))) is not None:
            await refusal(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _refusal(self, request: Request) -> JSONResponse | None:
        if self.api_key and request.url.path != "/health" and not _authorized(request, self.api_key):
            return _error(401, "Invalid or missing API key (Authorization: Bearer ...).", "authentication_error",
                          "invalid_api_key")
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None:
                return _error(411, "Send the request body with a Content-Length header.")
            if not length.isdigit() or int(length) > self.max_body_bytes:
                return _error(413, f"The request body is over {self.max_body_bytes // 2**20} MB; send fewer or "
                              "shorter messages (serve --max-body-mb raises the limit).", code="request_too_large")
        return None


def create_app(clone: Any, model_id: str = "clone", api_key: str | None = None, max_batch: int = 16,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    app = FastAPI(title="LLMClone", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    batcher = Batcher(clone, max_batch=max_batch)  # one model; queued requests are decoded together
    app.state.batcher = batcher
    app.router.add_event_handler("shutdown", batcher.close)
    created = int(time.time())

    app.add_middleware(_Gate, api_key=api_key, max_body_bytes=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(400, f"{where}: {first.get('msg')}" if where else str(first.get("msg")))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_id, "pending": batcher.pending}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                            "owned_by": "llmclone"}]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        history = [{"role": m.role, "content": m.text()} for m in body.messages if m.role in ("user", "assistant")]
        if not history:
            return _error(400, "messages: need at least one user or assistant message")
        sampling: dict[str, Any] = {}
        if body.temperature is not None:
            sampling["temperature"] = body.temperature
        if body.top_p is not None:
            sampling["top_p"] = body.top_p
        if body.max_completion_tokens or body.max_tokens:
            sampling["max_new_tokens"] = body.max_completion_tokens or body.max_tokens
        if body.seed is not None:
            sampling["seed"] = body.seed
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        chat = chat_of_user(body.user)
        if body.stream:
            return StreamingResponse(_stream(batcher, history, sampling, completion_id, model_id, chat),
                                     media_type="text/event-stream")

        gone = threading.Event()
        job = Job(history, sampling, cancelled=gone.is_set, chat=chat)
        watcher = asyncio.create_task(_watch_disconnect(request, gone))
        try:
            reply = await asyncio.wrap_future(batcher.submit(job))
        except Stopping:
            return JSONResponse(status_code=503, content={"error": _stopping_error()})
        finally:
            watcher.cancel()
        return {
            "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "\n".join(reply.messages)},
                         "finish_reason": reply.finish_reason}],
            "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                      "total_tokens": reply.prompt_tokens + reply.completion_tokens},
        }

    return app


async def _watch_disconnect(request: Request, gone: threading.Event) -> None:
    """Mark the job of a client that went away, so its generation stops at the next token."""
    while not gone.is_set():
        if await request.is_disconnected():
            gone.set()
            return
        await asyncio.sleep(0.25)


async def _stream(batcher: Batcher, history: list[dict[str, str]], sampling: dict[str, Any], completion_id: str,
                  model_id: str, chat: str | None = None) -> AsyncIterator[str]:
    """Server-sent events: a role chunk, one chunk per message as it is generated, a stop chunk, [DONE]."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    first = [True]

    def chunk(delta: dict[str, str], finish: str | None = None) -> str:
        return "data: " + json.dumps({
            "id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model_id,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }, ensure_ascii=False) + "\n\n"

    def on_message(message: str) -> None:
        text = message if first[0] else "\n" + message
        first[0] = False
        loop.call_soon_threadsafe(queue.put_nowait, chunk({"content": text}))

    gone = threading.Event()
    future = batcher.submit(Job(history, sampling, on_message=on_message, cancelled=gone.is_set, chat=chat))
    future.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, None))
    try:
        yield chunk({"role": "assistant", "content": ""})
        while (item := await queue.get()) is not None:
            yield item
        try:
            reply = await asyncio.wrap_future(future)
        except Stopping:  # OpenAI's clients raise an APIError on an event that holds "error"
            yield "data: " + json.dumps({"error": _stopping_error()}) + "\n\n"
            return
        yield chunk({}, reply.finish_reason)
        yield "data: [DONE]\n\n"
    finally:
        gone.set()  # the client went away (or we are done): stop generating for it


class _Server(uvicorn.Server):
    """uvicorn waits for open requests before it exits: a long generation would hold SIGTERM for its whole reply.
    The batcher is stopped first, so they end at the next token."""

    def __init__(self, config: uvicorn.Config, batcher: Batcher) -> None:
        super().__init__(config)
        self.batcher = batcher

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.batcher.stop()
        super().handle_exit(sig, frame)


def serve(clone_dir: str, settings: ReplyConfig | None = None, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> None:
    """`settings`: how the clone replies (engine, device, and the sampling a request starts from)."""
    from llmclone.clone import LLMClone

    clone = LLMClone.load(clone_dir, settings)
    if clone.runtime is not None:
        print(clone.runtime.describe(), flush=True)
    name = f"llmclone-{clone.clone_dir.name if clone.clone_dir else 'clone'}"
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"warning: serving on {host} without --api-key: anyone who can reach it can talk to your clone.")
    app = create_app(clone, model_id=name, api_key=api_key, max_body_bytes=max_body_bytes)
    _Server(uvicorn.Config(app, host=host, port=port, log_level="warning"), app.state.batcher).run()
