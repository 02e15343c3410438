"""The userbot: the reply policy with a fake clock, and the real Telethon client's update dispatch driving
our handlers, with only the network call (`client._call`) stubbed. No MTProto server exists offline."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from telethon import TelegramClient, errors, functions, types
from telethon.sessions import StringSession
from test_telegram_bot import StubClone

from llmclone.telegram.config import TelegramConfig
from llmclone.telegram.policy import ChatFacts, Policy, split_message
from llmclone.telegram.store import Store
from llmclone.telegram.userbot import DRAFT_HELP, Userbot

OWNER, FRIEND, STRANGER, BOT = 111, 222, 333, 444
START = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


# -- policy ---------------------------------------------------------------------------------------------


def test_policy_rules_with_a_fake_clock(tmp_path: Path) -> None:
    config = TelegramConfig(owner_id=OWNER, allow=[FRIEND], per_chat_hourly_cap=2, daily_cap=3,
                            quiet_after_owner_seconds=600)
    store = Store(tmp_path / "s.sqlite")
    policy = Policy(config, store, started=START)
    facts = ChatFacts(FRIEND, FRIEND)
    assert policy.quiet_reason(facts, START, owner_rules=True) is None
    store.add_owner(FRIEND, 1, "сам отвечу", START, by_clone=False)
    assert policy.quiet_reason(facts, START + 599, owner_rules=True) == "the owner wrote here recently"
    assert policy.quiet_reason(facts, START + 599, owner_rules=False) is None  # a bot is not the owner's account
    assert policy.quiet_reason(facts, START + 601, owner_rules=True) is None
    assert policy.quiet_reason(ChatFacts(FRIEND, FRIEND, owner_online=True), START + 601, True) == "the owner is online"
    for i in range(2):
        store.log_sent(FRIEND, f"m{i}", START + 700 + i, "userbot")
    assert policy.quiet_reason(facts, START + 800, True) == "hourly cap for this chat reached"
    assert policy.quiet_reason(facts, START + 700 + 3601, True) is None
    store.log_sent(7, "x", START + 800, "userbot")
    assert policy.quiet_reason(ChatFacts(9, 9), START + 900, True) == "daily cap reached"
    assert policy.quiet_reason(ChatFacts(9, 9), START + 700 + 86401, True) is None
    store.set("paused", True)
    assert policy.quiet_reason(facts, START + 10**6, True) == "paused"
    assert policy.allowed(FRIEND) and policy.allowed(OWNER) and not policy.allowed(STRANGER)
    store.set("deny", [FRIEND])
    assert not policy.allowed(FRIEND)


def test_typing_time_and_disclosure(tmp_path: Path) -> None:
    config = TelegramConfig(typing_chars_per_second=10, max_typing_seconds=5, disclosure=" (AI)")
    policy = Policy(config, Store(tmp_path / "s.sqlite"), START)
    assert policy.typing_seconds("x" * 20) == 2 and policy.typing_seconds("x" * 500) == 5
    assert policy.outgoing(["привет", "", "как ты"]) == ["привет", "как ты (AI)"]


@given(st.text(alphabet=st.sampled_from("ab .!\n"), max_size=3000), st.integers(20, 400))
def test_split_message_keeps_the_text_within_the_limit(text: str, limit: int) -> None:
    parts = split_message(text, limit)
    assert all(0 < len(p) <= limit for p in parts)
    assert "".join(parts).replace(" ", "").replace("\n", "") == text.replace(" ", "").replace("\n", "")


# -- the Telethon handler --------------------------------------------------------------------------------


class FakeTelegram:
    """Answers the client's requests the way Telegram would; records what was sent."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.sent: list[tuple[Any, str]] = []
        self.raise_next: list[BaseException] = []
        self.online = False
        self.next_id = 9000

    async def __call__(self, sender: Any, request: Any, ordered: bool = False, flood_sleep_threshold: Any = None) -> Any:
        self.requests.append(request)
        if isinstance(request, functions.messages.SendMessageRequest):
            if self.raise_next:
                raise self.raise_next.pop(0)
            self.next_id += 1
            self.sent.append((request.peer, request.message))
            return types.UpdateShortSentMessage(id=self.next_id, pts=1, pts_count=1, date=datetime.now(UTC), out=True)
        if isinstance(request, functions.messages.SetTypingRequest):
            return True
        if isinstance(request, functions.users.GetUsersRequest):
            status = types.UserStatusOnline(expires=datetime.now(UTC)) if self.online else types.UserStatusOffline(
                was_online=datetime.now(UTC))
            return [types.User(id=OWNER, is_self=True, first_name="Owner", status=status)]
        raise AssertionError(f"unexpected request {type(request).__name__}")

    def to(self, user_id: int) -> list[str]:
        return [text for peer, text in self.sent if getattr(peer, "user_id", None) == user_id]

    def saved(self) -> list[str]:
        return [text for peer, text in self.sent if isinstance(peer, types.InputPeerSelf)]


USERS = {uid: types.User(id=uid, access_hash=uid * 7, first_name=f"u{uid}", bot=uid == BOT)
         for uid in (FRIEND, STRANGER, BOT)}


def make_userbot(tmp_path: Path, clone: Any, **settings: Any) -> tuple[Userbot, FakeTelegram, Clock, list[float]]:
    client = TelegramClient(StringSession(), 12345, "0" * 32)
    fake = FakeTelegram()
    client._call = fake  # the network: everything above it (entities, requests, responses, events) is real Telethon
    client._mb_entity_cache.set_self_user(OWNER, False, 1)
    client._mb_entity_cache.extend(list(USERS.values()), [])
    clock, slept = Clock(), []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds
        await asyncio.sleep(0)

    config = TelegramConfig(owner_id=OWNER, allow=[FRIEND, BOT], **settings)
    userbot = Userbot(client, clone, Store(tmp_path / "u.sqlite"), config, clock=clock, sleep=sleep)
    userbot.attach()
    return userbot, fake, clock, slept


_ids = iter(range(1, 10**6))


async def deliver(userbot: Userbot, peer: Any, text: str, out: bool = False, sender: int | None = None,
                  date: float | None = None, reply_to: int | None = None, fwd: bool = False) -> int:
    """An update as Telegram pushes it, through the client's own dispatch (event builders, filters, handlers)."""
    mid = next(_ids)
    message = types.Message(
        id=mid, peer_id=peer, date=datetime.fromtimestamp(date or userbot.engine.clock() + 1, UTC), message=text, out=out,
        from_id=types.PeerUser(OWNER if out else (sender or getattr(peer, "user_id", 0))),
        reply_to=types.MessageReplyHeader(reply_to_msg_id=reply_to) if reply_to else None,
        fwd_from=types.MessageFwdHeader(date=datetime.now(UTC), from_name="x") if fwd else None)
    update = types.UpdateNewMessage(message=message, pts=mid, pts_count=1)
    update._entities = {u.id: u for u in USERS.values()}
    await userbot.client._dispatch_update(update)
    await userbot.engine.drain()
    return mid


def test_draft_mode_approve_edit_reject(tmp_path: Path) -> None:
    async def main() -> None:
        userbot, fake, _, _ = make_userbot(tmp_path, StubClone(lambda h: [f"re: {h[-1]['content']}"]))
        await deliver(userbot, types.PeerUser(FRIEND), "привет")
        assert fake.to(FRIEND) == [] and len(fake.saved()) == 1  # nothing sent: a draft for the owner
        assert "re: привет" in fake.saved()[0] and DRAFT_HELP in fake.saved()[0]
        draft_id = fake.next_id
        await deliver(userbot, types.PeerUser(OWNER), "/ok", out=True, reply_to=draft_id)
        assert fake.to(FRIEND) == ["re: привет"]

        await deliver(userbot, types.PeerUser(FRIEND), "ты где?")
        await deliver(userbot, types.PeerUser(OWNER), "дома, скоро буду", out=True, reply_to=fake.next_id)
        assert fake.to(FRIEND)[-1] == "дома, скоро буду"

        await deliver(userbot, types.PeerUser(FRIEND), "займи денег")
        draft = fake.next_id
        await deliver(userbot, types.PeerUser(OWNER), "/no", out=True, reply_to=draft)
        await deliver(userbot, types.PeerUser(OWNER), "/ok", out=True, reply_to=draft)  # already decided
        assert len(fake.to(FRIEND)) == 2
        assert [a["text"] for a in userbot.store.audit()] == ["re: привет", "дома, скоро буду"]

    asyncio.run(main())


def test_the_memory_keeps_approved_and_rewritten_drafts_as_such(tmp_path: Path, example_dataset: Path) -> None:
    import json

    from llmclone.memory.recall import Memory
    from llmclone.telegram.engine import memory_chat

    clone = StubClone(lambda h: [f"re: {h[-1]['content']}"])
    (tmp_path / "clone").mkdir()
    stats = json.loads((example_dataset / "stats.json").read_text())
    clone.memory = Memory.build(tmp_path / "clone", example_dataset, stats)  # type: ignore[attr-defined]

    async def main() -> None:
        userbot, fake, _, _ = make_userbot(tmp_path, clone)
        await deliver(userbot, types.PeerUser(FRIEND), "привет")
        await deliver(userbot, types.PeerUser(OWNER), "/ok", out=True, reply_to=fake.next_id)
        await deliver(userbot, types.PeerUser(FRIEND), "ты где?")
        await deliver(userbot, types.PeerUser(OWNER), "дома, скоро буду", out=True, reply_to=fake.next_id)
        await deliver(userbot, types.PeerUser(FRIEND), "займи денег")
        await deliver(userbot, types.PeerUser(OWNER), "/no", out=True, reply_to=fake.next_id)

    asyncio.run(main())
    clone.memory.close()  # type: ignore[attr-defined]
    key = memory_chat(FRIEND)
    assert [(e.chat, e.said, e.owner, e.origin) for e in Memory.load(tmp_path / "clone")._live] == [
        (key, "привет", "re: привет", "approved"), (key, "ты где?", "дома, скоро буду", "typed")]


def test_auto_send_pacing_disclosure_and_kill_switch(tmp_path: Path) -> None:
    async def main() -> None:
        userbot, fake, _, slept = make_userbot(tmp_path, StubClone(lambda h: ["ага", "щас"]), disclosure=" 🤖",
                                               auto_send=[FRIEND], quiet_after_owner_seconds=0)
        await deliver(userbot, types.PeerUser(FRIEND), "ты идёшь?")
        assert fake.to(FRIEND) == ["ага", "щас 🤖"]
        assert userbot.config.debounce_seconds in slept and userbot.config.read_delay_seconds in slept
        assert any(isinstance(r, functions.messages.SetTypingRequest) for r in fake.requests)
        await deliver(userbot, types.PeerUser(OWNER), "/pause", out=True)
        await deliver(userbot, types.PeerUser(FRIEND), "алло")
        assert fake.to(FRIEND) == ["ага", "щас 🤖"]
        await deliver(userbot, types.PeerUser(OWNER), "/resume", out=True)
        await deliver(userbot, types.PeerUser(FRIEND), "алло?")
        assert len(fake.to(FRIEND)) == 4

    asyncio.run(main())


def test_what_the_userbot_ignores(tmp_path: Path) -> None:
    async def main() -> None:
        clone = StubClone()
        userbot, fake, clock, _ = make_userbot(tmp_path, clone, auto_send=[FRIEND, STRANGER, BOT])
        await deliver(userbot, types.PeerChat(77), "всем привет", sender=FRIEND)  # a group
        await deliver(userbot, types.PeerUser(STRANGER), "hi")  # not on the allowlist
        await deliver(userbot, types.PeerUser(BOT), "I am a bot")  # allowlisted, but a bot
        await deliver(userbot, types.PeerUser(FRIEND), "смотри", fwd=True)  # a forward
        await deliver(userbot, types.PeerUser(FRIEND), "старое", date=START - 3600)  # before start-up
        assert clone.histories == [] and fake.sent == []

        await deliver(userbot, types.PeerUser(FRIEND), "сам напишу", out=True)  # the owner is in this chat
        await deliver(userbot, types.PeerUser(FRIEND), "ок")
        assert fake.sent == []
        clock.now += userbot.config.quiet_after_owner_seconds + 1
        fake.online = True
        userbot.gateway._online = (0.0, False)  # forget the cached status (kept 30 s)
        await deliver(userbot, types.PeerUser(FRIEND), "ты тут?")
        assert fake.sent == []  # the owner is online
        fake.online = False
        userbot.gateway._online = (0.0, False)
        await deliver(userbot, types.PeerUser(FRIEND), "ау")
        assert len(fake.to(FRIEND)) == 2

    asyncio.run(main())


def test_flood_wait_is_waited_and_peer_flood_stops(tmp_path: Path) -> None:
    async def main() -> None:
        userbot, fake, _, slept = make_userbot(tmp_path, StubClone(lambda h: ["ок"]), auto_send=[FRIEND])
        fake.raise_next.append(errors.FloodWaitError(request=None, capture=42))
        await deliver(userbot, types.PeerUser(FRIEND), "раз")
        assert 42 in slept and fake.to(FRIEND) == ["ок"]

        fake.raise_next.append(errors.PeerFloodError(request=None))
        await deliver(userbot, types.PeerUser(FRIEND), "два")
        assert userbot.stopped.is_set() and "stop" in (userbot.engine.stopped or "")
        assert userbot.store.get("paused") is True  # stays stopped after a restart until the owner resumes
        await deliver(userbot, types.PeerUser(FRIEND), "три")
        assert fake.to(FRIEND) == ["ок"]

    asyncio.run(main())


def test_circuit_breaker_with_a_fake_clock() -> None:
    from llmclone.telegram.engine import Breaker, CircuitOpen, with_retries

    clock = Clock()
    config = TelegramConfig(max_retries=10, breaker_failures=3, breaker_cooldown_seconds=60, backoff_seconds=1)
    breaker = Breaker(config.breaker_failures, config.breaker_cooldown_seconds, clock)
    slept: list[float] = []
    calls = 0

    class Gateway:
        def classify(self, exc: BaseException) -> tuple[str, float] | None:
            return ("retry", 0.0) if isinstance(exc, ConnectionError) else None

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    async def main() -> None:
        with pytest.raises(CircuitOpen):
            await with_retries(failing, Gateway(), config, breaker, sleep)  # type: ignore[arg-type]
        assert calls == 3 and slept == [1, 2, 4]  # exponential backoff, then the breaker opens
        with pytest.raises(CircuitOpen):
            await with_retries(failing, Gateway(), config, breaker, sleep)  # type: ignore[arg-type]
        assert calls == 3  # open: no call goes out
        clock.now += 61

        async def works() -> str:
            return "ok"

        assert await with_retries(works, Gateway(), config, breaker, sleep) == "ok"  # type: ignore[arg-type]
        with pytest.raises(ValueError):  # not a transient error: raised at once, no retry
            await with_retries(lambda: _raise(ValueError("bug")), Gateway(), config, breaker, sleep)  # type: ignore[arg-type]

    asyncio.run(main())


async def _raise(exc: BaseException) -> None:
    raise exc


def test_login_keeps_the_session_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import telethon.sync

    from llmclone.telegram import userbot

    class FakeClient:  # `start()` would ask for the phone, the code and the 2FA password
        def __init__(self, session: Any, api_id: int, api_hash: str) -> None:
            assert api_id == 12345 and api_hash == "abcdef0123"
            self.session = type("S", (), {"save": lambda self: "1BVtsOK4Bu-secret-session"})()

        def __enter__(self) -> FakeClient:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(telethon.sync, "TelegramClient", FakeClient)
    monkeypatch.setenv("LLMCLONE_HOME", str(tmp_path))
    monkeypatch.setenv("TG_API_ID", "12345")
    monkeypatch.setenv("TG_API_HASH", "abcdef0123")
    monkeypatch.delenv("TG_SESSION", raising=False)
    path = userbot.login()
    assert path.read_text() == "1BVtsOK4Bu-secret-session" and path.stat().st_mode & 0o077 == 0
    assert userbot.read_session() == "1BVtsOK4Bu-secret-session"
    monkeypatch.setenv("TG_SESSION", "from-env")
    assert userbot.read_session() == "from-env"


def test_echo_of_the_clones_own_message_is_not_the_owner_typing(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    store.add_owner(FRIEND, 77, "ок", START, by_clone=True)
    store.add_owner(FRIEND, 77, "ок", START, by_clone=False)  # the same message seen again as an outgoing update
    assert store.chat(FRIEND)["owner_last"] == 0
    store.add_owner(FRIEND, 78, "сам", START + 5, by_clone=False)
    assert store.chat(FRIEND)["owner_last"] == START + 5


def test_example_config_is_valid() -> None:
    from llmclone.config import ReplyConfig, load_reply_config
    from llmclone.telegram.config import load_telegram_config

    example = Path(__file__).resolve().parents[1] / "examples" / "telegram.toml"
    config = load_telegram_config(example)
    assert load_reply_config(example) == ReplyConfig(engine="torch", device="auto", load="auto", temperature=0.8,
                                                     max_new_tokens=80)
    assert config.owner_id == 123456789 and config.draft_mode and config.auto_send == []
    assert set(TelegramConfig.model_fields) - {"max_retries", "backoff_seconds", "breaker_failures",
                                                "breaker_cooldown_seconds", "business_reply_window_hours"} <= set(
        __import__("tomllib").loads(example.read_text())["telegram"])  # every user-facing setting is shown
