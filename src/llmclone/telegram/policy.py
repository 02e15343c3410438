"""The reply policy shared by the bot, the business bot and the userbot: plain code with an injectable
clock, so every rule is tested without Telegram. Who may be answered, when to stay quiet, how fast to
type, how to cut a reply into messages Telegram accepts."""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmclone.telegram.config import TelegramConfig

TELEGRAM_LIMIT = 4096
HOUR, DAY = 3600.0, 86400.0


@dataclass
class ChatFacts:
    """What the policy needs to know about a chat and its latest incoming message."""

    chat_id: int
    sender_id: int = 0
    private: bool = True
    sender_is_bot: bool = False
    forwarded: bool = False
    sent_before_start: bool = False
    owner_online: bool = False


class Policy:
    def __init__(self, config: TelegramConfig, store: object, started: float) -> None:
        self.config, self.store, self.started = config, store, started

    def allowed(self, user_id: int) -> bool:
        extra = set(self.store.get("allow", []))  # type: ignore[attr-defined]
        denied = set(self.store.get("deny", []))  # type: ignore[attr-defined]
        if user_id in denied:
            return False
        return user_id == self.config.owner_id or user_id in self.config.allow or user_id in extra

    def quiet_reason(self, facts: ChatFacts, now: float, owner_rules: bool) -> str | None:
        """Why the clone must not answer now (None: it may), checked when a reply is due. The filters on
        the message itself (private, bot, forward, allowlist) are the engine's `hard_filter`, at receipt.
        `owner_rules` adds the rules for answering from the owner's account (userbot, business)."""
        store, cfg = self.store, self.config
        if store.get("paused", False):  # type: ignore[attr-defined]
            return "paused"
        chat = store.chat(facts.chat_id)  # type: ignore[attr-defined]
        if chat["paused"]:
            return "paused in this chat"
        if owner_rules:
            if now - chat["owner_last"] < cfg.quiet_after_owner_seconds:
                return "the owner wrote here recently"
            if facts.owner_online and cfg.skip_while_owner_online:
                return "the owner is online"
        if store.sent_since(now - HOUR, facts.chat_id) >= cfg.per_chat_hourly_cap:  # type: ignore[attr-defined]
            return "hourly cap for this chat reached"
        if store.sent_since(now - DAY) >= cfg.daily_cap:  # type: ignore[attr-defined]
            return "daily cap reached"
        return None

    def read_delay(self) -> float:
        return self.config.read_delay_seconds

    def typing_seconds(self, text: str) -> float:
        """Time to 'type' a message: proportional to its length, capped."""
        return min(len(text) / self.config.typing_chars_per_second, self.config.max_typing_seconds)

    def outgoing(self, messages: list[str]) -> list[str]:
        """The messages to send: empty ones dropped, long ones split, the disclosure on the last one."""
        parts = [p for m in messages for p in split_message(m) if p.strip()]
        if parts and self.config.disclosure:
            last = parts[-1] + self.config.disclosure
            parts[-1:] = split_message(last)
        return parts


def split_message(text: str, limit: int = TELEGRAM_LIMIT) -> list[str]:
    """Cut text into pieces of at most `limit` characters, at paragraph, line, sentence or word ends."""
    text = text.strip()
    pieces = []
    while len(text) > limit:
        window = text[:limit]
        cut = -1
        for pattern in (r"\n\n", r"\n", r"[.!?…]\s", r"\s"):
            found = [m.end() for m in re.finditer(pattern, window)]
            if found and found[-1] > limit // 2:
                cut = found[-1]
                break
        if cut <= 0:
            cut = limit
        pieces.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    if text:
        pieces.append(text)
    return pieces
