"""The bot and the business bot end to end: the real aiogram polling loop against a fake Bot API server
on 127.0.0.1, the engine, the SQLite store and a stub clone (a tiny real clone in the last test)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiogram  # noqa: F401  # imported up front: its first import takes seconds on a loaded machine
import pytest
from fake_bot_api import FakeBotAPI, private_message

from llmclone.clone import Reply
from llmclone.telegram import bot
from llmclone.telegram.config import TelegramConfig
from llmclone.telegram.store import Store

OWNER, FRIEND, STRANGER = 111, 222, 333
TOKEN = "123456:TEST-secret-token-value"


class StubClone:
    """Stands in for LLMClone.replies (the batcher's one call into a clone) where a test is about Telegram
    behaviour, not about the model."""

    def __init__(self, answer: Callable[[list[dict[str, str]]], list[str]] | None = None) -> None:
        self.histories: list[list[dict[str, str]]] = []
        self.chats: list[str | None] = []  # the memory chat of each reply asked for
        self.batches: list[int] = []
        self.answer = answer or (lambda h: [f"re: {h[-1]['content']}", "ну как-то так)"])

    def replies(self, histories: list[list[dict[str, str]]], **kw: Any) -> list[Reply]:
        self.batches.append(len(histories))
        self.histories += histories
        self.chats += kw.get("chats") or [None] * len(histories)
        return [Reply(self.answer(h), 0, 0, "stop") for h in histories]


def fast_config(**kw: Any) -> TelegramConfig:
    settings = {"owner_id": OWNER, "allow": [FRIEND], "debounce_seconds": 0.3, "read_delay_seconds": 0,
                "typing_chars_per_second": 1000, "max_typing_seconds": 0.05, "pause_between_messages": 0,
                "backoff_seconds": 0.05} | kw
    return TelegramConfig(**settings)


async def until(check: Callable[[], bool], timeout: float = 30) -> None:  # generous: CI machines get loaded
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.05)


class Harness:
    def __init__(self, api: FakeBotAPI, clone: Any, config: TelegramConfig, state: Path, mode: str = "bot") -> None:
        self.api, self.clone, self.config, self.state, self.mode = api, clone, config, state, mode
        self.stop_event: asyncio.Event | None = None
        self.task: asyncio.Task[Any] | None = None

    def start(self) -> None:
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(bot.run(self.clone, self.config, str(self.state), self.mode, stop=self.stop_event,
                                                polling_timeout=1))

    async def stop(self) -> Any:
        assert self.stop_event is not None and self.task is not None
        self.stop_event.set()
        return await asyncio.wait_for(self.task, 20)

    async def crash(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task

    def texts(self, chat: int | None = None) -> list[str]:
        return [s["text"] for s in self.api.sent if chat is None or s["chat_id"] == chat]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)


def scenario(body: Callable[[FakeBotAPI], Any], monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        api = FakeBotAPI()
        monkeypatch.setenv("TELEGRAM_API_BASE", await api.start())
        try:
            await body(api)
        finally:
            await api.stop()

    asyncio.run(main())


def test_reply_typing_allowlist_and_owner_commands(env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    clone = StubClone()

    async def body(api: FakeBotAPI) -> None:
        h = Harness(api, clone, fast_config(), tmp_path / "state.sqlite")
        h.start()
        api.add_update(private_message(1, FRIEND, "привет"))
        await until(lambda: len(h.texts(FRIEND)) == 2)
        assert h.texts(FRIEND) == ["re: привет", "ну как-то так)"]
        assert any(a["chat_id"] == FRIEND and a["action"] == "typing" for a in api.actions)

        api.add_update(private_message(2, STRANGER, "hello?"))
        api.add_update(private_message(3, STRANGER, "/start"))
        await until(lambda: len(h.texts(STRANGER)) == 1)
        assert "not allowed" in h.texts(STRANGER)[0]

        api.add_update(private_message(4, STRANGER, "/allow 333"))  # not the owner: no effect
        api.add_update(private_message(5, OWNER, f"/allow {STRANGER}"))
        await until(lambda: f"allowed: {STRANGER}" in h.texts(OWNER))
        api.add_update(private_message(6, STRANGER, "can we talk now?"))
        await until(lambda: "re: can we talk now?" in h.texts(STRANGER))

        api.add_update(private_message(7, OWNER, "/pause"))
        await until(lambda: any(t.startswith("paused") for t in h.texts(OWNER)))
        api.add_update(private_message(8, FRIEND, "ты тут?"))
        await asyncio.sleep(1.0)
        assert "re: ты тут?" not in h.texts(FRIEND)
        api.add_update(private_message(9, OWNER, "/resume"))
        api.add_update(private_message(10, OWNER, "/stats"))
        await until(lambda: any(t.startswith("chats ") for t in h.texts(OWNER)))
        api.add_update(private_message(11, FRIEND, "а сейчас?"))
        await until(lambda: h.texts(FRIEND)[-2:] == ["re: а сейчас?", "ну как-то так)"])

        api.add_update(private_message(12, FRIEND, "/reset"))
        await until(lambda: "(conversation forgotten)" in h.texts(FRIEND))
        api.add_update(private_message(13, FRIEND, "заново"))
        await until(lambda: "re: заново" in h.texts(FRIEND))
        assert clone.histories[-1] == [{"role": "user", "content": "заново"}]
        await h.stop()
        audit = Store(tmp_path / "state.sqlite").audit()
        assert [a["text"] for a in audit if a["chat_id"] == FRIEND][:2] == ["re: привет", "ну как-то так)"]
        assert (tmp_path / "state.sqlite").stat().st_mode & 0o077 == 0
        logging.getLogger("aiogram.client").warning("request failed: %s", f"{api.url}/bot{TOKEN}/getMe")

    scenario(body, monkeypatch)
    assert "running as @clone_test_bot" in caplog.text and "<secret>" in caplog.text
    assert TOKEN not in caplog.text and TOKEN.split(":")[1] not in caplog.text


def test_chats_waiting_together_are_answered_in_one_batch(env: None, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    """While the model answers one chat, two others come in; they are decoded together, each with its own
    history and reply."""
    import threading

    others = (444, 555)
    gate = threading.Event()

    def answer(history: list[dict[str, str]]) -> list[str]:
        if history[-1]["content"] == "first":
            assert gate.wait(20)  # the model busy with the first chat
        return [f"re: {history[-1]['content']}"]

    clone = StubClone(answer)

    async def body(api: FakeBotAPI) -> None:
        h = Harness(api, clone, fast_config(allow=[FRIEND, *others]), tmp_path / "state.sqlite")
        h.start()
        api.add_update(private_message(1, FRIEND, "first"))
        await until(lambda: clone.batches == [1])
        for i, chat in enumerate(others):
            api.add_update(private_message(2 + i, chat, f"hi from {chat}"))
        # typing starts right after a reply is queued
        await until(lambda: all(any(a["chat_id"] == c and a["action"] == "typing" for a in api.actions) for c in others))
        gate.set()
        await until(lambda: all(h.texts(c) == [f"re: hi from {c}"] for c in others))
        assert h.texts(FRIEND) == ["re: first"]
        assert clone.batches == [1, 2]
        await h.stop()

    scenario(body, monkeypatch)


def test_debounce_answers_a_burst_once(env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clone = StubClone(lambda h: [f"got {len(h)}"])

    async def body(api: FakeBotAPI) -> None:
        h = Harness(api, clone, fast_config(debounce_seconds=1.5), tmp_path / "s.sqlite")
        h.start()
        for i, text in enumerate(["слушай", "а ты", "завтра свободен?"]):
            api.add_update(private_message(20 + i, FRIEND, text))
            await asyncio.sleep(0.2)
        await until(lambda: bool(h.texts(FRIEND)))
        await asyncio.sleep(1.2)
        assert h.texts(FRIEND) == ["got 3"] and len(clone.histories) == 1
        assert [m["content"] for m in clone.histories[0]] == ["слушай", "а ты", "завтра свободен?"]
        await h.stop()

    scenario(body, monkeypatch)


def test_long_reply_split_and_retries(env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    long = ("Это длинное предложение про всё на свете. " * 200).strip()  # ~8,600 characters
    clone = StubClone(lambda h: [long])

    async def body(api: FakeBotAPI) -> None:
        import aiohttp

        h = Harness(api, clone, fast_config(), tmp_path / "s.sqlite")
        h.start()
        async with aiohttp.ClientSession(api.url) as control:  # the server's HTTP control endpoints
            for failure in ({"method": "sendMessage", "status": 429, "retry_after": 1, "count": 1},
                            {"method": "sendMessage", "status": 502, "count": 1},
                            {"method": "sendChatAction", "status": 200, "delay": 1.5, "count": 1}):
                await control.post("/control/fail", json=failure)
            started = time.monotonic()
            await control.post("/control/update", json=private_message(30, FRIEND, "расскажи"))
            await until(lambda: sum(len(t) for t in h.texts(FRIEND)) >= len(long) - 10, timeout=15)
            assert time.monotonic() - started >= 1.0  # waited what Telegram asked
            parts = [s["text"] for s in await (await control.get("/control/sent")).json()]
        assert len(parts) == 3 and all(len(p) <= 4096 for p in parts)
        assert " ".join(parts) == long and all(p.endswith(".") for p in parts)
        assert api.calls.count("sendMessage") == 5  # 3 delivered + the 429 and the 502
        await h.stop()
        state = sorted(tmp_path.glob("s.sqlite*"))
        assert state and all(f.stat().st_mode & 0o077 == 0 for f in state)

    scenario(body, monkeypatch)


def test_html_error_pages_are_retried_and_never_log_the_token(env: None, monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An outage answered with nginx's HTML page (not Telegram's JSON) is retried like any 5xx, and the page,
    which echoes the URL with the token in it, reaches the log redacted, tracebacks included."""
    import logging

    caplog.set_level(logging.DEBUG)
    clone = StubClone(lambda h: [f"re: {h[-1]['content']}"])

    async def body(api: FakeBotAPI) -> None:
        api.failures.append({"method": "sendMessage", "status": 502, "html": True, "count": 2})
        h = Harness(api, clone, fast_config(), tmp_path / "s.sqlite")
        h.start()
        api.add_update(private_message(50, FRIEND, "ты тут?"))
        await until(lambda: h.texts(FRIEND) == ["re: ты тут?"], timeout=20)
        assert api.calls.count("sendMessage") == 3  # two HTML pages, then delivered without a restart
        api.failures.append({"method": "getMe", "status": 502, "html": True, "count": 1})
        extra = bot.make_bot(TOKEN)
        try:  # what aiogram raises for such a page (its text holds the page), logged with its traceback
            await extra.get_me()
        except Exception:
            logging.getLogger("aiogram.event").exception("request failed")
        finally:
            await extra.session.close()
        await h.stop()

    scenario(body, monkeypatch)
    assert "<secret>" in caplog.text and "Bad Gateway" in caplog.text
    assert TOKEN not in caplog.text and TOKEN.split(":")[1] not in caplog.text


def test_no_loss_and_no_duplicate_across_restarts(env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clone = StubClone(lambda h: [f"re: {h[-1]['content']}"])
    state = tmp_path / "s.sqlite"

    async def body(api: FakeBotAPI) -> None:
        h = Harness(api, clone, fast_config(debounce_seconds=1.0), state)
        h.start()
        first = private_message(40, FRIEND, "раз")
        api.add_update(first)
        await until(lambda: h.texts(FRIEND) == ["re: раз"])
        api.add_update(private_message(41, FRIEND, "два"))
        await asyncio.sleep(0.4)  # received and stored, still in the debounce wait
        await h.crash()
        assert h.texts(FRIEND) == ["re: раз"]

        api.add_update(first)  # Telegram re-delivers an update whose handling it never saw confirmed
        h.start()
        await until(lambda: "re: два" in h.texts(FRIEND))
        await asyncio.sleep(1.5)
        assert h.texts(FRIEND) == ["re: раз", "re: два"]
        await h.stop()

    scenario(body, monkeypatch)


def test_media_reach_the_clone_as_placeholders(env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clone = StubClone(lambda h: ["ахах"])

    async def body(api: FakeBotAPI) -> None:
        h = Harness(api, clone, fast_config(), tmp_path / "m.sqlite")
        h.start()
        sticker = {"file_id": "s1", "file_unique_id": "u1", "type": "regular", "width": 512, "height": 512,
                   "is_animated": False, "is_video": False, "emoji": "😀"}
        photo = [{"file_id": "p1", "file_unique_id": "q1", "width": 90, "height": 90}]
        voice = {"file_id": "v1", "file_unique_id": "w1", "duration": 7}
        for i, extra in enumerate(({"sticker": sticker}, {"photo": photo, "caption": "смотри"}, {"voice": voice})):
            update = private_message(60 + i, FRIEND, "")
            del update["message"]["text"]
            update["message"].update(extra)
            api.add_update(update)
        await until(lambda: bool(h.texts(FRIEND)))
        await h.stop()
        assert [m["content"] for m in clone.histories[0]] == ["<sticker 😀>", "<photo> смотри", "<voice 0:07>"]

    scenario(body, monkeypatch)


def business_connection(conn_id: str, can_reply: bool = True, enabled: bool = True) -> dict[str, Any]:
    return {"business_connection": {"id": conn_id, "user": {"id": OWNER, "is_bot": False, "first_name": "Owner"},
                                    "user_chat_id": OWNER, "date": int(time.time()), "is_enabled": enabled,
                                    "rights": {"can_reply": can_reply}}}


def business_message(message_id: int, chat: int, sender: int, text: str, conn: str = "bc1",
                     date: int | None = None) -> dict[str, Any]:
    return {"business_message": {"message_id": message_id, "date": date or int(time.time()), "text": text,
                                 "business_connection_id": conn,
                                 "chat": {"id": chat, "type": "private", "first_name": "Customer"},
                                 "from": {"id": sender, "is_bot": False, "first_name": "Someone"}}}


def business_harness(api: FakeBotAPI, clone: Any, tmp_path: Path) -> Harness:
    """A business bot started and connected (connection bc1); the owner's own messages keep it quiet."""
    h = Harness(api, clone, fast_config(allow=[], quiet_after_owner_seconds=600), tmp_path / "b.sqlite", "business")
    h.start()
    api.add_update(business_connection("bc1"))
    return h


def test_business_bot(env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clone = StubClone(lambda h: [f"re: {h[-1]['content']}"])
    customer, other, readonly = 501, 502, 503

    async def body(api: FakeBotAPI) -> None:
        h = business_harness(api, clone, tmp_path)
        api.add_update(business_message(1, customer, customer, "здравствуйте, вы работаете?"))
        await until(lambda: bool(h.texts(customer)))
        assert h.texts(customer) == ["re: здравствуйте, вы работаете?"]
        assert api.sent[-1]["business_connection_id"] == "bc1"
        assert any(a["business_connection_id"] == "bc1" for a in api.actions)

        api.add_update(business_message(2, other, OWNER, "сейчас сам отвечу"))  # the owner wrote in this chat
        api.add_update(business_message(3, other, other, "ок, жду"))
        await asyncio.sleep(1.0)
        assert h.texts(other) == []

        api.add_update(business_connection("bc2", can_reply=False))
        api.add_update(business_message(4, readonly, readonly, "hello", conn="bc2"))
        api.add_update(business_message(5, customer, customer, "старое", date=int(time.time()) - 2 * 86400))
        await asyncio.sleep(1.0)
        assert h.texts(readonly) == [] and h.texts(customer) == ["re: здравствуйте, вы работаете?"]
        await h.stop()

    scenario(body, monkeypatch)


def test_a_tiny_clone_answers_through_the_bot(env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                              tiny_clone: Path) -> None:
    import shutil

    from llmclone.clone import LLMClone
    from llmclone.telegram.engine import memory_chat

    shutil.copytree(tiny_clone, tmp_path / "clone")  # the bot adds to its memory: keep the shared clone as it was
    clone = LLMClone.load(tmp_path / "clone", temperature=0, max_new_tokens=12)  # as a [reply] table would say
    question = [{"role": "user", "content": "привет! как дела?"}]
    expected = [m for m in clone.reply(question, chat=memory_chat(FRIEND)) if m.strip()]

    async def body(api: FakeBotAPI) -> None:
        h = Harness(api, clone, fast_config(), tmp_path / "t.sqlite")
        h.start()
        api.add_update(private_message(1, FRIEND, "привет! как дела?"))
        await until(lambda: bool(api.actions) and bool(Store(tmp_path / "t.sqlite").stats()["waiting"] == 0), 30)
        await h.stop()
        assert h.texts(FRIEND) == expected

    scenario(body, monkeypatch)


def test_the_live_memory_holds_what_the_clone_sent_and_the_owner_typed(env: None, monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path, example_dataset: Path) -> None:
    import json

    from llmclone.memory.recall import Memory
    from llmclone.telegram.engine import memory_chat

    (tmp_path / "clone").mkdir()
    stats = json.loads((example_dataset / "stats.json").read_text())
    clone = StubClone(lambda h: [f"re: {h[-1]['content']}"])
    clone.memory = Memory.build(tmp_path / "clone", example_dataset, stats)  # type: ignore[attr-defined]
    customer, other = 501, 502

    async def body(api: FakeBotAPI) -> None:
        h = business_harness(api, clone, tmp_path)
        api.add_update(business_message(1, customer, customer, "вы работаете в субботу?"))
        await until(lambda: bool(h.texts(customer)))
        api.add_update(business_message(2, other, other, "а доставка есть?"))
        api.add_update(business_message(3, other, OWNER, "да, по городу бесплатно"))  # the owner answers himself
        await until(lambda: len(clone.memory._live) == 2)  # type: ignore[attr-defined]
        await h.stop()

    scenario(body, monkeypatch)
    assert clone.chats == [memory_chat(customer)]
    clone.memory.close()  # type: ignore[attr-defined]
    after = Memory.load(tmp_path / "clone")  # a restart
    assert [(e.chat, e.said, e.owner, e.origin) for e in after._live] == [
        (memory_chat(customer), "вы работаете в субботу?", "re: вы работаете в субботу?", "sent"),
        (memory_chat(other), "а доставка есть?", "да, по городу бесплатно", "typed")]
    # the owner's words reach other chats; the customer's question stays in its own
    recalled = after.recall([{"role": "user", "content": "доставка по городу"}], memory_chat(customer))
    assert ("", "да, по городу бесплатно") in recalled.exchanges


def test_missing_token_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from llmclone.errors import UserError

    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    with pytest.raises(UserError, match="TELEGRAM_BOT_TOKEN"):
        asyncio.run(bot.run(StubClone(), fast_config(), str(tmp_path / "s.sqlite"), "bot"))


def test_guard_blocks_connections_beyond_loopback() -> None:
    import socket

    with socket.socket() as s, pytest.raises(AssertionError, match="must stay on"):
        s.connect(("149.154.167.50", 443))  # a Telegram data centre


def test_telegram_commands_bad_input(tiny_clone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import subprocess
    import sys

    def llmclone(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items()
                   if k not in ("TELEGRAM_BOT_TOKEN", "TG_API_ID", "TG_API_HASH", "TG_SESSION")}
        return subprocess.run([sys.executable, "-m", "llmclone", "telegram", *args], capture_output=True, text=True,
                              timeout=120, env={**environ, "LLMCLONE_HOME": str(tmp_path), **env})

    no_owner = llmclone("bot", str(tiny_clone), TELEGRAM_BOT_TOKEN=TOKEN)
    assert no_owner.returncode == 2 and "--owner-id" in no_owner.stderr
    no_token = llmclone("bot", str(tiny_clone), "--owner-id", "5")
    assert no_token.returncode == 2 and "TELEGRAM_BOT_TOKEN" in no_token.stderr and "Traceback" not in no_token.stderr
    bad = tmp_path / "tg.toml"
    bad.write_text("[telegram]\ndebounce_seconds = -1\n")
    result = llmclone("bot", str(tiny_clone), "--config", str(bad), "--owner-id", "5", TELEGRAM_BOT_TOKEN=TOKEN)
    assert result.returncode == 2 and "debounce_seconds" in result.stderr
    no_session = llmclone("userbot", str(tiny_clone), TG_API_ID="123", TG_API_HASH="abc")
    assert no_session.returncode == 2 and "llmclone telegram login" in no_session.stderr
    bad_id = llmclone("userbot", str(tiny_clone), TG_API_ID="abc", TG_API_HASH="abc")
    assert bad_id.returncode == 2 and "TG_API_ID" in bad_id.stderr


@pytest.mark.parametrize("failure", ["401", "500 then up", "always 502 html"])
def test_start_up_retries_outages_and_names_a_rejected_token(env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture, failure: str) -> None:
    from llmclone.errors import UserError

    monkeypatch.setattr(bot, "START_BACKOFF", 0.01)
    clone = StubClone(lambda h: ["ok"])

    async def body(api: FakeBotAPI) -> None:
        if failure == "401":
            api.failures.append({"method": "getMe", "status": 401, "description": "Unauthorized"})
        elif failure == "500 then up":
            api.failures.append({"method": "getMe", "status": 500, "count": 2})
        else:
            api.failures.append({"method": "deleteWebhook", "status": 502, "html": True, "count": 100})
        h = Harness(api, clone, fast_config(), tmp_path / "s.sqlite")
        h.start()
        if failure == "500 then up":
            await until(lambda: api.calls.count("getUpdates") > 0, timeout=20)  # polling after two 500s
            assert api.calls[:6] == ["deleteWebhook", "getMe"] * 3  # two 500s, then up
            await h.stop()
            return
        with pytest.raises(UserError) as caught:
            await asyncio.wait_for(h.task, 20)  # type: ignore[arg-type]
        message = str(caught.value)
        assert ("rejected the bot token" in message) if failure == "401" else ("cannot reach" in message)
        assert TOKEN.split(":")[1] not in message
        if failure != "401":
            assert api.calls.count("deleteWebhook") == bot.START_ATTEMPTS

    scenario(body, monkeypatch)
    assert TOKEN.split(":")[1] not in caplog.text
