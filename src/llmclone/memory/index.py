"""BM25 over remembered exchanges (bm25s, with Russian and English stems from PyStemmer).

One bm25s index, one document per exchange: the owner's words as they are, the other side's lines as
tokens of their own field (marked `>`). A conversation in another chat searches with plain terms, which
match only the owner's words; a conversation in the exchange's own chat also searches the field, so the
other person's lines count there. A weight mask keeps each search to its chats: another person's lines
never even rank in a foreign chat.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN, STOPWORDS_RUSSIAN
from bm25s.tokenization import Tokenized

from llmclone.memory.exchanges import Exchange

_STOPWORDS = frozenset(STOPWORDS_EN) | frozenset(STOPWORDS_RUSSIAN)
_WORD = re.compile(r"(?u)\b\w\w+\b")  # bm25s's own token pattern
_CYRILLIC = re.compile("[а-яё]")
_SAID = ">"  # the field mark of the other side's terms


class Terms:
    """Text -> stemmed terms, each distinct word stemmed once (chat messages repeat the same few words)."""

    def __init__(self) -> None:
        self.english, self.russian = Stemmer.Stemmer("english"), Stemmer.Stemmer("russian")

    def stem(self, word: str) -> str | None:
        """The word's stem in its own alphabet's language; None for a stop word."""
        if word in _STOPWORDS:
            return None
        return (self.russian if _CYRILLIC.search(word) else self.english).stemWord(word)

    def ids(self, text: str, vocab: dict[str, int], seen: dict[str, int], field: str = "") -> list[int]:
        """The term ids of `text` in `vocab` (new terms added), via `seen`: word -> id (-1: a stop word)."""
        out = []
        for word in _WORD.findall(text.lower()):
            i = seen.get(word)
            if i is None:
                stem = self.stem(word)
                i = seen[word] = -1 if stem is None else vocab.setdefault(field + stem, len(vocab))
            if i >= 0:
                out.append(i)
        return out


_TERMS = Terms()


def terms(text: str) -> list[str]:
    return [t for t in map(_TERMS.stem, _WORD.findall(text.lower())) if t is not None]


class Index:
    def __init__(self, chats: np.ndarray, starts: np.ndarray, codes: dict[str, int], bm25: bm25s.BM25 | None) -> None:
        self.chats, self.starts, self.codes = chats, starts, codes  # per exchange: chat code, session start
        self.bm25 = bm25
        self.by_chat = _by_chat(chats, starts)  # chat code -> its exchanges' positions, oldest first

    def __len__(self) -> int:
        return len(self.chats)

    @classmethod
    def build(cls, exchanges: Sequence[Exchange]) -> Index:
        codes: dict[str, int] = {}
        chats = np.fromiter((codes.setdefault(e.chat, len(codes)) for e in exchanges), dtype=np.int32,
                            count=len(exchanges))
        starts = np.fromiter((e.start for e in exchanges), dtype=np.int64, count=len(exchanges))
        if not exchanges:
            return cls(chats, starts, codes, None)
        vocab: dict[str, int] = {"": 0}  # bm25s's empty token: a document with no terms still has one
        owner_words: dict[str, int] = {}
        said_words: dict[str, int] = {}
        docs = [_TERMS.ids(e.owner, vocab, owner_words) + _TERMS.ids(e.said, vocab, said_words, _SAID) or [0]
                for e in exchanges]
        bm25 = bm25s.BM25()
        bm25.index(Tokenized(ids=docs, vocab=vocab), create_empty_token=False, show_progress=False)
        return cls(chats, starts, codes, bm25)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "chats.npy", self.chats)
        np.save(directory / "starts.npy", self.starts)
        (directory / "codes.json").write_text(json.dumps(self.codes), encoding="utf-8")
        if self.bm25 is not None:
            self.bm25.save(str(directory / "bm25"), show_progress=False)

    @classmethod
    def load(cls, directory: Path) -> Index:
        chats, starts = np.load(directory / "chats.npy"), np.load(directory / "starts.npy")
        codes = json.loads((directory / "codes.json").read_text(encoding="utf-8"))
        bm25 = bm25s.BM25.load(str(directory / "bm25"), show_progress=False) if len(chats) else None
        return cls(chats, starts, codes, bm25)

    def search(self, query: str, chat: str | None, k: int, before: int | None = None
               ) -> list[tuple[int, float, bool]]:
        """The `k` best exchanges for `query` in a conversation of `chat`: (position, score, whole), best
        first; `whole` says the other side's lines may be shown (the exchange is from this chat). `before`:
        only exchanges of conversations that began earlier (a training sample's past, as a reply has)."""
        if self.bm25 is None or k <= 0:
            return []
        vocab, words = self.bm25.vocab_dict, terms(query)
        plain = [vocab[t] for t in words if t in vocab]  # match the owner's words, in every chat
        field = [vocab[_SAID + t] for t in words if _SAID + t in vocab]  # the other side's, in their own chat
        code = self.codes.get(chat, -1) if chat is not None else -1
        here = self.by_chat.get(code, _NONE)
        if not plain and not (field and len(here)):
            return []
        scores = self.bm25.get_scores_from_ids(plain) if plain else np.zeros(len(self), dtype=np.float32)
        if field and len(here):
            scores[here] += self.bm25.get_scores_from_ids(field)[here]
        if before is not None:
            scores[self.starts >= before] = 0
        hits = np.flatnonzero(scores > 0)  # only exchanges sharing a term: few, so ranking them is cheap
        if len(hits) > k:
            hits = hits[np.argpartition(-scores[hits], k - 1)[:k]]
        ranked = sorted(hits.tolist(), key=lambda i: (-float(scores[i]), i))  # ties by position: the same every time
        return [(i, float(scores[i]), int(self.chats[i]) == code) for i in ranked]


_NONE = np.zeros(0, dtype=np.int64)


def _by_chat(chats: np.ndarray, starts: np.ndarray) -> dict[int, np.ndarray]:
    """Per chat code, the positions of its exchanges ordered by session start."""
    if not len(chats):
        return {}
    order = np.lexsort((starts, chats))
    codes = chats[order]
    cuts = np.flatnonzero(np.diff(codes)) + 1
    return {int(group_codes[0]): group for group, group_codes in zip(np.split(order, cuts), np.split(codes, cuts),
                                                                     strict=True)}
