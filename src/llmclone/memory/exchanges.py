"""One remembered exchange: an owner turn with what it answered, from the training split only."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from llmclone.errors import UserError

DATASET, TYPED, APPROVED, SENT = "dataset", "typed", "approved", "sent"  # where an exchange came from


@dataclass(frozen=True)
class Exchange:
    chat: str  # the pseudonymous chat key ingest gives every chat
    start: int  # when its conversation (session) began, seconds UTC: a session is one conversation
    said: str  # the other side's lines the owner answered ("" when the owner wrote first)
    owner: str  # the owner's turn
    origin: str = DATASET  # or, added live by the Telegram modes: typed, approved (a draft), sent (the clone's)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def chat_key(source: str, kind: str, chat_id: int | str) -> str:
    """The pseudonymous key of a chat, as ingest computes it (dataset/samples.py)."""
    return hashlib.blake2b(f"{source}:{kind}:{chat_id}".encode(), digest_size=6).hexdigest()


def exchanges_of_dataset(train_jsonl: Path) -> Iterator[Exchange]:
    """Each training sample's last owner turn with the lines just before it (each owner turn ends exactly one
    sample, so each appears once)."""
    with open(train_jsonl, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = orjson.loads(raw)
                yield exchange_of(row["messages"], str(row.get("chat", "")), int(row.get("start", 0)))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
                raise UserError(f"{train_jsonl}:{n} is not a training sample; create the dataset with llmclone "
                                "ingest.") from None


def exchange_of(messages: list[dict[str, str]], chat: str, start: int) -> Exchange:
    """The last owner turn of `messages` and the other side's lines right before it."""
    said: list[str] = []
    for m in reversed(messages[:-1]):
        if m["role"] == "assistant":
            break
        said.append(m["content"])
    return Exchange(chat, start, "\n".join(reversed(said)), messages[-1]["content"])
