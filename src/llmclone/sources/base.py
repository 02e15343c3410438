"""The normalised shapes every messenger reader produces and every later stage consumes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# Chat kinds the dataset builder understands; readers map their own types onto these.
PERSONAL = "personal"
GROUP = "group"


@dataclass(frozen=True, slots=True)
class Skip:
    """A chat left out, and why (counted in stats.json's skipped_chats)."""

    reason: str


@dataclass(slots=True)
class Message:
    id: int
    sender: str  # stable sender id ("user123"); names change, ids do not
    ts: int  # unix seconds, UTC
    text: str  # exactly as written, media rendered as placeholders (see placeholders.py)
    reply_to: int | None = None
    sender_name: str | None = None
    is_owner: bool = False


@dataclass(slots=True)
class Chat:
    source: str  # messenger, e.g. "telegram"
    id: int
    kind: str  # PERSONAL or GROUP
    name: str | None
    messages: list[Message] = field(default_factory=list)


@dataclass
class Tally:
    """Counts of what was dropped and why, shared by all stages so stats.json tells the whole story."""

    dropped_messages: Counter[str] = field(default_factory=Counter)
    skipped_chats: Counter[str] = field(default_factory=Counter)
