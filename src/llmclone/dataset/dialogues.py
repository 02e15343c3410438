"""Messages → turns → sessions → training windows.

- A turn is a burst: consecutive messages of one sender, each within `merge_gap` of the previous,
  joined with newlines (people send thoughts as several short messages).
- A session ends where the chat goes quiet for more than `session_gap`; samples never cross it.
- A sample is a window of consecutive turns of one session that ends with an owner turn, with as much
  earlier context as fits the budget. If a turn in it answers a quoted message that fell outside the
  window, that message is put first, so the reply makes sense.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from llmclone.sources.base import Message

ASSISTANT, USER = "assistant", "user"


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate (≈3 characters per token for chat text in Latin or Cyrillic)."""
    return len(text) // 3 + 1


@dataclass(slots=True)
class Turn:
    sender: str
    is_owner: bool
    start: int
    end: int
    text: str = ""
    ids: list[int] = field(default_factory=list)
    replies: list[int] = field(default_factory=list)
    tokens: int = 0  # estimate, filled by windows()

    @property
    def role(self) -> str:
        return ASSISTANT if self.is_owner else USER


def merge_turns(messages: Sequence[Message], merge_gap: int) -> list[Turn]:
    """Messages in time order → turns. Every message lands in exactly one turn, in order."""
    turns: list[Turn] = []
    last: Turn | None = None
    for m in messages:
        if last is None or m.sender != last.sender or m.ts - last.end > merge_gap:
            last = Turn(m.sender, m.is_owner, m.ts, m.ts, m.text)
            turns.append(last)
        else:
            last.text += "\n" + m.text
        last.end = m.ts
        last.ids.append(m.id)
        if m.reply_to is not None:
            last.replies.append(m.reply_to)
    return turns


def split_sessions(turns: Sequence[Turn], session_gap: int) -> list[list[Turn]]:
    sessions: list[list[Turn]] = []
    for turn in turns:
        if not sessions or turn.start - sessions[-1][-1].end > session_gap:
            sessions.append([])
        sessions[-1].append(turn)
    return sessions


@dataclass(slots=True)
class Window:
    turns: list[Turn]  # the window, in order, ending with the owner's turn
    quoted: list[Message]  # messages answered inside the window but outside it, oldest first
    first: int = 0  # index of turns[0] in the session

    @property
    def target(self) -> Turn:
        return self.turns[-1]

    def messages(self) -> list[dict[str, str]]:
        """Conversational format: owner = assistant, everyone else = user, one message per turn.

        Two turns of one role in a row stay apart (a pause is part of how people write); chat
        formats that need alternating roles join them when rendering.
        """
        out = [{"role": ASSISTANT if q.is_owner else USER, "content": q.text} for q in self.quoted]
        return out + [{"role": t.role, "content": t.text} for t in self.turns]

    @property
    def start(self) -> int:
        return self.quoted[0].ts if self.quoted else self.turns[0].start


def windows(
    session: Sequence[Turn],
    budget: int,
    cost: Callable[[str], int] = estimate_tokens,
    by_id: dict[int, Message] | None = None,
    with_context: bool = True,
) -> Iterator[Window]:
    """One window per owner turn. The owner turn is always whole, even if alone it exceeds the budget."""
    costs = [cost(t.text) for t in session]
    for t, c in zip(session, costs if cost is estimate_tokens else map(estimate_tokens, (t.text for t in session)),
                    strict=True):
        t.tokens = c
    for i, turn in enumerate(session):
        if not turn.is_owner:
            continue
        used, j = costs[i], i
        while with_context and j > 0 and used + costs[j - 1] <= budget:
            j -= 1
            used += costs[j]
        quoted = _quoted(session[j : i + 1], i - j, by_id, budget - used, cost) if with_context else []
        yield Window(list(session[j : i + 1]), quoted, j)


def _quoted(window: Sequence[Turn], last: int, by_id: dict[int, Message] | None, room: int,
            cost: Callable[[str], int]) -> list[Message]:
    """Quoted messages answered by the last two turns (the owner's reply and what it answers)."""
    if not by_id:
        return []
    inside = {i for t in window for i in t.ids}
    found: list[Message] = []
    for turn in window[max(0, last - 1):]:
        for rid in turn.replies:
            msg = by_id.get(rid)
            if msg is None or rid in inside or msg in found or msg.ts > window[0].start:
                continue
            if cost(msg.text) <= room:
                room -= cost(msg.text)
                found.append(msg)
    return sorted(found, key=lambda m: m.ts)
