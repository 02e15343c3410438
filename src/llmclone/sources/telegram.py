"""Telegram Desktop JSON exports → `Chat` objects, streamed one chat at a time.

Two export kinds (see shared/docs/telegram-export-format.md): the full-account `result.json`
(`personal_information`, `chats.list`, `left_chats.list`) and a single-chat export (one chat object at
the top level). Either may be given as the file, its folder, or a `.zip` of the folder.

Reading is bounded in memory whatever the file size:
- full exports go through a fast path: the file is read in blocks, chat objects are located by their
  header (`{"name": …, "type": …, "id": …, "messages": [`, a byte sequence that cannot occur inside a
  JSON string) and each chat's bytes are decoded on their own by msgspec, straight into structs of the
  keys we read (the rest is skipped unbuilt). Chats the selection skips are never parsed at all;
- anything the fast path does not recognise (single-chat exports, re-serialised files with other key
  orders, chats over 64 MB, corrupt files) goes through ijson's event stream, message by message.

Hostile shapes are refused before they are built: nesting deeper than 64 levels, a stretch of 16 MB without
a string boundary (one huge value, or a sea of whitespace), a zip that expands more than 200-fold, and a
chat of more than `max_chat_messages` messages (2 million by default, `--max-chat-messages`).
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import ijson
import msgspec
import orjson
from msgspec.structs import astuple

from llmclone import placeholders as ph
from llmclone.errors import UserError
from llmclone.sources.base import GROUP, PERSONAL, Chat, Message, Skip, Tally

SOURCE = "telegram"
TELEGRAM_SERVICE_ID = 777000  # "Telegram" notifications: login codes, never a conversation

CHAT_KINDS = {
    "personal_chat": PERSONAL,
    "private_group": GROUP,
    "private_supergroup": GROUP,
    "public_supergroup": GROUP,
}
SKIP_REASONS = {
    "bot_chat": "bot_chat",
    "saved_messages": "saved_messages",
    "replies": "replies",
    "verification_codes": "verification_codes",
    "private_channel": "channel",
    "public_channel": "channel",
}

# (type, id, name) -> the chat kind to read (PERSONAL or GROUP), or why it is left out
Selector = Callable[[str, int, str | None], "str | Skip"]

_BLOCK = 8 << 20
_HEADER_MARGIN = 64 << 10  # a chat header (name, type, id) is far shorter than this
_FAST_PATH_PREAMBLE_LIMIT = 64 << 20
_CHAT_HEADER = re.compile(
    rb'\{\s*(?:"name"\s*:\s*(?P<name>null|"(?:[^"\\]|\\.)*")\s*,\s*)?'
    rb'"type"\s*:\s*"(?P<type>[a-z_]+)"\s*,\s*"id"\s*:\s*(?P<id>-?\d+)\s*,\s*"messages"\s*:\s*\['
)
_MESSAGES_KEY = re.compile(rb'"messages"\s*:\s*\[')
_MAX_DEPTH = 64  # Telegram nests about 8 levels deep
_MAX_GAP = 16 << 20  # bytes without a '"': a message is a few KB, no value of an export comes near this
_CHAT_BYTES_FAST = 64 << 20  # a larger chat is read on the streaming path, one message at a time
_MAX_ZIP_RATIO = 200  # exports compress about 10-fold
MAX_CHAT_MESSAGES = 2_000_000
_HEADER_MAX = 4096
_MEDIA_KEYS = frozenset(
    {"photo", "file", "file_name", "media_type", "contact_information", "location_information",
     "place_name", "poll", "game_title", "invoice_information", "todo_list", "giveaway_information",
     "giveaway_results", "paid_stars_amount"}
)


class NotFastPath(Exception):
    """The fast path cannot read this file; the streaming path will (or will say what is wrong)."""


@dataclass(slots=True)
class RawChat:
    """A selected chat's bytes, not yet parsed: parsing is the costly part, so it can go to a worker."""

    kind: str
    id: int
    name: str | None
    raw: bytes | bytearray | None  # the bytes, or None to read them from `file` at `offset`
    last: bool
    file: str | None = None
    offset: int = 0
    size: int = 0
    label: str = ""
    max_messages: int = MAX_CHAT_MESSAGES

    def parse(self, tally: Tally) -> Chat:
        raw = self.raw
        if raw is None:  # read here (in a worker): the bytes need not travel between processes
            with open(self.file, "rb") as f:  # type: ignore[arg-type]
                raw = os.pread(f.fileno(), self.size, self.offset)
        messages = _parse_messages(raw, self.last, tally)
        if len(messages) > self.max_messages:
            raise _too_many(self.label, self.name, self.max_messages)
        return Chat(SOURCE, self.id, self.kind, self.name, messages)


@dataclass
class Export:
    """One export on disk. `chats()` streams its selected chats; owner facts are filled as they are read."""

    path: Path
    label: str
    size: int
    owner_id: str | None = None  # "user123", from personal_information
    owner_name: str | None = None
    single_chat: bool = False
    streaming: bool = False  # set when the fast path misread this file
    plain_file: bool = False  # an uncompressed file: chats can be read back by offset
    chat_count: int = 0
    max_chat_messages: int = MAX_CHAT_MESSAGES
    _opener: Callable[[], IO[bytes]] = field(default=None, repr=False)  # type: ignore[assignment]

    @contextmanager
    def open(self, progress: Callable[[int], None] | None = None) -> Iterator[_Guarded]:
        stream = self._opener()
        try:
            yield _Guarded(stream, self.label, progress)
        finally:
            stream.close()

    def chats(self, select: Selector, tally: Tally, progress: Callable[[int], None] | None = None,
              parse: bool = True) -> Iterator[Chat | RawChat]:
        """Yield selected chats in file order. Raises UserError for files that are not readable exports.

        With `parse=False` the fast path yields `RawChat`s for the caller to parse (e.g. in workers);
        a file read on the streaming path still yields parsed `Chat`s.
        """
        self.chat_count = 0
        self._sniff()
        if not self.single_chat and not self.streaming:
            try:
                for raw in self._fast_chats(select, tally, progress):
                    yield raw.parse(tally) if parse else raw
                return
            except NotFastPath as why:
                self.streaming = True
                if self.chat_count:  # chats already counted or yielded: the caller starts again
                    raise RestartWithStreaming(str(why)) from None
        yield from self._streamed_chats(select, tally, progress)

    # -- detection ---------------------------------------------------------------------------------
    def _sniff(self) -> None:
        with self.open() as f:
            head = f.read(4096)
        start = head.lstrip()[:1]
        if not head.strip():
            raise UserError(f"{self.label} is empty; export your chats again from Telegram Desktop.")
        if start == b"<" or b"<html" in head[:512].lower():
            raise UserError(
                f"{self.label} is an HTML export; export again in Telegram Desktop with the format "
                "'Machine-readable JSON'."
            )
        if start == b"[":
            raise UserError(
                f"{self.label} is a JSON list, not a Telegram Desktop export (one object holding 'chats', or a "
                "chat's 'messages'); export again from Telegram Desktop as 'Machine-readable JSON'."
            )
        if start != b"{":
            raise UserError(
                f"{self.label} is not JSON; give the result.json of a Telegram Desktop export "
                "(format 'Machine-readable JSON')."
            )
        match = _CHAT_HEADER.search(head)
        self.single_chat = bool(match and not head[: match.start()].strip())

    # -- fast path ---------------------------------------------------------------------------------
    def _fast_chats(self, select: Selector, tally: Tally, progress: Callable[[int], None] | None
                    ) -> Iterator[RawChat]:
        with self.open(progress) as f:
            buf = bytearray()
            search_from = 0
            dropped = 0  # bytes of the file before buf[0]
            current: tuple[str, int, str | None] | None = None  # header of the chat starting buf
            eof = False
            while not eof:
                block = f.read(_BLOCK)
                eof = not block
                buf += block
                while True:
                    match = _find_header(buf, search_from)
                    if match is None:
                        break
                    if current is None:
                        self._read_preamble(buf[: match.start()])
                    else:
                        yield from self._fast_chat(current, buf, match.start(), dropped, select, tally)
                    current = _header(match)  # read now: the match's view of buf is about to change
                    search_from = match.end() - match.start()
                    dropped += match.start()
                    del buf[: match.start()]
                if current is None and len(buf) > _FAST_PATH_PREAMBLE_LIMIT:
                    raise NotFastPath("no chat list found near the start of the file")
                if current is not None and len(buf) > _CHAT_BYTES_FAST:
                    raise NotFastPath("a chat too large to hold: read message by message")
                search_from = max(search_from, len(buf) - _HEADER_MARGIN)
            if current is None:
                raise NotFastPath("no chat objects found")
            yield from self._fast_chat(current, buf, len(buf), dropped, select, tally, last=True)

    def _read_preamble(self, preamble: bytearray) -> None:
        """Everything before the first chat: personal_information lives here in a full export."""
        if b'"chats"' not in preamble and b'"left_chats"' not in preamble:
            raise NotFastPath("chat objects outside a chat list")
        events = ijson.basic_parse(io.BytesIO(preamble))
        try:
            for prefix, info in _walk(events, frozenset({"personal_information"}), frozenset(), self.label):
                if prefix == "personal_information":  # not a top-level key
                    self._set_personal_information(info)
        except ijson.JSONError:
            pass  # the preamble ends mid-document by construction; absence is handled later

    def _fast_chat(self, header: tuple[str, int, str | None], buf: bytearray, end: int, offset: int,
                   select: Selector, tally: Tally, last: bool = False) -> Iterator[RawChat]:
        """The chat in buf[:end], which starts `offset` bytes into the file."""
        chat_type, chat_id, name = header
        self.chat_count += 1
        verdict = select(chat_type, chat_id, name)
        if isinstance(verdict, Skip):
            tally.skipped_chats[verdict.reason] += 1
            return
        if self.plain_file:
            yield RawChat(verdict, chat_id, name, None, last, str(self.path), offset, end, self.label,
                          self.max_chat_messages)
        else:
            yield RawChat(verdict, chat_id, name, buf[:end], last, label=self.label,
                          max_messages=self.max_chat_messages)

    # -- streaming path ----------------------------------------------------------------------------
    def _streamed_chats(self, select: Selector, tally: Tally, progress: Callable[[int], None] | None
                        ) -> Iterator[Chat]:
        self.chat_count = 0
        with self.open(progress) as stream:
            events = ijson.basic_parse(stream, use_float=True)
            top_keys: set[str] = set()
            single: dict[str, Any] = {}
            single_messages: list[Message] = []
            try:
                for prefix, value in _walk(events, _BUILT, _ENTERED, self.label):
                    if prefix == _TOP_KEY:
                        top_keys.add(value)
                    elif prefix == "personal_information":
                        self._set_personal_information(value)
                    elif value == "start_array" and prefix == "messages":
                        single_messages = self._messages(events, tally, single.get("name"))
                    elif value == "start_map" and prefix != "messages":
                        chat = self._streamed_chat(events, select, tally)
                        if chat is not None:
                            yield chat
                    elif prefix in _ENTERED:  # a chat that is not an object, messages that are not a list
                        _skip(events, self.label)
                        if prefix != "messages":
                            self.chat_count += 1
                            tally.skipped_chats["malformed"] += 1
                    else:
                        single[prefix] = value
            except ijson.IncompleteJSONError as err:
                raise _incomplete(self.label, err) from None
            except ijson.JSONError as err:
                raise UserError(
                    f"{self.label} is not valid JSON ({str(err).splitlines()[0][:80]}); give the "
                    "result.json of a Telegram Desktop export."
                ) from None
        if "messages" in top_keys:
            self.single_chat = True
            chat = self._single_chat(single, single_messages, select, tally)
            if chat is not None:
                yield chat
        elif not top_keys & {"chats", "left_chats"}:
            raise UserError(
                f"{self.label} is JSON but not a Telegram Desktop export (it has neither 'chats' nor "
                "'messages'); give the result.json that Telegram Desktop wrote."
            )

    def _streamed_chat(self, events: Iterator[tuple[str, Any]], select: Selector, tally: Tally) -> Chat | None:
        """The chat whose start_map was just read: its header keys, then its messages one at a time."""
        self.chat_count += 1
        meta: dict[str, Any] = {}
        messages: list[Message] | None = None
        scratch = Tally()  # messages may come before the chat's type: counted once the chat is chosen
        for event, key in events:
            if event == "end_map":
                break
            event, value = next(events)
            if key == "messages" and event == "start_array":
                messages = self._messages(events, scratch, meta.get("name"))
            elif event in ("start_map", "start_array"):
                _skip(events, self.label)
            elif key in ("name", "type", "id"):
                meta[key] = value
        chat_id = _chat_id(meta.get("id"))
        if chat_id is None or not isinstance(meta.get("type", ""), str):
            tally.skipped_chats["malformed"] += 1
            return None
        verdict = select(str(meta.get("type", "")), chat_id, meta.get("name"))
        if isinstance(verdict, Skip):
            tally.skipped_chats[verdict.reason] += 1
            return None
        tally.dropped_messages.update(scratch.dropped_messages)
        return Chat(SOURCE, chat_id, verdict, meta.get("name"), messages or [])

    def _messages(self, events: Iterator[tuple[str, Any]], tally: Tally, chat: Any) -> list[Message]:
        """A messages array whose start was just read, built and converted one message at a time."""
        out: list[Message] = []
        for event, value in events:
            if event == "end_array":
                break
            if event in ("start_map", "start_array"):
                converted = _convert(_build(events, event, value, self.label), tally)
                if converted is not None:
                    out.append(converted)
                    if len(out) > self.max_chat_messages:
                        raise _too_many(self.label, chat, self.max_chat_messages)
            else:
                tally.dropped_messages["malformed"] += 1
        return out

    def _single_chat(self, meta: dict[str, Any], messages: list[Message], select: Selector, tally: Tally
                     ) -> Chat | None:
        self.chat_count = 1
        chat_type, chat_id = str(meta.get("type", "")), _chat_id(meta.get("id"))
        if chat_id is None:
            raise UserError(
                f"{self.label} has messages but no chat id or type; give the result.json that "
                "Telegram Desktop wrote."
            )
        verdict = select(chat_type, chat_id, meta.get("name"))
        if isinstance(verdict, Skip):
            tally.skipped_chats[verdict.reason] += 1
            return None
        # A single personal chat says whose it is only implicitly: the sender that is not the peer.
        if chat_type == "personal_chat" and self.owner_id is None:
            others = {m.sender for m in messages} - {f"user{chat_id}"}
            if len(others) == 1:
                self.owner_id = others.pop()
        return Chat(SOURCE, chat_id, verdict, meta.get("name"), messages)

    def _set_personal_information(self, info: Any) -> None:
        if isinstance(info, dict) and info.get("user_id") is not None:
            self.owner_id = f"user{int(info['user_id'])}"
            full = " ".join(str(info.get(k) or "") for k in ("first_name", "last_name")).strip()
            self.owner_name = full or None


class RestartWithStreaming(Exception):
    """The fast path failed after yielding chats; the caller restarts this export on the streaming path."""


def open_export(path: str | Path) -> Export:
    """Resolve a file, an export folder or a .zip of one into an `Export`; UserError if unreadable."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path} does not exist; give the path to a Telegram export (result.json, its "
                        "folder, or a .zip of the folder).")
    if path.is_dir():
        candidates = [path / "result.json", *sorted(path.glob("*/result.json"))]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            html = (path / "messages.html").exists() or any(path.glob("*/messages.html"))
            hint = ("it holds an HTML export; export again with the format 'Machine-readable JSON'"
                    if html else "export your chats from Telegram Desktop as 'Machine-readable JSON'")
            raise UserError(f"{path} has no result.json; {hint}.")
        path = found
    if zipfile.is_zipfile(path):
        return _zip_export(path)
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise UserError(f"cannot read {path} ({err.strerror}); check the path and its permissions.") from None
    return Export(path=path, label=str(path), size=path.stat().st_size, plain_file=path.is_file(),
                  _opener=lambda: open(path, "rb"))


def _zip_export(path: Path) -> Export:
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == "result.json"]
            if not names:
                raise UserError(f"{path} holds no result.json; zip the folder Telegram Desktop exported "
                                "(format 'Machine-readable JSON').")
            inner = min(names, key=lambda n: n.count("/"))
            info = zf.getinfo(inner)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError):
        raise UserError(f"{path} is a damaged zip archive; zip the export folder again.") from None
    size = info.file_size
    if info.flag_bits & 0x1:
        raise UserError(f"{path} is encrypted; unzip it yourself and give the folder or its result.json.")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        raise UserError(f"{path} is compressed with a method Python cannot read (zip method {info.compress_type}, "
                        "e.g. Deflate64); unzip it yourself and give the folder, or zip it again.")
    if size > _CHAT_BYTES_FAST and size > _MAX_ZIP_RATIO * max(1, info.compress_size):
        raise UserError(f"{path} expands {size // max(1, info.compress_size):,}-fold ({info.compress_size:,} bytes "
                        f"to {size:,}), which no chat export does; unzip it yourself and check what it holds.")

    def opener() -> IO[bytes]:
        zf = zipfile.ZipFile(path)
        inner_file = zf.open(inner)
        original_close = inner_file.close

        def close() -> None:
            original_close()
            zf.close()

        inner_file.close = close  # type: ignore[method-assign]
        return inner_file

    return Export(path=path, label=f"{path}!{inner}", size=size, _opener=opener)


# -- messages --------------------------------------------------------------------------------------
def flatten_text(text: Any) -> str:
    """The exact text: a string, or a list of strings and entity objects joined with no separator.

    Entities carry their visible text (`custom_emoji` its fallback emoji, `text_link` its label).
    """
    if isinstance(text, str):
        return text
    if text is None:
        return ""
    if isinstance(text, list):
        return "".join(part if isinstance(part, str) else str(part.get("text") or "") for part in text)
    raise TypeError("text is neither a string nor a list")


def media_tag(m: dict[str, Any]) -> str | None:
    """The placeholder for a message's non-text content, or None for plain text."""
    if "photo" in m:
        return "<photo>"
    kind = m.get("media_type")
    if kind == "sticker":
        return ph.sticker(m.get("sticker_emoji"))
    if kind == "voice_message":
        return ph.voice(m.get("duration_seconds"))
    if kind == "video_message":
        return ph.video_message(m.get("duration_seconds"))
    if kind == "animation":
        return "<gif>"
    if kind == "video_file":
        return "<video>"
    if kind == "audio_file":
        return "<audio>"
    if kind or "file" in m or "file_name" in m:
        return "<file>"
    if "contact_information" in m:
        return "<contact>"
    if "location_information" in m or "place_name" in m:
        return "<location>"
    if "poll" in m:
        return ph.poll(flatten_text((m["poll"] or {}).get("question")))
    if "todo_list" in m:
        return ph.todo(flatten_text((m["todo_list"] or {}).get("title")))
    if "game_title" in m:
        return "<game>"
    if "invoice_information" in m:
        return "<invoice>"
    if "giveaway_information" in m or "giveaway_results" in m or "paid_stars_amount" in m:
        return "<media>"
    return None


def _sender(from_id: Any) -> str:
    if isinstance(from_id, int):  # exports before 2021 wrote bare user ids
        return f"user{from_id}"
    if isinstance(from_id, str) and from_id:
        return from_id
    raise ValueError("no sender")


def _timestamp(m: dict[str, Any]) -> int:
    # Old exports: local time of the exporting PC with no offset; read as UTC, which keeps the order.
    return int(datetime.fromisoformat(m["date"]).replace(tzinfo=UTC).timestamp())


_NOT_OWN_WORDS = frozenset({"forwarded_from", "saved_from", "via_bot"})


def _convert(m: Any, tally: Tally) -> Message | None:
    """One export message → Message, or None (counted in tally by reason). Hot: keep it lean."""
    try:
        kind = m.get("type")
        if kind != "message":
            tally.dropped_messages["service" if kind == "service" else "unsupported"] += 1
            return None
        if not _NOT_OWN_WORDS.isdisjoint(m):
            tally.dropped_messages["via_bot" if "forwarded_from" not in m and "saved_from" not in m else "forward"] += 1
            return None
        text = m.get("text")
        if not isinstance(text, str):
            text = flatten_text(text)
        if not _MEDIA_KEYS.isdisjoint(m):
            tag = media_tag(m)
            if tag:
                text = ph.with_caption(tag, text)
        if not text or text.isspace():
            tally.dropped_messages["empty"] += 1
            return None
        reply = m.get("reply_to_message_id")
        if reply is not None:
            reply = None if "reply_to_peer_id" in m else int(reply)
        sender = m.get("from_id")
        if not isinstance(sender, str) or not sender:
            sender = _sender(sender)
        unix = m.get("date_unixtime")
        return Message(int(m["id"]), sender, int(unix) if unix is not None else _timestamp(m), text, reply,
                       m.get("from"))
    except (KeyError, TypeError, ValueError, AttributeError):
        tally.dropped_messages["malformed"] += 1
        return None


def _convert_all(messages: Any, tally: Tally) -> list[Message]:
    if not isinstance(messages, list):
        return []
    out = []
    for m in messages:
        converted = _convert(m, tally)
        if converted is not None:
            out.append(converted)
    return out


# -- the fast path's decoder -------------------------------------------------------------------------
# Decoding a chat's bytes straight into these structs reads only the keys `_convert` and `media_tag` look at
# and skips the rest unbuilt (every message's `text_entities` list repeats its text): about twice as fast as
# building every message as a dict. A message that is not plain text goes back through `_convert` as a dict.
class _Message(msgspec.Struct, gc=False):  # JSON cannot make cycles: no need for the cycle collector
    id: Any = msgspec.UNSET
    type: Any = msgspec.UNSET
    date: Any = msgspec.UNSET
    date_unixtime: Any = msgspec.UNSET
    sender_name: Any = msgspec.field(default=msgspec.UNSET, name="from")
    from_id: Any = msgspec.UNSET
    text: Any = msgspec.UNSET
    reply_to_message_id: Any = msgspec.UNSET
    reply_to_peer_id: Any = msgspec.UNSET
    # rare: a message with any of these is converted by `_convert`
    forwarded_from: Any = msgspec.UNSET
    saved_from: Any = msgspec.UNSET
    via_bot: Any = msgspec.UNSET
    photo: Any = msgspec.UNSET
    file: Any = msgspec.UNSET
    file_name: Any = msgspec.UNSET
    media_type: Any = msgspec.UNSET
    sticker_emoji: Any = msgspec.UNSET
    duration_seconds: Any = msgspec.UNSET
    contact_information: Any = msgspec.UNSET
    location_information: Any = msgspec.UNSET
    place_name: Any = msgspec.UNSET
    poll: Any = msgspec.UNSET
    game_title: Any = msgspec.UNSET
    invoice_information: Any = msgspec.UNSET
    todo_list: Any = msgspec.UNSET
    giveaway_information: Any = msgspec.UNSET
    giveaway_results: Any = msgspec.UNSET
    paid_stars_amount: Any = msgspec.UNSET


class _ChatMessages(msgspec.Struct, gc=False):
    messages: list[_Message] | None = None


_RARE = _Message.__struct_fields__[9:]  # every key that makes a message not plain text (and two media details)
_KEYS = dict(zip(_Message.__struct_fields__, _Message.__struct_encode_fields__, strict=True))  # field → JSON key
_DECODER = msgspec.json.Decoder(_ChatMessages)


def _parse_messages(raw: bytes | bytearray, last: bool, tally: Tally) -> list[Message]:
    """A chat's bytes (the fast path) → its messages."""
    body = raw.rstrip()
    if not last and body.endswith(b","):
        try:
            messages = _DECODER.decode(body[:-1]).messages or []
        except (msgspec.DecodeError, RecursionError):  # incl. a message of an unexpected shape: each is judged on its own below
            pass
        else:
            return _convert_decoded(messages, tally)
    return _convert_all(_parse_chat_bytes(raw, last).get("messages") or [], tally)


def _convert_decoded(messages: list[_Message], tally: Tally) -> list[Message]:
    out = []
    unset = msgspec.UNSET
    rare = len(_RARE)
    for m in messages:
        msg_id, kind, date, unix, name, sender, text, reply, peer, *others = astuple(m)  # one C call, not 28 lookups
        if kind != "message" or others.count(unset) != rare:
            converted = _convert({_KEYS[f]: v for f in _KEYS if (v := getattr(m, f)) is not unset}, tally)
            if converted is not None:
                out.append(converted)
            continue
        try:  # a plain text message: what `_convert` does for one, without the dict
            if not isinstance(text, str):
                text = flatten_text(None if text is unset else text)
            if not text or text.isspace():
                tally.dropped_messages["empty"] += 1
                continue
            # a reply to a message of another chat (peer set) has nothing to point at here
            reply = None if reply is unset or reply is None or peer is not unset else int(reply)
            if not isinstance(sender, str) or not sender:
                sender = _sender(sender)
            ts = int(unix) if unix is not unset and unix is not None else _timestamp({"date": date})
            out.append(Message(int(msg_id), sender, ts, text, reply, None if name is unset else name))
        except (KeyError, TypeError, ValueError, AttributeError):
            tally.dropped_messages["malformed"] += 1
    return out


# -- helpers ---------------------------------------------------------------------------------------
def _parse_chat_bytes(raw: bytes | bytearray, last: bool) -> dict[str, Any]:
    """Parse one chat's bytes; they end with `,` before the next chat, or with closing brackets."""
    body = raw.rstrip()
    if not last and body.endswith(b","):
        try:
            return orjson.loads(body[:-1])
        except orjson.JSONDecodeError:
            pass
    # The last chat of a list is followed by closing brackets and maybe more keys: let a decoder
    # that reports where the object ends find it.
    try:
        text = raw.decode("utf-8")
        obj, end = json.JSONDecoder().raw_decode(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise NotFastPath(f"chat bytes do not parse: {str(err)[:80]}") from None
    if not isinstance(obj, dict):
        raise NotFastPath("chat is not an object")
    if _MESSAGES_KEY.search(text[end:].encode()):  # a chat whose header the fast path did not recognise
        raise NotFastPath("a chat header of another shape")
    return obj


def _find_header(buf: bytearray, start: int) -> re.Match[bytes] | None:
    """The first chat header whose `"messages": [` lies at or after `start`."""
    while (at := buf.find(b'"messages"', start)) != -1:  # bytes.find is far faster than a regex search
        key = _MESSAGES_KEY.match(buf, at)
        if key is None:
            start = at + 10
            continue
        low = max(0, key.start() - _HEADER_MAX)
        brace = buf.rfind(b"{", low, key.start())
        while brace != -1:
            match = _CHAT_HEADER.match(buf, brace)
            if match and match.end() == key.end():
                return match
            brace = buf.rfind(b"{", low, brace)
        start = key.end()
    return None


def _header(match: re.Match[bytes]) -> tuple[str, int, str | None]:
    name = match["name"]
    try:
        return match["type"].decode(), int(match["id"]), orjson.loads(name) if name else None
    except orjson.JSONDecodeError:  # not UTF-8: the streaming path says so
        raise NotFastPath("a chat name that does not decode") from None


_TOP_KEY = "<top-level key>"
_BUILT = frozenset({"personal_information", "name", "type", "id"})  # read whole (name, type, id: a single chat's)
_ENTERED = frozenset({"chats.list.item", "left_chats.list.item", "messages"})  # read piece by piece


def _walk(events: Iterator[tuple[str, Any]], built: frozenset[str], entered: frozenset[str], label: str
          ) -> Iterator[tuple[str, Any]]:
    """(prefix, value) in ijson's prefix notation for each value at a prefix in `built` (built whole) and
    each container at one in `entered` (value: its start event; the caller reads its events through its end), and
    (_TOP_KEY, key) for each top-level key.

    Prefixes are kept here rather than by ijson.parse, which builds one string per level for every event:
    memory quadratic in the depth (benchmarks/NOTES.md, "Behind the code", has a file of brackets).
    """
    stack: list[str] = []
    for event, value in events:
        if event == "map_key":
            stack[-1] = value
            if len(stack) == 1:
                yield _TOP_KEY, value
        elif event in ("end_map", "end_array"):
            stack.pop()
        else:
            prefix = ".".join(stack)
            container = event in ("start_map", "start_array")
            if container and prefix in entered:
                yield prefix, event
            elif prefix in built:
                yield prefix, _build(events, event, value, label) if container else value
            elif container:
                if len(stack) >= _MAX_DEPTH:
                    raise _too_deep(label)
                stack.append("item" if event == "start_array" else "")


def _build(events: Iterator[tuple[str, Any]], event: str, value: Any, label: str) -> Any:
    """Build the value that starts at this ijson event, consuming its events."""
    builder = ijson.ObjectBuilder()
    builder.event(event, value)
    if event in ("start_map", "start_array"):
        for ev, val in _rest(events, label):
            builder.event(ev, val)
    return builder.value


def _skip(events: Iterator[tuple[str, Any]], label: str) -> None:
    """Consume the rest of a container whose start was just read, building nothing."""
    for _ in _rest(events, label):
        pass


def _rest(events: Iterator[tuple[str, Any]], label: str) -> Iterator[tuple[str, Any]]:
    """The events of a container whose start was just read, through its end; refused past `_MAX_DEPTH`."""
    depth = 1
    for ev, val in events:
        yield ev, val
        if ev in ("start_map", "start_array"):
            depth += 1
            if depth > _MAX_DEPTH:
                raise _too_deep(label)
        elif ev in ("end_map", "end_array"):
            depth -= 1
            if depth == 0:
                return


def _incomplete(label: str, err: Exception) -> UserError:
    """ijson reports bad bytes, bad syntax and a cut-off file with one exception type."""
    text = str(err)
    if "UTF8" in text:
        return UserError(f"{label} is not UTF-8 text (it holds bytes that are not); export it again from "
                         "Telegram Desktop, or convert it to UTF-8.")
    if "premature EOF" in text or not text.strip():
        return UserError(f"{label} is truncated (the file ends in the middle); export it again or copy the "
                         "whole file.")
    return UserError(f"{label} is not valid JSON ({text.splitlines()[0][:80]}); give the result.json of a "
                     "Telegram Desktop export.")


def _too_deep(label: str) -> UserError:
    return UserError(f"{label} nests values more than {_MAX_DEPTH} levels deep, which no Telegram export does; "
                     "give the result.json that Telegram Desktop wrote.")


def _too_many(label: str, chat: Any, limit: int) -> UserError:
    return UserError(f"a chat in {label} ({chat or 'unnamed'}) has more than {limit:,} messages; leave it out with "
                     "--exclude-chat or raise --max-chat-messages.")


def _chat_id(value: Any) -> int | None:
    """A chat id as both reading paths accept it: an integer, or an integer written as a string."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,20}", value):
        return int(value)
    return None


class _Guarded:
    """A read-through stream that reports bytes read (for the progress bar), turns a damaged archive into
    one sentence, and refuses a stretch of `_MAX_GAP` bytes without a string boundary before anything
    builds it."""

    def __init__(self, inner: IO[bytes], label: str, progress: Callable[[int], None] | None) -> None:
        self._inner, self._label, self._progress = inner, label, progress
        self._run = 0  # bytes since the last '"'

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._inner.read(n)
        except (zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise UserError(f"{self._label} is damaged ({err}); zip the export folder again or give it unzipped.") from None
        except OSError as err:
            raise UserError(f"cannot read {self._label} ({err}); check the file and its permissions.") from None
        if data:
            first = data.find(b'"')
            if first == -1:
                self._run += len(data)
            else:
                inner_gap = len(data) > _MAX_GAP and _LONG_GAP.search(data)
                if self._run + first > _MAX_GAP or inner_gap:
                    self._refuse()
                self._run = len(data) - data.rfind(b'"') - 1
            if self._run > _MAX_GAP:
                self._refuse()
        if self._progress:
            self._progress(len(data))
        return data

    def _refuse(self) -> None:
        raise UserError(f"{self._label} holds a stretch of more than {_MAX_GAP >> 20} MB with no text boundary (one "
                        "enormous value or padding), which no Telegram export does; export your chats again.")


_LONG_GAP = re.compile(rb'"[^"]{%d}' % _MAX_GAP)


def classify_chat(chat_type: str, chat_id: int) -> str | Skip:
    """The chat kind we read (PERSONAL/GROUP), or why it is left out."""
    if chat_id == TELEGRAM_SERVICE_ID:
        return Skip("verification_codes")
    if chat_type in CHAT_KINDS:
        return CHAT_KINDS[chat_type]
    return Skip(SKIP_REASONS.get(chat_type, "unknown_type"))
