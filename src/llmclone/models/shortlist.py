"""A shortlisted vocabulary for the llama.cpp engine: the output layer scores only tokens the clone uses.

Decoding on a CPU is bound by memory bandwidth, and Gemma 3's 262,144-row output layer is 63% of the bytes
read per generated token. A clone writes like its owner, so it needs far fewer tokens: every token of its
training data, the base model's 32k most likely tokens at the owner's turns (recorded by training), the
tokenizer's most frequent pieces (the first ids: SentencePiece numbers pieces in merge order), the single
characters of alphabetic scripts, symbols and emoji (SentencePiece puts characters at the end of the
vocabulary), and the special, whitespace and byte-fallback tokens. The clone's GGUF keeps those rows only,
in the order of their full ids, and records the full ids under `llmclone.shortlist`.

Text is tokenized by the full tokenizer as always; a token outside the list is spelled with listed pieces
(the fewest, UTF-8 byte tokens for a character none covers), so any text still goes in and the model still
reads it. Replies can only use listed tokens: a word outside the list comes out in smaller pieces.
`benchmarks/reply_latency.py` measures what this does to the held-out loss, per token of the full tokenization.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

HEAD = 32768  # the tokenizer's most frequent pieces, kept whatever the training data
HEAD_WITH_LIKELY = 16384  # fewer when the base model's likely tokens are known


def shortlist_ids(tokenizer: Any, seen: Iterable[int], head: int = HEAD) -> list[int]:
    """The full ids the shortlist keeps, ascending: the first `head` ids, `seen`, single characters below the
    CJK blocks and emoji, and every added token (specials, whitespace runs, markup) except Gemma's thousands
    of `<unusedN>` placeholders (CJK characters a user writes are in `seen`; others fall back to bytes)."""
    added = {i for i, t in tokenizer.added_tokens_decoder.items() if not t.content.startswith("<unused")}
    chars = {i for p, i in tokenizer.get_vocab().items() if len(p) == 1 and _alphabetic_or_emoji(ord(p))}
    size = len(tokenizer)
    return sorted({*range(min(head, size)), *(int(i) for i in seen if 0 <= int(i) < size), *added, *chars,
                   *tokenizer.all_special_ids})


def clone_shortlist(tokenizer: Any, chat_format: Any, seen: Iterable[int], likely: Sequence[int] = ()) -> list[int]:
    """A clone's shortlist: its training tokens, the base model's most likely tokens at the owner's turns
    (`likely`, recorded by training: they cover unseen words of the owner's languages better than merge order
    does), and its chat format's own tokens (labels, turn markers), which a clone trained before training
    recorded its tokens would otherwise lack."""
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    marks = [*chat_format.encode(tokenizer, turns)[0], *chat_format.prompt(tokenizer, turns), *chat_format.stop_ids(tokenizer)]
    return shortlist_ids(tokenizer, [*seen, *likely, *marks], head=HEAD_WITH_LIKELY if likely else HEAD)


def _alphabetic_or_emoji(code: int) -> bool:
    return code < 0x3000 or 0x1F000 <= code < 0x1FB00


class Shortlist:
    """Maps between the full tokenizer's ids and the positions of the shortlisted GGUF."""

    def __init__(self, full_ids: Sequence[int], tokenizer: Any) -> None:
        self.full = [int(i) for i in full_ids]
        self.position = {f: s for s, f in enumerate(self.full)}
        self._tokenizer = tokenizer
        self._pieces: dict[str, int] | None = None  # listed piece → position, built on the first unlisted token
        self._longest = 0
        self.spell = lru_cache(maxsize=65536)(self._spell)

    def __len__(self) -> int:
        return len(self.full)

    def to_short(self, ids: Iterable[int]) -> list[int]:
        out: list[int] = []
        for i in ids:
            s = self.position.get(i)
            if s is None:
                out += self.spell(i)
            else:
                out.append(s)
        return out

    def to_full(self, position: int) -> int:
        return self.full[position]

    def _spell(self, full_id: int) -> tuple[int, ...]:
        """An unlisted token as the fewest listed pieces (lower ids, the more frequent ones, on ties)."""
        if self._pieces is None:
            self._index()
        assert self._pieces is not None
        piece = self._tokenizer.convert_ids_to_tokens(full_id)
        # best[j]: (count, positions) of the cheapest spelling of piece[:j]
        best: list[tuple[int, tuple[int, ...]] | None] = [(0, ())] + [None] * len(piece)
        for j in range(1, len(piece) + 1):
            for k in range(max(0, j - self._longest), j):
                prev, s = best[k], self._pieces.get(piece[k:j])
                if prev is None or s is None:
                    continue
                cand = (prev[0] + 1, (*prev[1], s))
                current = best[j]
                if current is None or cand[0] < current[0] or (cand[0] == current[0] and cand[1] < current[1]):
                    best[j] = cand
            if best[j] is None:  # no listed piece ends here: the character's bytes (best[j - 1] always exists)
                prev = best[j - 1]
                assert prev is not None
                raw = piece[j - 1].replace("▁", " ").encode("utf-8")
                positions = tuple(self.position[self._tokenizer.convert_tokens_to_ids(f"<0x{b:02X}>")] for b in raw)
                best[j] = (prev[0] + len(positions), prev[1] + positions)
        result = best[-1]
        assert result is not None
        return result[1]

    def _index(self) -> None:
        pieces = self._tokenizer.convert_ids_to_tokens(self.full)
        special = set(self._tokenizer.added_tokens_decoder)
        self._pieces = {p: s for s, (p, f) in enumerate(zip(pieces, self.full, strict=True))
                        if f not in special and not (p.startswith("<0x") and len(p) == 6)}
        self._longest = max(map(len, self._pieces), default=1)


SHORTLIST_KEY = "llmclone.shortlist"
_PER_TOKEN = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")
_TOKEN_IDS = ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
              "tokenizer.ggml.padding_token_id")


def write_shortlisted_gguf(src: Path, dest: Path, full_ids: Sequence[int]) -> Path:
    """A copy of a GGUF whose vocabulary (token list and embedding rows, which are the tied output layer)
    holds `full_ids` only, in that order, with the full ids recorded for the engine."""
    import numpy as np
    from gguf import GGUFReader, GGUFWriter

    from llmclone.models.gguf_export import copy_fields

    reader = GGUFReader(str(src))
    keep = np.asarray(full_ids, dtype=np.int64)
    position = {int(f): s for s, f in enumerate(keep)}

    def shortlisted(name: str, value: Any) -> Any:
        if name in _PER_TOKEN:
            return [value[i] for i in keep]
        return position[int(value)] if name in _TOKEN_IDS else value

    writer = GGUFWriter(str(dest), reader.fields["general.architecture"].contents())
    copy_fields(reader, writer, change=shortlisted)
    writer.add_array(SHORTLIST_KEY, keep.astype(np.int32).tolist())
    for tensor in reader.tensors:  # f32/f16 (the clone's own export): rows can be picked, quantise afterwards
        if tensor.tensor_type not in (0, 1):
            raise ValueError(f"{src}: {tensor.name} is quantised; shortlist the f16 export, then quantise")
        rows = tensor.name in ("token_embd.weight", "output.weight")
        writer.add_tensor(tensor.name, np.ascontiguousarray(tensor.data[keep]) if rows else tensor.data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest


def read_shortlist(path: Any) -> list[int] | None:
    """The full ids a shortlisted GGUF keeps, or None for a GGUF with the whole vocabulary."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get(SHORTLIST_KEY)
    return None if field is None else [int(v) for v in field.contents()]
