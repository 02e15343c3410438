"""`llmclone telegram bot` and `llmclone telegram business`: the clone behind a Bot API token (aiogram 3).

- bot: people write to the bot; it answers as the owner. Only the owner (`owner_id`) and allowlisted
  users are answered; the owner also has /pause, /resume, /allow ID, /deny ID, /stats.
- business: the same bot connected to the owner's account through Telegram Business answers the owner's
  private chats (`business_message` updates, `business_connection_id` on every send), only while the
  connection is enabled and grants the right to reply, only within Telegram's 24-hour window, and stays
  quiet in a chat where the owner just wrote.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from llmclone.errors import UserError
from llmclone.telegram.config import TelegramConfig, install_log_redaction, secret
from llmclone.telegram.engine import Engine, Incoming
from llmclone.telegram.media import aiogram_text
from llmclone.telegram.policy import ChatFacts
from llmclone.telegram.store import Store

log = logging.getLogger("llmclone.telegram")

HELP = ("I answer as my owner would (I am their AI clone). Just write.\n/reset — start our conversation over\n"
        "/help — this message")
OWNER_HELP = ("\nOwner: /pause, /resume — stop or restart all replies; /allow ID, /deny ID — who may talk to me; "
              "/stats — counts")


def make_bot(token: str) -> Any:
    """An aiogram Bot; TELEGRAM_API_BASE points it at another Bot API server (self-hosted, or a test one)."""
    from aiogram import Bot
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer

    base = os.environ.get("TELEGRAM_API_BASE", "").strip()
    session = AiohttpSession(api=TelegramAPIServer.from_base(base)) if base else AiohttpSession()
    return Bot(token, session=session)


class BotGateway:
    def __init__(self, bot: Any) -> None:
        self.bot = bot

    async def send(self, chat_id: int, text: str, conn: str | None) -> int:
        sent = await self.bot.send_message(chat_id, text, business_connection_id=conn)
        return sent.message_id

    async def typing(self, chat_id: int, conn: str | None) -> None:
        await self.bot.send_chat_action(chat_id, "typing", business_connection_id=conn)

    def classify(self, exc: BaseException) -> tuple[str, float] | None:
        from aiogram.exceptions import ClientDecodeError, TelegramNetworkError, TelegramRetryAfter, TelegramServerError

        if isinstance(exc, TelegramRetryAfter):
            return ("wait", float(exc.retry_after))
        # ClientDecodeError: a body that is not Telegram's JSON, as a front end's HTML error page during an outage
        transient = TelegramServerError | TelegramNetworkError | ClientDecodeError | asyncio.TimeoutError | OSError
        if isinstance(exc, transient):
            return ("retry", 0.0)
        return None


def build_dispatcher(engine: Engine, store: Store, config: TelegramConfig, mode: str) -> Any:
    from aiogram import Dispatcher, F, Router
    from aiogram.filters import Command, CommandObject
    from aiogram.types import BusinessConnection, Message

    router = Router()
    started = engine.clock()

    def facts(m: Message) -> ChatFacts:
        return ChatFacts(m.chat.id, m.from_user.id if m.from_user else 0, private=m.chat.type == "private",
                         sender_is_bot=bool(m.from_user and m.from_user.is_bot),
                         forwarded=m.forward_origin is not None, sent_before_start=m.date.timestamp() < started - 60)

    def is_owner(m: Message) -> bool:
        return bool(m.from_user and config.owner_id is not None and m.from_user.id == config.owner_id)

    async def say(m: Message, text: str) -> None:
        await engine.call(lambda: engine.gateway.send(m.chat.id, text, None))

    if mode == "bot":
        @router.message(Command("start", "help"))
        async def start(m: Message) -> None:
            if engine.hard_filter(facts(m)) is None:
                await say(m, HELP + (OWNER_HELP if is_owner(m) else ""))
            elif m.chat.type == "private":
                await say(m, "Sorry, my owner has not allowed me to talk with you.")

        @router.message(Command("reset"))
        async def reset(m: Message) -> None:
            if engine.hard_filter(facts(m)) is None:
                store.reset(m.chat.id)
                await say(m, "(conversation forgotten)")

        @router.message(Command("pause", "resume", "allow", "deny", "stats"), F.func(is_owner))
        async def owner_command(m: Message, command: CommandObject) -> None:
            name = command.command
            if name in ("pause", "resume"):
                store.set("paused", name == "pause")
                await say(m, "paused: I answer no one until /resume" if name == "pause" else "resumed")
            elif name == "stats":
                s = store.stats()
                await say(m, f"chats {s['chats']}, received {s['received']}, sent {s['sent']}, waiting {s['waiting']}, "
                             f"paused {bool(store.get('paused', False))}")
            else:
                try:
                    user = int((command.args or "").strip())
                except ValueError:
                    await say(m, f"usage: /{name} USER_ID (a number)")
                    return
                allow, deny = set(store.get("allow", [])), set(store.get("deny", []))
                (allow.add if name == "allow" else allow.discard)(user)
                (deny.add if name == "deny" else deny.discard)(user)
                store.set("allow", sorted(allow))
                store.set("deny", sorted(deny))
                await say(m, f"{'allowed' if name == 'allow' else 'denied'}: {user}")

        @router.message()
        async def incoming(m: Message) -> None:
            text = aiogram_text(m)
            if text.startswith("/"):
                return  # an unknown or not-permitted command is not conversation
            await engine.receive(Incoming(m.chat.id, m.message_id, m.from_user.id if m.from_user else 0, text,
                                          m.date.timestamp()), facts(m))
    else:
        @router.business_connection()
        async def connection(c: BusinessConnection) -> None:
            rights = c.rights
            can_reply = bool(rights.can_reply) if rights is not None else bool(c.can_reply)
            store.set(f"business:{c.id}", {"user_id": c.user.id, "enabled": c.is_enabled, "can_reply": can_reply})
            log.info("business connection %s: enabled=%s, can reply=%s", c.id, c.is_enabled, can_reply)

        @router.business_message()
        async def business_message(m: Message) -> None:
            conn = store.get(f"business:{m.business_connection_id}")
            if conn is None:
                conn = await _fetch_connection(engine, m.business_connection_id, store)
            text = aiogram_text(m)
            if m.from_user and m.from_user.id == conn["user_id"]:  # the owner typed this: stay out of the way
                engine.owner_wrote(m.chat.id, m.message_id, text, m.date.timestamp())
                return
            if not conn["enabled"] or not conn["can_reply"]:
                log.info("business connection %s does not allow replies; ignoring", m.business_connection_id)
                return
            await engine.receive(Incoming(m.chat.id, m.message_id, m.from_user.id if m.from_user else 0, text,
                                          m.date.timestamp(), m.business_connection_id), facts(m))

    dp = Dispatcher()
    dp.include_router(router)
    return dp


async def _fetch_connection(engine: Engine, conn_id: str | None, store: Store) -> dict[str, Any]:
    """A business message whose connection update we missed (e.g. it came before start-up): ask Telegram."""
    bot = engine.gateway.bot  # type: ignore[attr-defined]
    c = await bot.get_business_connection(conn_id)
    can_reply = bool(c.rights.can_reply) if c.rights is not None else bool(c.can_reply)
    info = {"user_id": c.user.id, "enabled": c.is_enabled, "can_reply": can_reply}
    store.set(f"business:{conn_id}", info)
    return info


START_ATTEMPTS = 6
START_BACKOFF = 1.0  # seconds before the second try, doubling: 1 + 2 + 4 + 8 + 16 s in all


async def connect(bot: Any, gateway: BotGateway) -> Any:
    """Remove any webhook (polling needs none; what is waiting is kept) and ask who we are, retrying network
    errors and 5xx with backoff. A rejected token, or an API that stays unreachable, is a UserError."""
    from aiogram.exceptions import TelegramUnauthorizedError

    delay, attempt = START_BACKOFF, 0
    while True:
        attempt += 1
        try:
            await bot.delete_webhook(drop_pending_updates=False)
            return await bot.get_me()
        except TelegramUnauthorizedError:
            raise UserError("Telegram rejected the bot token (401 Unauthorized); copy it again from @BotFather "
                            "into TELEGRAM_BOT_TOKEN.") from None
        except Exception as err:
            verdict = gateway.classify(err)
            if verdict is None:
                raise
            if attempt == START_ATTEMPTS:  # the error's text may hold the URL, and with it the token: name its type
                raise UserError(f"cannot reach the Telegram Bot API ({type(err).__name__} on each of {START_ATTEMPTS} "
                                "tries); check the network connection and try again.") from None
            wait = max(delay, verdict[1])
            log.warning("the Bot API did not answer (%s); trying again in %.0f s", type(err).__name__, wait)
            await asyncio.sleep(wait)
            delay *= 2


async def run(clone: Any, config: TelegramConfig, state: str, mode: str, stop: asyncio.Event | None = None,
              polling_timeout: int = 10) -> Engine:
    """Poll Telegram and answer until stopped (Ctrl-C, or `stop` set). Returns the engine (for tests)."""
    token = secret("TELEGRAM_BOT_TOKEN", "the bot's token from @BotFather")
    install_log_redaction([token])
    bot = make_bot(token)
    store = Store(state)
    engine = Engine(clone, store, config, BotGateway(bot), mode, clock=time.time)
    dp = build_dispatcher(engine, store, config, mode)
    try:
        me = await connect(bot, engine.gateway)  # type: ignore[arg-type]
        log.info("running as @%s (%s mode)", me.username, mode)
        engine.recover()
        polling = asyncio.create_task(dp.start_polling(bot, polling_timeout=polling_timeout, handle_signals=stop is None,
                                                       close_bot_session=False))
        if stop is not None:
            await stop.wait()
            await dp.stop_polling()
        await polling
        await engine.drain()
    finally:
        engine.cancel()
        await bot.session.close()
        store.close()
    return engine
