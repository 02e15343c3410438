"""The Telegram state of one clone deployment, in SQLite: per-chat history, what was handled, settings,
the audit log of everything sent and the userbot's pending drafts. Survives restarts and crashes: an
incoming message is recorded before it is answered and marked answered only after the reply went out."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from llmclone.dataset.io import PRIVATE_FILE, private_umask

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id INTEGER NOT NULL, message_id INTEGER NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL,
    date REAL NOT NULL, answered INTEGER NOT NULL DEFAULT 0, conn TEXT,
    UNIQUE (chat_id, role, message_id));
CREATE TABLE IF NOT EXISTS chats (
    chat_id INTEGER PRIMARY KEY, reset_seq INTEGER NOT NULL DEFAULT 0, owner_last REAL NOT NULL DEFAULT 0,
    paused INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sent (date REAL NOT NULL, chat_id INTEGER NOT NULL, text TEXT NOT NULL, mode TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS drafts (
    draft_id INTEGER PRIMARY KEY, chat_id INTEGER NOT NULL, text TEXT NOT NULL, upto_seq INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending');
"""


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, mode=0o700)
        with private_umask():  # the database and its -wal/-shm side files: owner only
            self.db = sqlite3.connect(self.path, isolation_level=None)  # autocommit: each write is durable at once
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)
        for side in (self.path, self.path.with_name(self.path.name + "-wal"), self.path.with_name(self.path.name + "-shm")):
            if side.exists():
                os.chmod(side, PRIVATE_FILE)

    def close(self) -> None:
        self.db.close()

    # -- messages -------------------------------------------------------------------------------------
    def add_incoming(self, chat_id: int, message_id: int, text: str, date: float, conn: str | None = None) -> bool:
        """Record an incoming message; False if it was seen before (a re-delivered update)."""
        cur = self.db.execute("INSERT OR IGNORE INTO messages (chat_id, message_id, role, content, date, conn) "
                              "VALUES (?, ?, 'user', ?, ?, ?)", (chat_id, message_id, text, date, conn))
        return cur.rowcount == 1

    def add_owner(self, chat_id: int, message_id: int, text: str, date: float, by_clone: bool) -> None:
        """A message from the owner's side: the clone's reply, or (userbot/business) one the owner typed."""
        cur = self.db.execute("INSERT OR IGNORE INTO messages (chat_id, message_id, role, content, date, answered) "
                              "VALUES (?, ?, 'assistant', ?, ?, 1)", (chat_id, message_id, text, date))
        if not by_clone and cur.rowcount == 1:  # an echo of the clone's own message is not the owner typing
            self.db.execute("INSERT INTO chats (chat_id, owner_last) VALUES (?, ?) ON CONFLICT(chat_id) "
                            "DO UPDATE SET owner_last = max(owner_last, excluded.owner_last)", (chat_id, date))

    def mark_answered(self, chat_id: int, upto_seq: int) -> None:
        self.db.execute("UPDATE messages SET answered = 1 WHERE chat_id = ? AND role = 'user' AND seq <= ?",
                        (chat_id, upto_seq))

    def unanswered(self, chat_id: int) -> list[tuple[int, float, str | None]]:
        """(seq, date, business connection) of the chat's incoming messages still waiting for a reply."""
        return self.db.execute("SELECT seq, date, conn FROM messages WHERE chat_id = ? AND role = 'user' AND answered = 0 "
                               "ORDER BY seq", (chat_id,)).fetchall()

    def chats_waiting(self) -> list[int]:
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT chat_id FROM messages WHERE role = 'user' AND answered = 0 ORDER BY chat_id")]

    def history(self, chat_id: int, limit: int) -> list[dict[str, str]]:
        """The chat since the last /reset, oldest first, at most `limit` messages."""
        reset = self.chat(chat_id)["reset_seq"]
        rows = self.db.execute("SELECT role, content FROM messages WHERE chat_id = ? AND seq > ? ORDER BY seq DESC LIMIT ?",
                               (chat_id, reset, limit)).fetchall()
        return [{"role": role, "content": content} for role, content in reversed(rows)]

    def reset(self, chat_id: int) -> None:
        last = self.db.execute("SELECT coalesce(max(seq), 0) FROM messages").fetchone()[0]
        self.db.execute("INSERT INTO chats (chat_id, reset_seq) VALUES (?, ?) ON CONFLICT(chat_id) "
                        "DO UPDATE SET reset_seq = excluded.reset_seq", (chat_id, last))
        self.mark_answered(chat_id, last)

    def chat(self, chat_id: int) -> dict[str, Any]:
        row = self.db.execute("SELECT reset_seq, owner_last, paused FROM chats WHERE chat_id = ?", (chat_id,)).fetchone()
        return dict(zip(("reset_seq", "owner_last", "paused"), row or (0, 0.0, 0), strict=True))

    def set_chat_paused(self, chat_id: int, paused: bool) -> None:
        self.db.execute("INSERT INTO chats (chat_id, paused) VALUES (?, ?) ON CONFLICT(chat_id) "
                        "DO UPDATE SET paused = excluded.paused", (chat_id, int(paused)))

    # -- settings ------------------------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set(self, key: str, value: Any) -> None:
        self.db.execute("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (key, json.dumps(value)))

    # -- audit and caps ------------------------------------------------------------------------------------
    def log_sent(self, chat_id: int, text: str, date: float, mode: str) -> None:
        self.db.execute("INSERT INTO sent (date, chat_id, text, mode) VALUES (?, ?, ?, ?)", (date, chat_id, text, mode))

    def sent_since(self, since: float, chat_id: int | None = None) -> int:
        if chat_id is None:
            return self.db.execute("SELECT count(*) FROM sent WHERE date >= ?", (since,)).fetchone()[0]
        return self.db.execute("SELECT count(*) FROM sent WHERE date >= ? AND chat_id = ?", (since, chat_id)).fetchone()[0]

    def audit(self) -> list[dict[str, Any]]:
        return [dict(zip(("date", "chat_id", "text", "mode"), r, strict=True))
                for r in self.db.execute("SELECT date, chat_id, text, mode FROM sent ORDER BY rowid")]

    def stats(self) -> dict[str, int]:
        one = self.db.execute
        return {"chats": one("SELECT count(DISTINCT chat_id) FROM messages").fetchone()[0],
                "received": one("SELECT count(*) FROM messages WHERE role = 'user'").fetchone()[0],
                "sent": one("SELECT count(*) FROM sent").fetchone()[0],
                "waiting": one("SELECT count(*) FROM messages WHERE role = 'user' AND answered = 0").fetchone()[0]}

    # -- drafts (userbot) ----------------------------------------------------------------------------------
    def add_draft(self, draft_id: int, chat_id: int, text: str, upto_seq: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO drafts (draft_id, chat_id, text, upto_seq) VALUES (?, ?, ?, ?)",
                        (draft_id, chat_id, text, upto_seq))

    def draft(self, draft_id: int) -> dict[str, Any] | None:
        row = self.db.execute("SELECT chat_id, text, upto_seq, status FROM drafts WHERE draft_id = ?", (draft_id,)).fetchone()
        return dict(zip(("chat_id", "text", "upto_seq", "status"), row, strict=True)) if row else None

    def set_draft_status(self, draft_id: int, status: str) -> None:
        self.db.execute("UPDATE drafts SET status = ? WHERE draft_id = ?", (status, draft_id))
