"""Turns, sessions and windows: invariants that must hold for any chat."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from llmclone.dataset.dialogues import ASSISTANT, USER, estimate_tokens, merge_turns, split_sessions, windows
from llmclone.sources.base import Message

OWNER = "user1"


@st.composite
def chats(draw: st.DrawFn) -> list[Message]:
    n = draw(st.integers(0, 40))
    ts = 1_700_000_000
    out = []
    for i in range(n):
        ts += draw(st.sampled_from([1, 30, 200, 400, 5000, 20000]))
        sender = draw(st.sampled_from([OWNER, "user2", "user3"]))
        text = draw(st.text(min_size=1, max_size=30))
        reply = draw(st.one_of(st.none(), st.integers(1, max(1, i))))
        out.append(Message(i + 1, sender, ts, text, reply, None, sender == OWNER))
    return out


@given(chats(), st.integers(0, 600))
def test_merge_keeps_every_message_once_in_order(messages: list[Message], gap: int) -> None:
    turns = merge_turns(messages, gap)
    assert [i for t in turns for i in t.ids] == [m.id for m in messages]
    for t in turns:
        parts = [m for m in messages if m.id in t.ids]
        assert {m.sender for m in parts} == {t.sender}
        assert t.text == "\n".join(m.text for m in parts)
    for a, b in itertools.pairwise(turns):  # a new turn starts only on a new sender or a pause
        assert a.sender != b.sender or b.start - a.end > gap


@given(chats(), st.integers(0, 600), st.integers(1000, 20000))
def test_sessions_split_only_at_gaps(messages: list[Message], gap: int, session_gap: int) -> None:
    sessions = split_sessions(merge_turns(messages, gap), session_gap)
    for s in sessions:
        for a, b in itertools.pairwise(s):
            assert b.start - a.end <= session_gap
    for a, b in itertools.pairwise(sessions):
        assert b[0].start - a[-1].end > session_gap


@settings(max_examples=200)
@given(chats(), st.integers(1, 60))
def test_windows_one_per_owner_turn_within_session_and_budget(messages: list[Message], budget: int) -> None:
    by_id = {m.id: m for m in messages}
    sessions = split_sessions(merge_turns(messages, 60), 3600)
    owner_turns = [t for s in sessions for t in s if t.is_owner]
    targets = []
    for s in sessions:
        for w in windows(s, budget, estimate_tokens, by_id):
            targets.append(w.target)
            assert w.target.is_owner
            assert all(t in s for t in w.turns)  # never crosses a session
            idx = [s.index(t) for t in w.turns]
            assert idx == list(range(idx[0], idx[-1] + 1))  # consecutive
            used = sum(estimate_tokens(t.text) for t in w.turns) + sum(estimate_tokens(q.text) for q in w.quoted)
            assert len(w.turns) == 1 or used <= budget
            assert all(q.ts <= w.turns[0].start for q in w.quoted)
            msgs = w.messages()
            assert msgs[-1] == {"role": ASSISTANT, "content": w.target.text}
            assert {m["role"] for m in msgs} <= {ASSISTANT, USER}
    assert [id(t) for t in targets] == [id(t) for t in owner_turns]  # no owner turn lost or duplicated


def test_quoted_message_outside_window_comes_first() -> None:
    old = Message(1, "user2", 1000, "what do you think about the trip?", None, None, False)
    filler = [Message(i, "user2" if i % 2 else OWNER, 1000 + i * 10, "x" * 90, None, None, i % 2 == 0)
              for i in range(2, 9)]
    answer = Message(20, OWNER, 2000, "about the trip: yes!", 1, None, True)
    messages = [old, *filler, answer]
    by_id = {m.id: m for m in messages}
    session = merge_turns(messages, 0)
    last = list(windows(session, 95, estimate_tokens, by_id))[-1]
    assert last.quoted == [old]
    assert last.messages()[0] == {"role": USER, "content": old.text}
    assert last.messages()[-1]["content"] == "about the trip: yes!"


def test_window_without_context() -> None:
    msgs = [Message(i, OWNER, 1000 + i, f"m{i}", None, None, True) for i in range(3)]
    turns = merge_turns(msgs, 0)
    ws = list(windows(turns, 1000, with_context=False))
    assert [w.messages() for w in ws] == [[{"role": ASSISTANT, "content": f"m{i}"}] for i in range(3)]
