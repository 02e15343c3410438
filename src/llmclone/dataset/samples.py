"""One chat → its training samples, encoded as JSONL lines and spilled in order.

For each line it keeps the time of its owner turn (for the split by date), its length, its estimated
tokens and a digest (for the dataset hash), so the split can later copy byte ranges without parsing.
Self-contained (options in, counts out) so chats can be processed in worker processes and merged after.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import Counter
from itertools import accumulate
from operator import attrgetter
from typing import BinaryIO

import orjson
from xxhash import xxh3_128_digest

from llmclone.dataset.dialogues import ASSISTANT, USER, estimate_tokens, merge_turns, split_sessions, windows
from llmclone.dataset.privacy import REDACTED, RedactedValues, Scrubber
from llmclone.sources.base import GROUP, Chat, Tally

_REDACTED = REDACTED.encode()
_TIME = attrgetter("ts")


class SampleMaker:
    def __init__(self, options: "IngestOptions", scrubber: Scrubber) -> None:  # noqa: UP037, F821
        self.options = options
        self.since, self.until = options.window()
        self.scrubber = scrubber
        self.cost = estimate_tokens if options.context_unit == "tokens" else len
        self.tally = Tally()
        self.counts: Counter[str] = Counter()
        self.owner_times = array("q")  # per sample, in spill order
        self.lengths = array("q")
        self.tokens = array("q")
        self.digests = bytearray()  # 16 bytes per sample
        self.owner_names: Counter[str] = Counter()

    def add(self, chat: Chat, spill: BinaryIO) -> None:
        """Write the chat's samples to `spill` as JSON lines."""
        options, counts = self.options, self.counts
        messages = chat.messages
        if self.since is not None or self.until is not None:
            lo, hi = self.since, self.until
            kept = [m for m in messages if (lo is None or m.ts >= lo) and (hi is None or m.ts < hi)]
            self.tally.dropped_messages["out_of_date_range"] += len(messages) - len(kept)
            messages = kept
        messages.sort(key=_TIME)  # already ordered in exports; merged chats may interleave
        owner_n = 0
        for m in messages:
            if m.is_owner:
                owner_n += 1
                if m.sender_name and len(self.owner_names) < 20:
                    self.owner_names[m.sender_name] += 1
        counts["messages"] += len(messages)
        if owner_n == 0:
            counts["chats_owner_silent"] += 1
            self.tally.skipped_chats["owner_never_wrote"] += 1
            return
        texts = [m.text for m in messages]
        scrubbed = self.scrubber.scrub_many(texts)
        if scrubbed is not texts:  # the same list back when nothing needed scrubbing, as in most chats
            for m, text in zip(messages, scrubbed, strict=True):
                m.text = text
        counts["chats_used"] += 1
        counts[f"chats_{chat.kind}"] += 1
        counts["owner_messages"] += owner_n
        # Group exports usually hold only the owner's messages: say so, and invent no context for them.
        with_context = not (chat.kind == GROUP and owner_n == len(messages))
        if not with_context:
            counts["groups_without_context"] += 1
        turns = merge_turns(messages, options.merge_gap)
        sessions = split_sessions(turns, options.session_gap)
        counts["turns"] += len(turns)
        counts["sessions"] += len(sessions)
        by_id = {m.id: m for m in messages} if any(m.reply_to is not None for m in messages) else None
        key = hashlib.blake2b(f"{chat.source}:{chat.kind}:{chat.id}".encode(), digest_size=6).hexdigest()
        tail = b'],"chat":"%s","start":' % key.encode()
        for session in sessions:
            encoded: list[bytes] | None = None  # each turn's JSON message: a turn is context in many samples
            prefix: list[int] = []  # running token estimates, for each window's total
            for window in windows(session, options.max_context, self.cost, by_id, with_context):
                if encoded is None:
                    encoded = [_encoded(t.text, t.is_owner) for t in session]
                    prefix = list(accumulate((t.tokens for t in session), initial=0))
                counts["owner_turns"] += 1
                end = window.first + len(window.turns)
                parts = encoded[window.first : end]
                tokens = prefix[end] - prefix[window.first]
                if window.quoted:
                    parts = [_encoded(q.text, q.is_owner) for q in window.quoted] + parts
                    tokens += sum(estimate_tokens(q.text) for q in window.quoted)
                if options.drop_redacted and any(_REDACTED in p for p in parts):
                    counts["samples_dropped_redacted"] += 1
                    continue
                # The bytes orjson.dumps({"messages": [...], "chat": key, "start": start}) would write.
                line = b'{"messages":[%s%s%d}\n' % (b",".join(parts), tail, window.start)
                spill.write(line)
                self.owner_times.append(window.target.start)
                self.lengths.append(len(line))
                self.tokens.append(tokens)
                self.digests += xxh3_128_digest(line)

    def merge(self, other: SampleMaker) -> None:
        self.tally.dropped_messages.update(other.tally.dropped_messages)
        self.tally.skipped_chats.update(other.tally.skipped_chats)
        self.counts.update(other.counts)
        self.owner_times.extend(other.owner_times)
        self.lengths.extend(other.lengths)
        self.tokens.extend(other.tokens)
        self.digests += other.digests
        self.owner_names.update(other.owner_names)
        self.scrubber.counts.update(other.scrubber.counts)
        if self.scrubber.values is not None and other.scrubber.values is not None:
            self.scrubber.values.values |= other.scrubber.values.values

    def __getstate__(self) -> dict:  # what a worker sends back: counts, not the options or regexes
        state = {k: getattr(self, k) for k in _RESULTS}
        values = self.scrubber.values
        return state | {"scrub_counts": self.scrubber.counts, "scrub_values": values.values if values else None}

    def __setstate__(self, state: dict) -> None:
        for k in _RESULTS:
            setattr(self, k, state[k])
        self.scrubber = Scrubber()
        self.scrubber.counts = state["scrub_counts"]
        if state["scrub_values"] is not None:
            self.scrubber.values = RedactedValues()
            self.scrubber.values.values = state["scrub_values"]


_RESULTS = ("tally", "counts", "owner_times", "lengths", "tokens", "digests", "owner_names")


def _encoded(text: str, is_owner: bool) -> bytes:
    return orjson.dumps({"role": ASSISTANT if is_owner else USER, "content": text})
