"""`llmclone telegram userbot`: the clone on the owner's own account (Telethon, MTProto).

Cautious by default (README, "llmclone telegram"): private chats with allowlisted people only; replies are
drafts sent to the owner's Saved Messages, where the owner answers the draft with /ok (send it), /no
(drop it) or their own text (send that instead); auto-send only for chats the owner opted in
(`auto_send` in the config, or /auto ID in Saved Messages); never starts a conversation; ignores groups,
channels, bots, forwards and anything from before start-up; quiet where the owner wrote recently or while
the owner is online; hourly/daily caps; /pause and /resume in Saved Messages; optional disclosure suffix;
every sent message in the audit log. FLOOD_WAIT is waited out; PEER_FLOOD stops the clone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from llmclone.errors import UserError
from llmclone.memory.exchanges import APPROVED, TYPED
from llmclone.models.base_models import home
from llmclone.telegram.config import TelegramConfig, install_log_redaction, secret
from llmclone.telegram.engine import Engine, Incoming
from llmclone.telegram.media import telethon_text
from llmclone.telegram.policy import ChatFacts
from llmclone.telegram.store import Store

log = logging.getLogger("llmclone.telegram")
ONLINE_CACHE_SECONDS = 30
DRAFT_HELP = "Reply to this message with /ok to send it, /no to drop it, or your own text to send that instead."


class UserbotGateway:
    def __init__(self, client: Any) -> None:
        self.client = client
        self._online: tuple[float, bool] = (0.0, False)

    async def send(self, chat_id: int, text: str, conn: str | None) -> int:
        return (await self.client.send_message(chat_id, text)).id

    async def typing(self, chat_id: int, conn: str | None) -> None:
        from telethon import functions, types

        await self.client(functions.messages.SetTypingRequest(peer=chat_id, action=types.SendMessageTypingAction()))

    async def owner_online(self) -> bool:
        from telethon import functions, types

        at, online = self._online
        if time.monotonic() - at > ONLINE_CACHE_SECONDS:
            users = await self.client(functions.users.GetUsersRequest([types.InputUserSelf()]))
            online = isinstance(getattr(users[0], "status", None), types.UserStatusOnline)
            self._online = (time.monotonic(), online)
        return online

    def classify(self, exc: BaseException) -> tuple[str, float] | None:
        from telethon import errors

        if isinstance(exc, errors.PeerFloodError):
            return ("stop", 0.0)
        if isinstance(exc, errors.FloodWaitError):
            return ("wait", float(exc.seconds))
        if isinstance(exc, errors.ServerError | errors.RpcCallFailError | ConnectionError | OSError | asyncio.TimeoutError):
            return ("retry", 0.0)
        return None


class Userbot:
    """The event handlers, on a Telethon client that is already authorised."""

    def __init__(self, client: Any, clone: Any, store: Store, config: TelegramConfig, clock: Any = time.time,
                 sleep: Any = asyncio.sleep) -> None:
        self.client, self.store, self.config = client, store, config
        self.gateway = UserbotGateway(client)
        self.engine = Engine(clone, store, config, self.gateway, "userbot", clock=clock, sleep=sleep,
                             owner_online=self.gateway.owner_online, suggest=self.suggest)
        self.started = clock()
        self.stopped = asyncio.Event()
        self.engine.on_stop = self.stopped.set

    def attach(self) -> None:
        from telethon import events

        self.client.add_event_handler(self.on_message, events.NewMessage())

    async def on_message(self, event: Any) -> None:
        from telethon import types

        m = event.message
        me = self.client._mb_entity_cache.self_id
        private = isinstance(m.peer_id, types.PeerUser)
        if m.out:
            if private and m.peer_id.user_id == me:
                await self.saved_messages(m)
            elif private:  # the owner wrote in a chat themselves: the clone keeps quiet there for a while
                self.engine.owner_wrote(m.peer_id.user_id, m.id, telethon_text(m), m.date.timestamp())
            return
        sender = event.sender
        facts = ChatFacts(event.chat_id, m.sender_id or 0, private=private,
                          sender_is_bot=bool(getattr(sender, "bot", False)) if sender is not None else False,
                          forwarded=m.fwd_from is not None, sent_before_start=m.date.timestamp() < self.started)
        if private and sender is None:
            facts.sender_is_bot = True  # unknown sender: do not risk answering a bot or a service account
        await self.engine.receive(Incoming(event.chat_id, m.id, m.sender_id or 0, telethon_text(m), m.date.timestamp()),
                                  facts)

    # -- drafts and the owner's commands in Saved Messages -------------------------------------------------
    async def suggest(self, chat_id: int, parts: list[str], upto: int) -> None:
        body = "\n".join(parts)
        note = await self.engine.call(lambda: self.client.send_message(
            "me", f"🤖 Draft reply for chat {chat_id}:\n\n{body}\n\n{DRAFT_HELP}"))
        self.store.add_draft(note.id, chat_id, body, upto)

    async def saved_messages(self, m: Any) -> None:
        text = (m.message or "").strip()
        command, _, arg = text.partition(" ")
        if command in ("/pause", "/resume"):
            self.store.set("paused", command == "/pause")
            await self.note("paused: no replies until /resume" if command == "/pause" else "resumed")
            return
        if command in ("/auto", "/manual"):
            try:
                chat = int(arg)
            except ValueError:
                await self.note(f"usage: {command} CHAT_ID")
                return
            auto = set(self.config.auto_send) | set(self.store.get("auto_send", []))
            (auto.add if command == "/auto" else auto.discard)(chat)
            self.store.set("auto_send", sorted(auto))
            self.config.auto_send = sorted(auto)
            await self.note(f"chat {chat}: {'replies sent automatically' if command == '/auto' else 'drafts only'}")
            return
        reply_to = getattr(m.reply_to, "reply_to_msg_id", None)
        draft = self.store.draft(reply_to) if reply_to else None
        if draft is None or draft["status"] != "pending":
            return  # the owner's own notes
        if text == "/no":
            self.store.set_draft_status(reply_to, "rejected")
            await self.note("dropped")
            return
        final = draft["text"] if text == "/ok" else text
        self.store.set_draft_status(reply_to, "approved" if text == "/ok" else "edited")
        parts = self.engine.policy.outgoing(final.split("\n"))
        await self.engine.send_parts(draft["chat_id"], parts, None, None, origin=APPROVED if text == "/ok" else TYPED)
        await self.note(f"sent to chat {draft['chat_id']}")

    async def note(self, text: str) -> None:
        await self.engine.call(lambda: self.client.send_message("me", text), required=False)


def session_file() -> Path:
    return home() / "telegram" / "userbot.session"


def read_session() -> str:
    value = os.environ.get("TG_SESSION", "").strip()
    if value:
        return value
    path = session_file()
    if path.is_file():
        return path.read_text().strip()
    raise UserError("no Telegram session: run `llmclone telegram login` first, or set TG_SESSION.")


def api_credentials() -> tuple[int, str]:
    raw = secret("TG_API_ID", "your api_id from my.telegram.org")
    try:
        api_id = int(raw)
    except ValueError:
        raise UserError("TG_API_ID must be the number my.telegram.org shows as api_id.") from None
    return api_id, secret("TG_API_HASH", "your api_hash from my.telegram.org")


def login() -> Path:
    """Sign in interactively (phone, code, 2FA password) and keep the session string, readable by you only."""
    from telethon.sessions import StringSession
    from telethon.sync import TelegramClient

    from llmclone.dataset.io import PRIVATE_FILE, private_umask

    api_id, api_hash = api_credentials()
    with TelegramClient(StringSession(), api_id, api_hash) as client:
        session = client.session.save()
    path = session_file()
    with private_umask():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(session)
    os.chmod(tmp, PRIVATE_FILE)
    tmp.replace(path)
    return path


async def run(clone: Any, config: TelegramConfig, state: str) -> None:
    from telethon import TelegramClient
    from telethon.sessions import StringSession

    api_id, api_hash = api_credentials()
    session = read_session()
    install_log_redaction([api_hash, session])
    client = TelegramClient(StringSession(session), api_id, api_hash, flood_sleep_threshold=60)
    await client.connect()
    if not await client.is_user_authorized():
        raise UserError("the Telegram session is no longer valid; run `llmclone telegram login` again.")
    me = await client.get_me()
    config.owner_id = me.id  # the account's owner: their own messages pause the clone, never answered
    store = Store(state)
    config.auto_send = sorted(set(config.auto_send) | set(store.get("auto_send", [])))
    bot = Userbot(client, clone, store, config)
    bot.attach()
    bot.engine.recover()
    log.info("userbot running (draft mode: %s); /pause in Saved Messages stops it", config.draft_mode)
    try:
        disconnected = asyncio.ensure_future(client.disconnected)
        stopped = asyncio.ensure_future(bot.stopped.wait())
        await asyncio.wait([disconnected, stopped], return_when=asyncio.FIRST_COMPLETED)
        if bot.engine.stopped:
            raise UserError(f"stopped: {bot.engine.stopped}. Telegram limits this account now; wait before starting again.")
    finally:
        bot.engine.cancel()
        await client.disconnect()
        store.close()
