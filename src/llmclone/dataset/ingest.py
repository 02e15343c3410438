"""`llmclone ingest`: exports → train.jsonl / eval.jsonl / stats.json in a private dataset directory.

One chat is in memory at a time. Samples are spilled to disk as they are made, with the time of
their owner turn; once the whole history is seen, the latest `eval_fraction` of owner turns (by date)
go to eval.jsonl and the rest to train.jsonl, so evaluation always measures the future.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import signal
import sqlite3
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Any, BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tqdm import tqdm

from llmclone import interrupts
from llmclone.dataset.io import PRIVATE_FILE, atomic_dir, write_json
from llmclone.dataset.privacy import REDACTED_VALUES, RedactedValues, Scrubber
from llmclone.dataset.samples import SampleMaker
from llmclone.errors import UserError
from llmclone.sources.base import GROUP, Chat, Message, Skip, Tally
from llmclone.sources.telegram import (
    MAX_CHAT_MESSAGES,
    Export,
    NotFastPath,
    RawChat,
    RestartWithStreaming,
    Selector,
    classify_chat,
    open_export,
)

STATS_VERSION = 1


class IngestOptions(BaseModel):
    """What ingest keeps and how it cuts it; checked when made (`of`: a mistake is one sentence with its flag)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    me: str | None = None  # "user123", "123" or a display name
    groups: bool = False
    chats: list[str] = Field(default_factory=list)  # names or ids to include (only these)
    exclude_chats: list[str] = Field(default_factory=list)
    since: str | None = None  # YYYY-MM-DD, inclusive
    until: str | None = None  # YYYY-MM-DD, exclusive
    merge_gap: int = Field(300, ge=0)  # seconds between messages of one burst
    session_gap: int = Field(4 * 3600, gt=0)  # seconds of silence that end a session
    max_context: int = Field(256, ge=1)  # context budget of a sample
    context_unit: Literal["tokens", "chars"] = "tokens"  # tokens: estimated
    eval_fraction: float = Field(0.1, ge=0, lt=1)  # the latest share of each chat, held out
    redact_file: str | None = None
    drop_redacted: bool = False
    max_chat_messages: int = Field(MAX_CHAT_MESSAGES, ge=1)  # a chat is held whole while its samples are made

    @model_validator(mode="after")
    def _consistent(self) -> IngestOptions:
        # UserError passes through pydantic as it is: the sentence already names both flags
        if self.merge_gap >= self.session_gap:
            raise UserError("--merge-gap must be shorter than --session-gap; lower it or raise the session gap.")
        if self.drop_redacted and not self.redact_file:
            raise UserError("--drop-redacted needs --redact-file with the words to look for.")
        self.window()
        return self

    @classmethod
    def of(cls, **settings: Any) -> IngestOptions:
        try:
            return cls(**settings)
        except ValidationError as err:
            first = err.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else "options"
            message = first["msg"].removeprefix("Value error, ")
            if first["type"] == "extra_forbidden":
                message = "unknown setting"
            raise UserError(f"--{field.replace('_', '-')}: {message}; see llmclone ingest --help.") from None

    def window(self) -> tuple[int | None, int | None]:
        return _day(self.since, "--since"), _day(self.until, "--until")


def _day(value: str | None, flag: str) -> int | None:
    if value is None:
        return None
    try:
        return int(datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp())
    except ValueError:
        raise UserError(f"{flag} {value!r} is not a date; write it as YYYY-MM-DD.") from None


# -- selection and owner ---------------------------------------------------------------------------
def make_selector(options: IngestOptions) -> Selector:
    wanted = {c.casefold() for c in options.chats}
    unwanted = {c.casefold() for c in options.exclude_chats}

    def named(chat_id: int, name: str | None, names: set[str]) -> bool:
        return str(chat_id) in names or (name is not None and name.casefold() in names)

    def select(chat_type: str, chat_id: int, name: str | None) -> str | Skip:
        verdict = classify_chat(chat_type, chat_id)
        if isinstance(verdict, Skip):
            return verdict
        if named(chat_id, name, unwanted):
            return Skip("excluded")
        if wanted:
            return verdict if named(chat_id, name, wanted) else Skip("not_selected")
        if verdict == GROUP and not options.groups:
            return Skip("group")
        return verdict

    return select


class OwnerResolver:
    """Decides which sender is the owner in each chat: --me, else each export's own account."""

    def __init__(self, me: str | None) -> None:
        me = (me or "").strip()
        self.fixed = None
        self.name = None
        if re.fullmatch(r"(?:user)?\d+", me):
            self.fixed = "user" + me.removeprefix("user")
        elif me:
            self.name = me.casefold()
        self.learned: str | None = None
        self.export_owner: tuple[str, str] | None = None  # (owner id, export label)
        self.ids: set[str] = set()
        self.names: Counter[str] = Counter()
        self.account_name: str | None = None

    def mark_owner(self, chat: Chat, export: Export) -> None:
        """Mark the owner's messages in `chat` (is_owner), deciding who the owner is in this export."""
        owner = self.fixed or self._by_name(chat, export)
        if owner is None and self.name is None:
            owner = export.owner_id
            if owner is None:
                raise UserError(
                    f"cannot tell which sender is you in {export.label}; pass --me with your Telegram "
                    "user id (e.g. --me user123456) or your display name (--me \"Ann Smith\")."
                )
            if self.export_owner and self.export_owner[0] != owner:
                raise UserError(
                    f"{export.label} and {self.export_owner[1]} are exports of different accounts "
                    f"({owner}, {self.export_owner[0]}); ingest them separately or pass --me."
                )
            self.export_owner = (owner, export.label)
        if owner is not None and owner == export.owner_id and export.owner_name:
            self.account_name = export.owner_name
        for m in chat.messages:
            m.is_owner = m.sender == owner
        if owner is not None:
            self.ids.add(owner)

    def _by_name(self, chat: Chat, export: Export) -> str | None:
        if self.name is None:
            return None
        if export.owner_name and export.owner_name.casefold() == self.name:
            return export.owner_id
        found = next((m.sender for m in chat.messages if (m.sender_name or "").casefold() == self.name), None)
        if found:
            self.learned = found
        return found or self.learned

    def display_name(self) -> str | None:
        if self.account_name:
            return self.account_name
        return self.names.most_common(1)[0][0] if self.names else None

    def key(self) -> str:
        """A pseudonymous owner fingerprint: lets later stages check a clone and a dataset belong together."""
        return hashlib.blake2b(",".join(sorted(self.ids)).encode(), digest_size=8).hexdigest()


# -- several exports: merged and deduplicated in SQLite, on disk --------------------------------------
def merged_chats(flagged: Iterator[Chat], db_path: Path) -> Iterator[Chat]:
    """Chats that appear in several exports become one, each message once (same id, time and sender)."""
    db = sqlite3.connect(db_path)
    try:
        db.executescript(
            """
            CREATE TABLE chats (n INTEGER PRIMARY KEY, source TEXT, kind TEXT, id INTEGER, name TEXT,
                                UNIQUE (source, kind, id));
            CREATE TABLE messages (chat INTEGER, seq INTEGER, id INTEGER, sender TEXT, ts INTEGER,
                                   text TEXT, reply_to INTEGER, sender_name TEXT, is_owner INTEGER,
                                   UNIQUE (chat, id, ts, sender));
            """
        )
        seq = 0
        for chat in flagged:
            db.execute("INSERT OR IGNORE INTO chats (source, kind, id, name) VALUES (?, ?, ?, ?)",
                       (chat.source, chat.kind, chat.id, chat.name))
            (n,) = db.execute("SELECT n FROM chats WHERE source=? AND kind=? AND id=?",
                              (chat.source, chat.kind, chat.id)).fetchone()
            db.executemany(
                "INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ((n, seq + i, m.id, m.sender, m.ts, m.text, m.reply_to, m.sender_name, m.is_owner)
                 for i, m in enumerate(chat.messages)),
            )
            seq += len(chat.messages)
        db.commit()
        for n, source, kind, chat_id, name in db.execute("SELECT * FROM chats ORDER BY n").fetchall():
            rows = db.execute(
                "SELECT id, sender, ts, text, reply_to, sender_name, is_owner FROM messages "
                "WHERE chat=? ORDER BY ts, seq", (n,))
            messages = [Message(i, s, ts, t, r, sn, bool(o)) for i, s, ts, t, r, sn, o in rows]
            yield Chat(source, chat_id, kind, name, messages)
    finally:
        db.close()


# -- the pipeline ----------------------------------------------------------------------------------
def ingest(paths: Sequence[str | Path], out: str | Path, options: IngestOptions | None = None,
           force: bool = False, progress: bool = True, workers: int | None = None) -> dict[str, Any]:
    """Build the dataset directory `out` from one or more exports; returns the stats written there.

    `workers`: processes that parse chats and build samples (default: one per core; 1 = in-process).
    """
    options = options or IngestOptions()
    if not paths:
        raise UserError("no export given; pass the path to a Telegram export (result.json, folder or .zip).")
    exports, seen = [], set()
    for p in paths:
        export = open_export(p)
        export.max_chat_messages = options.max_chat_messages
        if export.path.resolve() not in seen:
            seen.add(export.path.resolve())
            exports.append(export)
    workers = workers or len(os.sched_getaffinity(0))
    while True:
        try:
            return _ingest(exports, Path(out), options, force, progress, workers)
        except RestartWithStreaming:
            continue  # an export the fast path misread: now marked, read again from the start


def _ingest(exports: list[Export], out: Path, options: IngestOptions, force: bool, progress: bool, workers: int
         ) -> dict[str, Any]:
    tally = Tally()
    scrubber = Scrubber.from_file(options.redact_file)
    scrubber.values = RedactedValues()  # the privacy probe's evidence: keyed hashes, never the values
    owner = OwnerResolver(options.me)
    select = make_selector(options)
    maker = SampleMaker(options, scrubber)

    with atomic_dir(out, force, what="dataset") as tmp:
        bar = tqdm(total=sum(e.size for e in exports), unit="B", unit_scale=True, desc="reading",
                   disable=not progress, leave=False)
        spill_path = tmp / "samples.spill"
        segments: list[tuple[Path, int, int]] = []  # (file, offset, samples): where the samples are, in order
        with open(spill_path, "wb") as spill:
            parallel = (len(exports) == 1 and workers > 1 and owner.name is None
                        and exports[0].size >= _PARALLEL_MIN_BYTES)
            if parallel:
                _parallel(exports[0], select, tally, bar.update, owner, maker, spill, workers, tmp, segments)
            else:
                def flagged() -> Iterator[Chat]:
                    for export in exports:
                        for chat in export.chats(select, tally, bar.update):
                            owner.mark_owner(chat, export)
                            yield chat

                chats = flagged() if len(exports) == 1 else merged_chats(flagged(), tmp / "merge.sqlite")
                for chat in chats:
                    maker.add(chat, spill)
        if not segments:
            segments.append((spill_path, 0, len(maker.lengths)))
        bar.close()
        (tmp / "merge.sqlite").unlink(missing_ok=True)
        tally.dropped_messages.update(maker.tally.dropped_messages)
        tally.skipped_chats.update(maker.tally.skipped_chats)
        owner.names.update(maker.owner_names)
        counts = maker.counts

        if counts["chats_used"] == 0 and counts["chats_owner_silent"] == 0:
            if not tally.skipped_chats:
                raise UserError(f"{exports[0].label} contains no chats; export again with personal chats "
                                "selected.")
            skipped = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(tally.skipped_chats.items()))
            raise UserError(f"none of the chats in {exports[0].label} can be used (skipped: {skipped}); personal "
                            "chats are used by default, add --groups for groups or pick chats with --chat.")
        if counts["owner_messages"] == 0:
            who = options.me or owner.display_name() or next(iter(owner.ids), "the owner")
            raise UserError(
                f"{who} wrote no messages in the selected chats of {exports[0].label}; check --me and the "
                "chat selection (--groups, --chat, --since/--until)."
            )
        cutoff = _cutoff(maker.owner_times, options.eval_fraction)
        split = _split_train_eval(segments, tmp, maker, cutoff)
        if split["train"]["samples"] == 0:
            raise UserError(
                f"all {split['eval']['samples']} samples fell in the eval split (your latest "
                f"{options.eval_fraction:.0%} of turns), leaving none to train on; lower --eval-fraction "
                "(0 keeps every sample for training) or add more chats."
            )
        for path in {p for p, _, _ in segments} | {spill_path} | set(tmp.glob("part-*.spill")):
            path.unlink()  # every worker's spill, also one that got no batch
        stats = _stats(exports, options, owner, tally, scrubber, counts, split, cutoff)
        write_json(tmp / "stats.json", stats)
        scrubber.values.save(tmp / REDACTED_VALUES, stats["dataset_digest"])
    return stats


# -- several cores ---------------------------------------------------------------------------------
_PARALLEL_MIN_BYTES = 8 << 20  # below this, starting processes costs more than it saves
_BATCH_BYTES = 1 << 20
_worker_state: dict[str, Any] = {}


def _parallel(export: Export, select: Selector, tally: Tally,
              progress: Callable[[int], None], owner: OwnerResolver, maker: SampleMaker, spill: BinaryIO,
              workers: int, tmp: Path, segments: list[tuple[Path, int, int]]) -> None:
    """Parse chats and build their samples in worker processes, each writing its own spill file;
    `segments` records, in file order, where each batch's samples went.

    At most 2 batches per worker are in flight, so memory stays bounded whatever the file size.
    """
    items = export.chats(select, tally, progress, parse=False)
    first = next(items, None)
    if first is None:
        return
    if isinstance(first, Chat):  # the streaming path: this file is read in-process
        for chat in chain([first], items):
            owner.mark_owner(chat, export)  # type: ignore[arg-type]
            maker.add(chat, spill)  # type: ignore[arg-type]
        segments.append((tmp / "samples.spill", 0, len(maker.lengths)))
        return
    owner_id = owner.fixed or export.owner_id
    if owner_id is None:
        owner.mark_owner(Chat("telegram", 0, "personal", None), export)  # raises the owner error
    owner.ids.add(owner_id)
    if owner_id == export.owner_id and export.owner_name:
        owner.account_name = export.owner_name
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(maker.options, maker.scrubber, owner_id, tmp)) as pool:
        pending: deque[Future] = deque()

        def collect(future: Future) -> None:
            interrupts.check()
            result = future.result()
            if result is None:  # a chat the fast path could not parse: read this file again, streaming
                export.streaming = True
                raise RestartWithStreaming("a chat did not parse")
            path, offset, part = result
            segments.append((path, offset, len(part.lengths)))
            maker.merge(part)

        for batch in _batches(chain([first], items)):
            with interrupts.deferred():  # the first submit starts the workers: never stop half-way through that
                pending.append(pool.submit(_samples_of_batch, batch))
            while len(pending) >= 2 * workers:
                collect(pending.popleft())
        while pending:
            collect(pending.popleft())


def _batches(items: Iterator[Any]) -> Iterator[list[RawChat]]:
    batch: list[RawChat] = []
    size = 0
    for item in items:
        batch.append(item)
        size += item.size or len(item.raw)
        if size >= _BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _init_worker(options: IngestOptions, scrubber: Scrubber, owner_id: str, tmp: Path) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent cleans up; a worker just stops
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent handles it
    interrupts.release()  # held while the pool started
    path = tmp / f"part-{os.getpid()}.spill"
    _worker_state.update(options=options, scrubber=scrubber, owner=owner_id, path=path, spill=open(path, "ab"))


def _samples_of_batch(batch: list[RawChat]) -> tuple[Path, int, SampleMaker] | None:
    """Samples of a batch of chats, appended to this worker's spill file: (file, offset, counts)."""
    scrubber = _worker_state["scrubber"]
    scrubber.counts = Counter()
    if scrubber.values is not None:
        scrubber.values.values = set()  # each batch reports its own
    maker = SampleMaker(_worker_state["options"], scrubber)
    owner_id = _worker_state["owner"]
    spill = _worker_state["spill"]
    offset = spill.tell()
    for raw in batch:
        try:
            chat = raw.parse(maker.tally)
        except NotFastPath:
            return None
        for m in chat.messages:
            m.is_owner = m.sender == owner_id
        maker.add(chat, spill)
    spill.flush()
    return _worker_state["path"], offset, maker


def _cutoff(times: array, fraction: float) -> int | None:
    """The time from which owner turns go to eval: the latest `fraction` of them, by date."""
    if fraction <= 0 or len(times) < 2:  # a single turn is for training: holding it out leaves nothing
        return None
    ordered = sorted(times)
    index = max(1, min(len(ordered) - 1, int(len(ordered) * (1 - fraction))))  # at least one turn trains
    return ordered[index]


def _split_train_eval(segments: list[tuple[Path, int, int]], tmp: Path, maker: SampleMaker, cutoff: int | None
           ) -> dict[str, dict[str, Any]]:
    """Split the spilled samples into train.jsonl and eval.jsonl by copying runs of lines (no parsing)."""
    names = ("train", "eval")
    digests = {name: hashlib.blake2b(digest_size=32) for name in names}
    samples, tokens = Counter(), Counter()
    sources: dict[Path, BinaryIO] = {}
    with open(tmp / "train.jsonl", "wb") as train, open(tmp / "eval.jsonl", "wb") as ev:
        outs = {"train": train, "eval": ev}
        first = 0
        for path, offset, count in segments:
            src = sources.get(path) or sources.setdefault(path, open(path, "rb"))
            run_name, run_start = "train", offset
            for i in range(first, first + count):
                name = "eval" if cutoff is not None and maker.owner_times[i] >= cutoff else "train"
                if name != run_name:
                    _copy(src, outs[run_name], run_start, offset - run_start)
                    run_name, run_start = name, offset
                offset += maker.lengths[i]
                samples[name] += 1
                tokens[name] += maker.tokens[i]
                digests[name].update(maker.digests[16 * i : 16 * i + 16])
            first += count
            _copy(src, outs[run_name], run_start, offset - run_start)
    for src in sources.values():
        src.close()
    result = {}
    for name in names:
        os.chmod(tmp / f"{name}.jsonl", PRIVATE_FILE)
        result[name] = {"samples": samples[name], "tokens_estimated": tokens[name], "digest": digests[name].hexdigest()}
    return result


def _copy(src: BinaryIO, dst: BinaryIO, offset: int, count: int) -> None:
    """Copy a byte range between files, in the kernel where it can."""
    dst.flush()
    while count > 0:
        try:
            done = os.copy_file_range(src.fileno(), dst.fileno(), count, offset)
        except OSError:
            src.seek(offset)
            dst.write(src.read(count))
            dst.flush()
            return
        if done == 0:
            raise OSError("copy_file_range made no progress")
        offset += done
        count -= done


def _stats(exports: list[Export], options: IngestOptions, owner: OwnerResolver, tally: Tally,
           scrubber: Scrubber, counts: Counter[str], split: dict[str, dict[str, Any]], cutoff: int | None
           ) -> dict[str, Any]:
    # blake2b over the per-line xxh3-128 digests of train then eval: identifies the exact bytes.
    dataset_hash = hashlib.blake2b((split["train"]["digest"] + split["eval"]["digest"]).encode(),
                                   digest_size=32).hexdigest()
    return {
        "version": STATS_VERSION,
        "source": "telegram",
        "exports": [e.path.name for e in exports],
        "owner": {"name": owner.display_name(), "key": owner.key()},
        "chats": {
            "used": counts["chats_used"],
            "personal": counts["chats_personal"],
            "group": counts["chats_group"],
            "groups_without_context": counts["groups_without_context"],
            "skipped": dict(sorted(tally.skipped_chats.items())),
        },
        "messages": {
            "used": counts["messages"],
            "owner": counts["owner_messages"],
            "dropped": dict(sorted(tally.dropped_messages.items())),
        },
        "turns": counts["turns"],
        "owner_turns": counts["owner_turns"],
        "sessions": counts["sessions"],
        "samples": {
            "train": split["train"]["samples"],
            "eval": split["eval"]["samples"],
            "dropped_redacted": counts["samples_dropped_redacted"],
        },
        "tokens_estimated": {"train": split["train"]["tokens_estimated"],
                             "eval": split["eval"]["tokens_estimated"]},
        "split": {"eval_fraction": options.eval_fraction, "eval_from_unixtime": cutoff},
        "redactions": dict(sorted(scrubber.counts.items())),
        "settings": options.model_dump(exclude={"redact_file"}) | {"redact_file": bool(options.redact_file)},
        "files": {name: {"digest": split[name]["digest"]} for name in ("train", "eval")},
        "dataset_digest": dataset_hash,
    }


def summary(stats: dict[str, Any]) -> str:
    """The printed report of an ingest."""
    c, m, s = stats["chats"], stats["messages"], stats["samples"]
    lines = [
        f"owner: {stats['owner']['name'] or '(unnamed)'}",
        f"chats: {c['used']} used ({c['personal']} personal, {c['group']} group"
        + (f", {c['groups_without_context']} without context" if c["groups_without_context"] else "")
        + ")" + (f"; skipped {_counts(c['skipped'])}" if c["skipped"] else ""),
        f"messages: {m['used']} used, {m['owner']} by the owner"
        + (f"; dropped {_counts(m['dropped'])}" if m["dropped"] else ""),
        f"turns: {stats['turns']} ({stats['owner_turns']} by the owner) in {stats['sessions']} sessions",
        f"samples: {s['train']} train, {s['eval']} eval"
        + (f", {s['dropped_redacted']} dropped for redacted words" if s["dropped_redacted"] else ""),
        f"tokens (estimated): {stats['tokens_estimated']['train']} train, {stats['tokens_estimated']['eval']} eval",
        "redactions: " + (_counts(stats["redactions"]) if stats["redactions"] else "none"),
    ]
    return "\n".join(lines)


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))
