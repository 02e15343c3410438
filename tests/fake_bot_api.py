"""A small fake Telegram Bot API server on 127.0.0.1 for end-to-end tests of the real aiogram client.

Bot methods (POST /bot<token>/<method>): getMe, getUpdates (offset, capped long-poll), sendMessage (400
over 4096 characters), sendChatAction, editMessageText, deleteWebhook, getBusinessConnection.
Control endpoints: POST /control/update (inject an update), GET /control/sent (what the bot sent),
GET /control/actions, POST /control/fail ({"method", "status", "retry_after", "count", "delay", "html"}; status
200 with a delay is a slow answer; "html": true answers with a front end's HTML error page, which, as some
servers' pages do, echoes the requested path, bot token included).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp import web

BOT_USER = {"id": 999000, "is_bot": True, "first_name": "Clone", "username": "clone_test_bot"}


class FakeBotAPI:
    def __init__(self) -> None:
        self.updates: list[dict[str, Any]] = []
        self.next_update_id = 1
        self.sent: list[dict[str, Any]] = []
        self.actions: list[dict[str, Any]] = []
        self.calls: list[str] = []
        self.failures: list[dict[str, Any]] = []
        self.connections: dict[str, dict[str, Any]] = {}
        self.new_update = asyncio.Event()
        self.next_message_id = 5000
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self.bot_method)
        app.router.add_post("/control/update", self.control_update)
        app.router.add_get("/control/sent", self.control_sent)
        app.router.add_get("/control/actions", self.control_actions)
        app.router.add_post("/control/fail", self.control_fail)
        self.runner = web.AppRunner(app)
        self.url = ""

    async def start(self) -> str:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        await self.runner.cleanup()

    # -- control -----------------------------------------------------------------------------------------
    def add_update(self, update: dict[str, Any]) -> int:
        update = {"update_id": self.next_update_id, **update}
        self.next_update_id += 1
        self.updates.append(update)
        if "business_connection" in update:
            self.connections[update["business_connection"]["id"]] = update["business_connection"]
        self.new_update.set()
        return update["update_id"]

    async def control_update(self, request: web.Request) -> web.Response:
        return web.json_response({"update_id": self.add_update(await request.json())})

    async def control_sent(self, request: web.Request) -> web.Response:
        return web.json_response(self.sent)

    async def control_actions(self, request: web.Request) -> web.Response:
        return web.json_response(self.actions)

    async def control_fail(self, request: web.Request) -> web.Response:
        self.failures.append(await request.json())
        return web.json_response({"ok": True})

    # -- the Bot API ---------------------------------------------------------------------------------------
    async def bot_method(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = {k: _value(v) for k, v in (await request.post()).items()}
        self.calls.append(method)
        for failure in self.failures:
            if failure["method"] == method and failure.get("count", 1) > 0:
                failure["count"] = failure.get("count", 1) - 1
                await asyncio.sleep(failure.get("delay", 0))
                status = failure.get("status", 500)
                if status == 200:
                    break  # only slow: answer normally after the delay
                if failure.get("html"):
                    page = f"<html><body><h1>{status} Bad Gateway</h1><p>{request.path}</p><hr>nginx</body></html>"
                    return web.Response(text=page, status=status, content_type="text/html")
                body: dict[str, Any] = {"ok": False, "error_code": status, "description": failure.get("description", "error")}
                if status == 429:
                    body["parameters"] = {"retry_after": failure.get("retry_after", 1)}
                    body["description"] = f"Too Many Requests: retry after {failure.get('retry_after', 1)}"
                return web.json_response(body, status=status)
        handler = getattr(self, "m_" + method, None)
        if handler is None:
            return _error(404, "Not Found: method not found")
        return await handler(params)

    async def m_getMe(self, params: dict[str, Any]) -> web.Response:
        return _ok(BOT_USER)

    async def m_deleteWebhook(self, params: dict[str, Any]) -> web.Response:
        return _ok(True)

    async def m_getUpdates(self, params: dict[str, Any]) -> web.Response:
        offset = int(params.get("offset", 0) or 0)
        if offset:
            self.updates = [u for u in self.updates if u["update_id"] >= offset]  # confirmed ones are gone
        deadline = time.monotonic() + min(float(params.get("timeout", 0) or 0), 1.0)
        while True:
            pending = [u for u in self.updates if u["update_id"] >= offset]
            if pending or time.monotonic() >= deadline:
                return _ok(pending[:100])
            self.new_update.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.new_update.wait(), max(deadline - time.monotonic(), 0.01))

    async def m_sendMessage(self, params: dict[str, Any]) -> web.Response:
        text = str(params["text"])
        if len(text) > 4096:
            return _error(400, "Bad Request: message is too long")
        if not text.strip():
            return _error(400, "Bad Request: message text is empty")
        self.next_message_id += 1
        message = {"message_id": self.next_message_id, "date": int(time.time()), "text": text, "from": BOT_USER,
                   "chat": {"id": int(params["chat_id"]), "type": "private", "first_name": "Peer"}}
        if params.get("business_connection_id"):
            message["business_connection_id"] = params["business_connection_id"]
        self.sent.append({"chat_id": int(params["chat_id"]), "text": text, "message_id": self.next_message_id,
                          "business_connection_id": params.get("business_connection_id"), "at": time.monotonic()})
        return _ok(message)

    async def m_sendChatAction(self, params: dict[str, Any]) -> web.Response:
        self.actions.append({"chat_id": int(params["chat_id"]), "action": params["action"],
                             "business_connection_id": params.get("business_connection_id"), "at": time.monotonic()})
        return _ok(True)

    async def m_editMessageText(self, params: dict[str, Any]) -> web.Response:
        for s in self.sent:
            if s["message_id"] == int(params["message_id"]):
                s["text"] = params["text"]
        return _ok(True)

    async def m_getBusinessConnection(self, params: dict[str, Any]) -> web.Response:
        conn = self.connections.get(str(params["business_connection_id"]))
        return _ok(conn) if conn else _error(400, "Bad Request: business connection not found")


def _value(v: Any) -> Any:
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _error(code: int, description: str) -> web.Response:
    return web.json_response({"ok": False, "error_code": code, "description": description}, status=code)


def private_message(message_id: int, user_id: int, text: str, **extra: Any) -> dict[str, Any]:
    return {"message": {"message_id": message_id, "date": int(time.time()), "text": text,
                        "chat": {"id": user_id, "type": "private", "first_name": "Peer"},
                        "from": {"id": user_id, "is_bot": False, "first_name": "Peer"}, **extra}}
