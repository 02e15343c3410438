"""A clone's memory directory: built from the training split, searched for each conversation, added to
live by the Telegram modes, and forgettable chat by chat. Owner-only files:

    memory/memory.json     what it was built from (owner, dataset digest) and how much it holds
    memory/exchanges.jsonl the exchanges, in the index's order
    memory/index/          the BM25 index (index.py)
    memory/contacts.json   chat key -> relation, from a contacts file (contacts.py)
    memory/live.sqlite     exchanges added since, by the Telegram modes (indexed on load)
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from llmclone.dataset.dialogues import estimate_tokens
from llmclone.dataset.io import PRIVATE_DIR, PRIVATE_FILE, atomic_dir, private_umask, write_json
from llmclone.dataset.privacy import Scrubber
from llmclone.errors import UserError
from llmclone.memory.contacts import read_contacts
from llmclone.memory.exchanges import DATASET, Exchange, exchanges_of_dataset
from llmclone.memory.index import Index
from llmclone.models.chat_format import Recall

MEMORY = "memory"
FORMAT = 1
QUERY_MESSAGES = 3  # the incoming message and the two before it make the search query


@dataclass(frozen=True)
class RecallSettings:
    k: int = 4  # exchanges retrieved by relevance
    recent: int = 2  # and the latest from this chat's earlier conversations
    tokens: int = 160  # at most this many (estimated) tokens of memory in a prompt


class Memory:
    def __init__(self, directory: Path, exchanges: list[Exchange], index: Index, contacts: dict[str, str],
                 meta: dict[str, Any]) -> None:
        self.directory, self.exchanges, self.index, self.contacts, self.meta = directory, exchanges, index, contacts, meta
        self._live: list[Exchange] = []
        self._live_index: Index | None = None
        self._db: sqlite3.Connection | None = None
        self._scrubber = Scrubber()
        self._load_live()

    # -- building --------------------------------------------------------------------------------------
    @classmethod
    def build(cls, clone_dir: Path, dataset_dir: Path, stats: dict[str, Any], contacts_file: str | Path | None = None,
              progress: bool = False) -> Memory:
        """(Re)build `clone_dir/memory` from the dataset's training split; live exchanges are kept."""
        started = time.perf_counter()
        exchanges = list(exchanges_of_dataset(dataset_dir / "train.jsonl"))
        index = Index.build(exchanges)
        known = set(index.codes)
        contacts = read_contacts(contacts_file, known) if contacts_file else None
        target = clone_dir / MEMORY
        if contacts is None and (target / "contacts.json").is_file():  # a rebuild keeps the relations it had
            old = json.loads((target / "contacts.json").read_text(encoding="utf-8"))
            contacts = {k: v for k, v in old.items() if k in known}
        meta = {"format": FORMAT, "owner": (stats.get("owner") or {}).get("key"),
                "dataset_digest": stats.get("dataset_digest"), "exchanges": len(exchanges), "chats": len(known),
                "seconds": round(time.perf_counter() - started, 2)}
        _write(target, exchanges, index, contacts or {}, meta)
        if progress:
            print(f"memory: {len(exchanges):,} exchanges from {len(known):,} chats in {meta['seconds']} s")
        return cls.load(clone_dir)

    @classmethod
    def load(cls, clone_dir: Path) -> Memory:
        directory = Path(clone_dir) / MEMORY
        if not (directory / "memory.json").is_file():
            raise UserError(f"{clone_dir} has no memory yet; build it with: llmclone memory build {clone_dir} --data "
                            "DATASET")
        meta = json.loads((directory / "memory.json").read_text(encoding="utf-8"))
        with open(directory / "exchanges.jsonl", "rb") as f:
            exchanges = [Exchange(**orjson.loads(line)) for line in f if line.strip()]
        contacts = json.loads((directory / "contacts.json").read_text(encoding="utf-8"))
        return cls(directory, exchanges, Index.load(directory / "index"), contacts, meta)

    # -- recalling -------------------------------------------------------------------------------------
    def recall(self, history: Sequence[dict[str, str]], chat: str | None, settings: RecallSettings = RecallSettings(),
               session: int | None = None) -> Recall:
        """What goes into the prompt of a conversation in `chat` after `history`: its relation, the most
        relevant past exchanges and the latest of this chat's earlier ones, within the token budget, oldest
        first. `session`: the start of the conversation `history` is from (training, eval): only exchanges of
        conversations that began before it are recalled, as when replying live (None), where memory holds only
        the past."""
        chosen = self.select(history, chat, settings, session)
        return Recall(self.contacts.get(chat) if chat else None, tuple((said, e.owner) for e, said in chosen))

    def select(self, history: Sequence[dict[str, str]], chat: str | None, settings: RecallSettings = RecallSettings(),
               session: int | None = None) -> list[tuple[Exchange, str]]:
        """`recall`'s exchanges, each with the other side's lines as shown ("" outside its own chat)."""
        query = "\n".join(m["content"] for m in history[-QUERY_MESSAGES:])
        picked: list[tuple[float, Exchange, bool]] = []
        for index, exchanges in ((self.index, self.exchanges), (self._live_index, self._live)):
            if index is not None:
                picked += [(score, exchanges[at], whole)
                           for at, score, whole in index.search(query, chat, settings.k, before=session)]
        picked.sort(key=lambda p: -p[0])  # stable: the main memory's order breaks ties
        chosen = [(e, whole) for _, e, whole in picked[: settings.k]]
        chosen += [(e, True) for e in self._recent(chat, settings.recent, session)]
        seen_text = {m["content"] for m in history}
        lines: list[tuple[Exchange, str, str]] = []
        used, keys = 0, set()
        for e, whole in chosen:
            said = e.said if whole and e.chat == chat else ""  # another person's lines stay in their chat
            key = (said, e.owner)  # the same words twice would only take room
            if key in keys or e.owner in seen_text:
                continue
            cost = estimate_tokens(e.owner) + (estimate_tokens(said) if said else 0) + 4
            if used + cost > settings.tokens:
                continue
            keys.add(key)
            used += cost
            lines.append((e, said, e.owner))
        lines.sort(key=lambda x: x[0].start)
        return [(e, said) for e, said, _ in lines]

    def _recent(self, chat: str | None, n: int, before: int | None) -> list[Exchange]:
        if not chat or n <= 0:
            return []
        out: list[Exchange] = []
        positions = self.index.by_chat.get(self.index.codes.get(chat, -1))
        if positions is not None:
            starts = self.index.starts[positions]
            if before is not None:
                positions = positions[starts < before]
            out = [self.exchanges[int(p)] for p in positions[-n:]]
        if before is None:  # live: what was said here since, the latest last
            out = (out + [e for e in self._live if e.chat == chat])[-n:]
        return out

    # -- live additions ----------------------------------------------------------------------------------
    def add(self, chat: str, said: str, owner: str, origin: str, at: float | None = None) -> None:
        """Remember an exchange as it happens (the Telegram modes): durable at once, searchable at once."""
        if origin == DATASET:
            raise ValueError("live exchanges come from the Telegram modes")
        at = int(at if at is not None else time.time())
        said, owner = self._scrubber.scrub_many([said, owner])  # stored as the dataset is: personal data redacted
        db = self._live_db()
        db.execute("INSERT INTO exchanges (chat, start, said, owner, origin) VALUES (?, ?, ?, ?, ?)",
                   (chat, at, said, owner, origin))
        self._live.append(Exchange(chat, at, said, owner, origin))
        self._live_index = Index.build(self._live)

    def _live_db(self) -> sqlite3.Connection:
        if self._db is None:
            path = self.directory / "live.sqlite"
            with private_umask():
                self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("CREATE TABLE IF NOT EXISTS exchanges (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                                 "chat TEXT NOT NULL, start INTEGER NOT NULL, said TEXT NOT NULL, owner TEXT NOT NULL, "
                                 "origin TEXT NOT NULL)")
            _private(self.directory)
        return self._db

    def _load_live(self) -> None:
        if (self.directory / "live.sqlite").is_file():
            rows = self._live_db().execute("SELECT chat, start, said, owner, origin FROM exchanges ORDER BY seq")
            self._live = [Exchange(*row) for row in rows]
            self._live_index = Index.build(self._live) if self._live else None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- forgetting ----------------------------------------------------------------------------------------
    def forget(self, chat: str) -> int:
        """Remove every exchange of `chat` (index, files, live memory, contacts); returns how many went."""
        if chat not in self.index.codes and not any(e.chat == chat for e in self._live):
            raise UserError(f"chat {chat} is not in this clone's memory; llmclone memory chats CLONE lists its chats.")
        kept = [e for e in self.exchanges if e.chat != chat]
        gone = len(self.exchanges) - len(kept)
        db = self._live_db()
        gone += db.execute("DELETE FROM exchanges WHERE chat = ?", (chat,)).rowcount
        db.execute("VACUUM")  # no deleted rows left in the file's free pages
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.close()
        index = Index.build(kept)
        _write(self.directory, kept, index, {k: v for k, v in self.contacts.items() if k != chat},
               self.meta | {"exchanges": len(kept), "chats": len(index.codes)})
        return gone

    def chats(self) -> list[dict[str, Any]]:
        """Each chat the memory holds: its key, relation, exchanges and the span of its conversations."""
        rows: dict[str, dict[str, Any]] = {}
        for e in [*self.exchanges, *self._live]:
            row = rows.setdefault(e.chat, {"chat": e.chat, "relation": self.contacts.get(e.chat), "exchanges": 0,
                                           "first": e.start, "last": e.start})
            row["exchanges"] += 1
            row["first"], row["last"] = min(row["first"], e.start), max(row["last"], e.start)
        return sorted(rows.values(), key=lambda r: -r["exchanges"])


def _write(target: Path, exchanges: list[Exchange], index: Index, contacts: dict[str, str], meta: dict[str, Any]
           ) -> None:
    """The memory directory, replaced whole (its live exchanges carried over as they are)."""
    live = target / "live.sqlite"
    with atomic_dir(target, force=True, what="memory") as tmp:
        with open(tmp / "exchanges.jsonl", "wb") as f:
            for e in exchanges:
                f.write(orjson.dumps(e.to_json()) + b"\n")
        index.save(tmp / "index")
        write_json(tmp / "contacts.json", contacts)
        for side in (live, live.with_name("live.sqlite-wal"), live.with_name("live.sqlite-shm")):
            if side.exists():
                shutil.copy2(side, tmp / side.name)
        write_json(tmp / "memory.json", meta)
        _private(tmp)


def _private(directory: Path) -> None:
    directory.chmod(PRIVATE_DIR)
    for path in directory.rglob("*"):
        path.chmod(PRIVATE_DIR if path.is_dir() else PRIVATE_FILE)
