"""The conversation engine all three Telegram modes share.

An incoming message is recorded in the store (a re-delivered one is recognised and dropped), then the
engine waits until the person stops typing (debounce), asks the policy whether to answer, generates the
clone's reply off the event loop (chats waiting at the same time are decoded together in one batch, each
with its own history, by serving/batcher.py, as the API's requests are), and sends it as separate messages
with human pacing: a read delay, typing status while generating and while 'typing' each message. Sends go
through retries with backoff, Telegram's requested waits (429 / FLOOD_WAIT) and a circuit breaker. After a
restart, chats with unanswered messages are answered. A reply counts as delivered once its first message is
out, so a crash mid-reply never makes the clone answer the same message twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from llmclone.memory.exchanges import SENT, TYPED, chat_key
from llmclone.serving.batcher import Batcher, Job
from llmclone.sources.base import PERSONAL
from llmclone.telegram.config import TelegramConfig
from llmclone.telegram.policy import ChatFacts, Policy
from llmclone.telegram.store import Store

log = logging.getLogger("llmclone.telegram")
TYPING_REFRESH = 4.0  # Telegram shows "typing" for ~5 s


class StopClone(Exception):
    """Telegram told us to stop (PEER_FLOOD): the clone stops answering until restarted by the owner."""


class CircuitOpen(Exception):
    pass


@dataclass
class Incoming:
    chat_id: int
    message_id: int
    sender_id: int
    text: str
    date: float
    conn: str | None = None  # Telegram Business connection id


class Gateway(Protocol):
    async def send(self, chat_id: int, text: str, conn: str | None) -> int: ...
    async def typing(self, chat_id: int, conn: str | None) -> None: ...
    def classify(self, exc: BaseException) -> tuple[str, float] | None:
        """('wait', seconds) for rate limits, ('retry', 0) for transient errors, ('stop', 0) to stop, None: a bug."""
        ...


class Breaker:
    def __init__(self, failures: int, cooldown: float, clock: Callable[[], float]) -> None:
        self.limit, self.cooldown, self.clock = failures, cooldown, clock
        self.failures, self.open_until = 0, 0.0

    def check(self) -> None:
        if self.clock() < self.open_until:
            raise CircuitOpen(f"circuit breaker open for {self.open_until - self.clock():.0f} s more")

    def failed(self) -> None:
        self.failures += 1
        if self.failures >= self.limit:
            self.open_until = self.clock() + self.cooldown
            self.failures = 0
            log.warning("too many failed sends in a row: pausing sends for %.0f s", self.cooldown)

    def succeeded(self) -> None:
        self.failures = 0


async def with_retries(call: Callable[[], Awaitable[Any]], gateway: Gateway, config: TelegramConfig, breaker: Breaker,
                       sleep: Callable[[float], Awaitable[None]]) -> Any:
    """Run one Telegram call: wait what Telegram asks on rate limits, back off on transient errors."""
    attempt = 0
    while True:
        breaker.check()
        try:
            result = await call()
        except (StopClone, CircuitOpen):
            raise
        except Exception as exc:
            verdict = gateway.classify(exc)
            if verdict is None:
                raise
            kind, seconds = verdict
            if kind == "stop":
                raise StopClone(str(exc)) from exc
            breaker.failed()
            attempt += 1
            if attempt > config.max_retries:
                raise
            delay = seconds if kind == "wait" else config.backoff_seconds * 2 ** (attempt - 1)
            log.warning("telegram call failed (%s: %s); retrying in %.1f s", type(exc).__name__, exc, delay)
            await sleep(delay)
            continue
        breaker.succeeded()
        return result


def memory_chat(chat_id: int) -> str | None:
    """The memory's key for a Telegram chat: a private chat's id is its peer's, as in the owner's export."""
    return chat_key("telegram", PERSONAL, chat_id) if chat_id > 0 else None


class Engine:
    def __init__(self, clone: Any, store: Store, config: TelegramConfig, gateway: Gateway, mode: str,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 owner_online: Callable[[], Awaitable[bool]] | None = None,
                 suggest: Callable[[int, list[str], int], Awaitable[None]] | None = None) -> None:
        self.clone, self.store, self.config, self.gateway, self.mode = clone, store, config, gateway, mode
        self.clock, self.sleep = clock, sleep
        self.policy = Policy(config, store, started=clock())
        self.breaker = Breaker(config.breaker_failures, config.breaker_cooldown_seconds, clock)
        self.owner_online = owner_online
        self.suggest = suggest  # userbot draft mode: hand the reply to the owner instead of sending it
        self.batcher = Batcher(clone)  # one model: the replies waiting at one time are one batch
        self.chat_locks: dict[int, asyncio.Lock] = {}
        self.timers: dict[int, asyncio.Task[None]] = {}
        self.waiting_timer: set[int] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopped: str | None = None
        self.on_stop: Callable[[], None] | None = None

    # -- incoming ------------------------------------------------------------------------------------------
    def hard_filter(self, facts: ChatFacts) -> str | None:
        if not facts.private:
            return "not a private chat"
        if facts.sender_is_bot:
            return "sender is a bot"
        if facts.forwarded:
            return "forwarded message"
        if facts.sent_before_start:
            return "sent before start-up"
        if self.mode != "business" and not self.policy.allowed(facts.sender_id):  # business: Telegram's own chat choice
            return "not on the allowlist"
        return None

    async def receive(self, msg: Incoming, facts: ChatFacts) -> bool:
        """Take one incoming message; True if it will be answered (after the debounce)."""
        reason = self.hard_filter(facts)
        if reason:
            log.info("ignoring a message in chat %s: %s", msg.chat_id, reason)
            return False
        if not self.store.add_incoming(msg.chat_id, msg.message_id, msg.text, msg.date, msg.conn):
            return False  # seen before: Telegram re-delivered it after a restart
        self.schedule(msg.chat_id)
        return True

    def schedule(self, chat_id: int, delay: float | None = None) -> None:
        """(Re)start the chat's debounce timer; a reply already being written is not interrupted."""
        if chat_id in self.waiting_timer:
            self.timers[chat_id].cancel()
        self.waiting_timer.add(chat_id)
        task = asyncio.get_running_loop().create_task(self._after_quiet(chat_id, self.config.debounce_seconds
                                                                        if delay is None else delay))
        self.timers[chat_id] = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _after_quiet(self, chat_id: int, delay: float) -> None:
        try:
            await self.sleep(delay)
        except asyncio.CancelledError:
            return
        self.waiting_timer.discard(chat_id)
        lock = self.chat_locks.setdefault(chat_id, asyncio.Lock())
        async with lock:
            try:
                await self.answer(chat_id)
            except StopClone as err:
                self.stop(f"Telegram asked to stop ({err})")
            except CircuitOpen as err:
                log.warning("not answering chat %s now: %s", chat_id, err)
                self.schedule(chat_id, self.config.breaker_cooldown_seconds)
            except Exception:
                log.exception("failed to answer chat %s; it will be retried on restart", chat_id)

    def recover(self) -> None:
        """After a restart: answer what was received but not answered before the stop."""
        for chat_id in self.store.chats_waiting():
            self.schedule(chat_id)

    def stop(self, reason: str) -> None:
        self.stopped = reason
        self.store.set("paused", True)
        log.error("clone stopped: %s", reason)
        if self.on_stop is not None:
            self.on_stop()

    def cancel(self) -> None:
        """Drop scheduled replies (the process is going away); the store still has them for `recover`."""
        for task in list(self.tasks):
            task.cancel()
        self.batcher.close()

    async def drain(self) -> None:
        """Wait until every scheduled reply is done (tests, and a clean shutdown)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    # -- answering -----------------------------------------------------------------------------------------
    async def answer(self, chat_id: int) -> None:
        waiting = self.store.unanswered(chat_id)
        if not waiting:
            return
        upto, last_date, conn = waiting[-1]
        now = self.clock()
        if conn and now - last_date > self.config.business_reply_window_hours * 3600:
            log.info("not answering chat %s: outside Telegram Business's 24-hour window", chat_id)
            self.store.mark_answered(chat_id, upto)
            return
        online = bool(self.owner_online and await self.owner_online())
        reason = self.policy.quiet_reason(ChatFacts(chat_id, owner_online=online), now, owner_rules=self.mode != "bot")
        if reason:
            log.info("not answering chat %s: %s", chat_id, reason)
            self.store.mark_answered(chat_id, upto)
            return
        await self.sleep(self.policy.read_delay())
        messages = await self.generate(chat_id, conn)
        parts = self.policy.outgoing(messages)
        if not parts:
            self.store.mark_answered(chat_id, upto)
            return
        if self.suggest is not None and chat_id not in self.config.auto_send and self.config.draft_mode:
            await self.suggest(chat_id, parts, upto)
            self.store.mark_answered(chat_id, upto)
            return
        await self.send_parts(chat_id, parts, conn, upto)

    async def generate(self, chat_id: int, conn: str | None) -> list[str]:
        typing = asyncio.get_running_loop().create_task(self._keep_typing(chat_id, conn))
        try:
            history = self.store.history(chat_id, self.config.history_messages)
            job = Job(history, {}, chat=memory_chat(chat_id))  # the clone's [reply] sampling
            reply = await asyncio.wrap_future(self.batcher.submit(job))
            return list(reply.messages)
        finally:
            typing.cancel()

    async def _keep_typing(self, chat_id: int, conn: str | None) -> None:
        while True:
            try:
                await self.gateway.typing(chat_id, conn)
            except Exception as exc:  # typing status is cosmetic: never fail a reply over it
                log.debug("typing status failed: %s", type(exc).__name__)
            await asyncio.sleep(TYPING_REFRESH)

    async def send_parts(self, chat_id: int, parts: list[str], conn: str | None, upto: int | None,
                         origin: str = SENT) -> None:
        """Send a reply message by message; then the clone's memory holds it (`origin`: the clone's own, or a
        draft the owner approved or rewrote)."""
        said = self._said(chat_id)
        for i, part in enumerate(parts):
            if i:
                await self.sleep(self.config.pause_between_messages)
            await self.call(lambda: self.gateway.typing(chat_id, conn), required=False)
            await self.sleep(self.policy.typing_seconds(part))
            message_id = await self.call(lambda p=part: self.gateway.send(chat_id, p, conn))
            now = self.clock()
            self.store.add_owner(chat_id, int(message_id), part, now, by_clone=True)
            self.store.log_sent(chat_id, part, now, self.mode)
            if upto is not None and i == 0:
                self.store.mark_answered(chat_id, upto)
        self.remember(chat_id, said, "\n".join(parts), origin)

    def owner_wrote(self, chat_id: int, message_id: int, text: str, date: float) -> None:
        """The owner typed in a chat themselves (business and userbot modes): recorded, and remembered."""
        said = self._said(chat_id)
        self.store.add_owner(chat_id, message_id, text, date, by_clone=False)
        self.remember(chat_id, said, text, TYPED)

    def _said(self, chat_id: int) -> str:
        """The other side's lines since the owner's side last wrote: what a reply now answers."""
        lines: list[str] = []
        for m in reversed(self.store.history(chat_id, 32)):
            if m["role"] == "assistant":
                break
            lines.append(m["content"])
        return "\n".join(reversed(lines))

    def remember(self, chat_id: int, said: str, owner: str, origin: str) -> None:
        memory = getattr(self.clone, "memory", None)
        chat = memory_chat(chat_id)
        if memory is not None and chat is not None and owner.strip():
            memory.add(chat, said, owner, origin, at=self.clock())

    async def call(self, request: Callable[[], Awaitable[Any]], required: bool = True) -> Any:
        """One Telegram call with retries; `required=False` for cosmetic ones (typing) whose failure is ignored."""
        try:
            return await with_retries(request, self.gateway, self.config, self.breaker, self.sleep)
        except (StopClone, CircuitOpen):
            raise
        except Exception:
            if required:
                raise
            return None
